"""Kendall's tau and the Flickr8k-Expert metric-validity study (captioner.metrics.validity)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from research.validity import (
    COCO_METRICS,
    SACREBLEU_KEY,
    ExpertLine,
    _references,
    kendall_tau,
    kendall_tau_bruteforce,
    read_expert_annotations,
    read_token_file,
    run_validity_study,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------
# Kendall's tau
# ---------------------------------------------------------------------------------------------------
def test_tau_on_a_hand_counted_case():
    # pairs: 6; (2,3) vs (3,2) is the only discordant one -> (5 - 1) / 6
    result = kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])
    assert result.tau_b == pytest.approx(4 / 6) and result.concordant_minus_discordant == 4
    assert kendall_tau([1, 2, 3], [3, 2, 1]).tau_b == pytest.approx(-1.0)


@pytest.mark.parametrize("trial", range(40))
def test_tau_matches_brute_force_with_ties(trial):
    rng = random.Random(trial)
    n = rng.randint(2, 60)
    if trial % 3 == 0:
        x = [rng.choice([0.0, 0.25, 0.5, 1.0]) for _ in range(n)]  # many ties
    else:
        x = [rng.random() for _ in range(n)]
    y = [rng.randint(3, 12) / 3 for _ in range(n)]  # like a mean of three 1-4 scores
    fast = kendall_tau(x, y)
    slow_b, slow_c = kendall_tau_bruteforce(x, y)
    for ours, reference in ((fast.tau_b, slow_b), (fast.tau_c, slow_c)):
        if math.isnan(reference):
            assert math.isnan(ours)
        else:
            assert ours == pytest.approx(reference, abs=1e-12)


def test_tau_b_and_p_value_equal_scipys():
    # scipy 1.17.1: kendalltau(x, y) -> (0.7469101437310576, p 0.0021081371739809945);
    # kendalltau(x, y, variant="c") -> 0.7777777777777778
    x = [0.1, 0.4, 0.4, 0.2, 0.9, 0.0, 0.0, 0.7, 0.3, 0.4, 0.8, 0.5]
    y = [1, 2, 2, 1, 4, 1, 2, 3, 2, 3, 4, 2]
    result = kendall_tau(x, y)
    assert result.tau_b == pytest.approx(0.7469101437310576, abs=1e-14)
    assert result.p_value == pytest.approx(0.0021081371739809945, rel=1e-9)
    assert result.z > 0 and math.erfc(result.z / math.sqrt(2)) == pytest.approx(result.p_value, rel=1e-12)
    assert result.tau_c == pytest.approx(0.7777777777777778, abs=1e-14)
    assert result.ties_y == 3 + 10 + 1 + 1  # three 1s, five 2s, two 3s, two 4s: t(t-1)/2 pairs each


def test_tau_is_nan_where_undefined_and_checks_its_input():
    assert math.isnan(kendall_tau([1.0, 1.0, 1.0], [1, 2, 3]).tau_b)
    assert math.isnan(kendall_tau([1.0], [2.0]).tau_b)
    with pytest.raises(ValueError, match="differ in length"):
        kendall_tau([1, 2], [1])
    with pytest.raises(ValueError, match="NaN"):
        kendall_tau([1, float("nan")], [1, 2])


# ---------------------------------------------------------------------------------------------------
# reading Flickr8k-Expert
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_release(tmp_path):
    text = tmp_path / "Flickr8k_text"
    text.mkdir()
    lines = []
    for image in ("a.jpg", "b.jpg", "c.jpg"):
        for n in range(5):
            lines.append(f"{image}#{n}\tcaption {n} of {image} .")
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (text / "ExpertAnnotations.txt").write_text("\n".join([
        "a.jpg\tb.jpg#2\t1\t1\t2",
        "a.jpg\ta.jpg#3\t4\t4\t4",      # the candidate is one of a.jpg's own captions
        "b.jpg\tc.jpg#0\t2\t3\t2",
        "b.jpg\tc.jpg#0\t2\t3",          # 4 fields
        "b.jpg\tz.jpg#0\t2\t3\t2",       # unknown candidate
        "c.jpg\ta.jpg#1\t2\t5\t2",       # score out of range
        "c.jpg\ta.jpg#1\t2\tx\t2",       # not an integer
        "d.jpg\ta.jpg#1\t2\t2\t2",       # judged image without captions
        "c.jpg\ta.jpg#9\t1\t1\t1",       # no caption #9
        "c.jpg\tb.jpg#4\t3\t3\t3",
        "",
    ]))
    return tmp_path


def test_expert_lines_are_read_and_bad_ones_counted(tiny_release):
    captions = read_token_file(tiny_release / "Flickr8k_text" / "Flickr8k.token.txt")
    lines, skipped = read_expert_annotations(tiny_release / "Flickr8k_text" / "ExpertAnnotations.txt", captions)
    assert [line.line for line in lines] == [1, 2, 3, 10]
    assert {reason: len(items) for reason, items in skipped.items()} == {
        "not 5 tab-separated fields": 1, "candidate caption not in Flickr8k.token.txt": 2, "score outside 1-4": 1,
        "scores not integers": 1, "judged image has no reference captions": 1}
    assert skipped["score outside 1-4"][0].startswith("ExpertAnnotations.txt:6: ")
    assert lines[0].mean_score == pytest.approx(4 / 3)
    # the candidate is left out of its own references, and only then
    assert _references(lines[1], captions) == [f"caption {n} of a.jpg ." for n in (0, 1, 2, 4)]
    assert len(_references(lines[0], captions)) == 5


def test_candidate_excluded_from_own_references():
    captions = {"x.jpg": {0: "a", 1: "b", 2: "c"}}
    assert _references(ExpertLine(1, "x.jpg", "x.jpg#1", (4, 4, 4)), captions) == ["a", "c"]
    assert _references(ExpertLine(1, "x.jpg", "y.jpg#1", (1, 1, 1)), captions) == ["a", "b", "c"]


# ---------------------------------------------------------------------------------------------------
# the study on a subset of the real file
# ---------------------------------------------------------------------------------------------------
def test_validity_study_on_the_first_200_lines(flickr8k_root):
    study = run_validity_study(flickr8k_root, limit=200, tokenizer="python", metrics=("bleu", "rouge", "cider"),
                               bootstrap=5)
    protocol = study["protocol"]
    assert protocol["lines_in_file"] == 5822 and protocol["lines_used"] == 200 and protocol["skipped"] == {}
    assert protocol["tokenizer"] == "ptb-python" and "tok:13a" in protocol["sacrebleu"]
    assert "200 reference sets" in protocol["cider_idf"]
    main = study["mean_expert"]["tau"]
    assert list(main) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr", SACREBLEU_KEY]
    for key, result in main.items():
        assert -1 <= result["tau_b"] <= 1 and result["n"] == 200, key
        assert result["tau_b_95ci"]["resamples"] == 5 and result["tau_b_95ci"]["low"] <= result["tau_b_95ci"]["high"]
        assert 0 <= result["p_value"] < 1e-6, key  # every metric agrees with the experts beyond chance
    published = study["published_protocol"]
    assert published["lines"] == 200 - protocol["candidate_is_own_caption"]
    assert published["judgements"] == 3 * published["lines"]
    assert 0.5 < study["mean_expert"]["experts_agreement_tau_b"]["mean"] < 1


def _load_script():
    from research import metric_validity

    return metric_validity


def test_metric_validity_script_writes_json_chart_and_table(flickr8k_root, tmp_path, capsys):
    script = _load_script()
    out = tmp_path / "kendall.json"
    assert script.main(["--root", str(flickr8k_root), "--out", str(out), "--limit", "120", "--tokenizer", "python",
                        "--metrics", "bleu,cider", "--bootstrap", "0", "--no-comparison"]) == 0
    study = json.loads(out.read_text())
    assert study["format"] == "captioner-metric-validity/1" and study["protocol"]["lines_used"] == 120
    assert "published_protocol" not in study and study["bootstrap"]["resamples"] == 0
    assert out.with_suffix(".png").stat().st_size > 5000
    table = capsys.readouterr().out
    assert "| CIDEr-D |" in table and "| sacreBLEU (sentence) |" in table


def test_committed_study_covers_every_line_and_metric():
    path = REPO / "eval" / "metrics" / "expert_kendall.json"
    study = json.loads(path.read_text())
    assert study["protocol"]["lines_used"] == 5822 and study["protocol"]["skipped"] == {}
    assert study["protocol"]["candidate_is_own_caption"] == 158
    assert list(study["mean_expert"]["tau"]) == [*COCO_METRICS, SACREBLEU_KEY]
    assert study["published_protocol"]["lines"] == 5664 and study["published_protocol"]["judgements"] == 16992
    assert study["unavailable"] == {}
