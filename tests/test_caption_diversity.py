"""research/caption_diversity.py: length, vocabulary, repeats and novelty of a run's test captions."""

from __future__ import annotations

import json

import pytest

from captioner.data.ptb import ptb_tokenize
from research import caption_diversity


def _run(folder, captions):
    folder.mkdir(parents=True)
    rows = [{"image_id": f"img{i}", "caption": c} for i, c in enumerate(captions)]
    (folder / "test_captions.json").write_text(json.dumps(rows))
    return folder


def test_the_numbers_of_one_run_by_hand():
    captions = ["A dog runs .", "a dog runs", "Two men sit on a bench", "a cat"]
    training = {ptb_tokenize("a dog runs"), ptb_tokenize("a cat sleeps")}
    result = caption_diversity.run_diversity(captions, training)
    # tokenised as the scores are: lower case, punctuation dropped, so the first two are one caption
    assert result["captions"] == 4
    assert result["words_per_caption"] == pytest.approx((3 + 3 + 6 + 2) / 4)
    assert result["vocabulary"] == len({"a", "dog", "runs", "two", "men", "sit", "on", "bench", "cat"})
    assert result["distinct_captions"] == pytest.approx(2 / 4)
    assert result["most_repeated"] == 2
    assert result["novel"] == pytest.approx(2 / 4)
    assert "novel" not in caption_diversity.run_diversity(captions)
    with pytest.raises(ValueError, match="no captions"):
        caption_diversity.run_diversity([])


def test_arms_over_seeds_and_the_table(tmp_path, capsys):
    a0 = _run(tmp_path / "soft-s0", ["a dog", "a dog", "a cat"])
    a1 = _run(tmp_path / "soft-s1", ["a dog", "a red cat", "a cat"])
    b0 = _run(tmp_path / "wsram-s0", ["a dog"] * 3)
    caption_diversity.main([str(a0), str(a1), str(b0), "--json", str(tmp_path / "d.json")])
    arms = json.loads((tmp_path / "d.json").read_text())
    assert sorted(arms) == ["soft", "wsram"]
    soft = arms["soft"]
    assert soft["runs"]["soft-s0"]["distinct_captions"] == pytest.approx(1 / 3)
    assert soft["runs"]["soft-s1"]["distinct_captions"] == 1.0
    assert soft["mean"]["distinct_captions"] == pytest.approx(2 / 3)
    assert soft["min"]["vocabulary"] == 3 and soft["max"]["vocabulary"] == 4
    assert arms["wsram"]["mean"]["most_repeated"] == 3 and arms["wsram"]["mean"]["distinct_captions"] == 0.0
    table = capsys.readouterr().out
    assert "| soft | 2 |" in table and "66.7% (33.3%..100.0%)" in table and "| wsram | 1 |" in table


def test_bad_input_is_named(tmp_path):
    _run(tmp_path / "a" / "soft-s0", ["a dog"])
    _run(tmp_path / "b" / "soft-s0", ["a cat"])
    with pytest.raises(SystemExit, match="two run folders named soft-s0"):
        caption_diversity.main([str(tmp_path / "a" / "soft-s0"), str(tmp_path / "b" / "soft-s0")])
    (tmp_path / "empty-s0").mkdir()
    with pytest.raises(SystemExit, match="no test_captions.json"):
        caption_diversity.main([str(tmp_path / "empty-s0")])
    broken = tmp_path / "broken-s0"
    broken.mkdir()
    (broken / "test_captions.json").write_text("{not json")
    with pytest.raises(SystemExit, match="test_captions.json: not a list"):
        caption_diversity.main([str(broken)])
