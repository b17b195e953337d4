"""research/plot_seed_tables.py: the scores-over-seeds picture from seed_table --json files."""

from __future__ import annotations

import json

import pytest

from research import plot_seed_tables


def _table(path, arms):
    table = {name: {"runs": [{"run": f"{name}-s{i}", "scores": scores} for i, scores in enumerate(runs)]}
             for name, runs in arms.items()}
    path.write_text(json.dumps(table))
    return path


def test_arms_are_read_in_the_order_named_and_a_picture_is_written(tmp_path):
    first = _table(tmp_path / "a.json", {"soft": [{"Bleu_4": 0.21, "CIDEr": 0.53, "METEOR": 0.205},
                                                  {"Bleu_4": 0.20, "CIDEr": 0.52, "METEOR": 0.201}],
                                         "k20": [{"Bleu_4": 0.19, "CIDEr": 0.50}]})
    second = _table(tmp_path / "b.json", {"k40": [{"Bleu_4": 0.214, "CIDEr": 0.527}]})
    arms = plot_seed_tables.load_arms([f"{second}", f"{first}:soft"])
    assert [name for name, _ in arms] == ["k40", "soft"]
    assert arms[0][1]["Bleu_4"] == pytest.approx([21.4]) and arms[0][1]["METEOR"] == []
    assert arms[1][1]["CIDEr"] == pytest.approx([53.0, 52.0])
    out = tmp_path / "pics" / "scores.png"
    plot_seed_tables.main([f"{first}", f"{second}:k40", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_an_unknown_arm_or_an_unreadable_table_is_refused_by_name(tmp_path):
    table = _table(tmp_path / "a.json", {"soft": [{"Bleu_4": 0.2}]})
    with pytest.raises(SystemExit, match="no arm 'k80'.*arms: soft"):
        plot_seed_tables.load_arms([f"{table}:k80"])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match="bad.json: not a readable"):
        plot_seed_tables.load_arms([str(tmp_path / "bad.json")])


def test_an_arm_can_be_relabelled_so_that_two_studies_arms_of_one_name_stay_apart(tmp_path):
    first = _table(tmp_path / "a.json", {"soft": [{"Bleu_4": 0.21}]})
    second = _table(tmp_path / "b.json", {"soft": [{"Bleu_4": 0.19}], "k40": [{"Bleu_4": 0.2}]})
    arms = plot_seed_tables.load_arms([f"{first}:soft", f"{second}:soft=soft-ft0.3,k40"])
    assert [name for name, _ in arms] == ["soft", "soft-ft0.3", "k40"]
    assert arms[1][1]["Bleu_4"] == pytest.approx([19.0])
    with pytest.raises(SystemExit, match="no arm 'k80'"):
        plot_seed_tables.load_arms([f"{second}:k80=x"])
