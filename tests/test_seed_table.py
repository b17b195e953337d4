"""research/seed_table: arms from folder names, means and ranges over seeds, Java scores preferred."""

from __future__ import annotations

import json

import pytest

from research import seed_table


def _run(root, name, bleu, cider, meteor=None, lq=None, spread=None):
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"Bleu_1": 0.6, "Bleu_4": bleu, "ROUGE_L": 0.4, "CIDEr": cider,
                                                  "beam_size": 3, "attention_mode": "marginal", "best_step": 10}))
    if meteor is not None:
        (run / "scores.json").write_text(json.dumps({"corpus": {"Bleu_4": bleu, "CIDEr": cider, "METEOR": meteor}}))
    if lq is not None:
        rows = [{"type": "train", "epoch": 1, "log_q_minus_log_prior": 9.0, "prior_entropy": 3.0, "ess_per_k": 0.5},
                {"type": "validation", "epoch": 1},
                {"type": "train", "epoch": 2, "log_q_minus_log_prior": lq[0], "prior_entropy": 2.0, "ess_per_k": 0.4},
                {"type": "train", "epoch": 2, "log_q_minus_log_prior": lq[1], "prior_entropy": 2.5, "ess_per_k": 0.3}]
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if spread is not None:
        (run / "spread-argmax.json").write_text(json.dumps({
            "mean_distinct_locations_per_caption": spread, "captions_with_one_location": 0.1,
            "mean_share_of_words_at_the_modal_location": 0.5, "images": 200}))
    return run


def test_seed_table_groups_seeds_and_gives_mean_and_range(tmp_path, capsys):
    runs = [_run(tmp_path, "k40-s0", 0.20, 0.50, 0.19, lq=(1.0, 2.0), spread=4.0),
            _run(tmp_path, "k40-s1", 0.22, 0.54, 0.21, lq=(1.0, 1.0), spread=5.0),
            _run(tmp_path, "soft-s0", 0.21, 0.52)]
    (tmp_path / "unfinished-s0").mkdir()
    out = tmp_path / "table.json"
    assert seed_table.main([str(p) for p in runs + [tmp_path / "unfinished-s0"]] + ["--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert list(table) == ["k40", "soft"]
    k40 = table["k40"]
    assert k40["Bleu_4"] == pytest.approx({"mean": 0.21, "min": 0.20, "max": 0.22, "n": 2})
    assert k40["METEOR"]["mean"] == pytest.approx(0.20)
    assert k40["log_q_minus_log_prior_last"] == pytest.approx({"mean": 1.5, "min": 1.0, "max": 2.0, "n": 2})
    first = k40["runs"][0]
    assert first["log_q_minus_log_prior"] == pytest.approx({"last_update": 2.0, "last_epoch_mean": 1.5, "max": 9.0})
    assert first["prior_entropy"] == 2.5 and first["scores_from"] == "scores.json"
    assert table["soft"]["METEOR"] is None and table["soft"]["runs"][0]["scores_from"] == "metrics.json"
    text = capsys.readouterr().out
    assert "| k40 | 0 | beam 3, marginal | 20.0 | 50.0 | 19.0 | 4.00 / - | 10.0% | 2.00 (1.50) | 2.50 | 0.30 |" in text
    assert "**21.0** (20.0..22.0)" in text


def test_seed_table_needs_a_finished_run(tmp_path):
    (tmp_path / "a-s0").mkdir()
    with pytest.raises(SystemExit):
        seed_table.main([str(tmp_path / "a-s0")])
