"""research/word_classes.py: precision and recall of word classes (colours, settings, ...) against the references."""

from __future__ import annotations

import json

import numpy as np
import pytest

from research import word_classes

REFERENCES = {
    "img0": ["A brown dog runs on the grass .", "A dog on grass .", "A brown dog in a field .",
             "Two dogs play .", "The brown dog is running ."],
    "img1": ["A man in a red shirt stands in the snow .", "A man in the snow .", "A person in red on snow .",
             "A man skiing .", "Someone in a red jacket ."],
}


def _run(folder, captions):
    folder.mkdir(parents=True)
    (folder / "test_captions.json").write_text(json.dumps([{"image_id": i, "caption": c} for i, c in captions.items()]))
    return folder


def test_one_run_by_hand():
    captions = {"img0": "A black dog runs on the grass .", "img1": "A man in a red shirt is in the water"}
    result = word_classes.run_classes(captions, REFERENCES)
    # colour: "black" (no reference says it) and "red" (three do); agreed by >= 2: brown (img0), red (img1)
    assert result["colour"] == {"used": 2, "precision": 0.5, "recall": 0.5}
    # setting: "grass" (two references) and "water" (none); agreed: grass (img0), snow (img1), "field" only once
    assert result["setting"] == {"used": 2, "precision": 0.5, "recall": 0.5}
    # count: no caption says one; "two" appears in one reference, under the agreement of two
    assert result["count"] == {"used": 0, "precision": None, "recall": None}
    # person: "man" in img1 (three references agree); animal: "dog" in img0 (five do)
    assert result["person"] == {"used": 1, "precision": 1.0, "recall": 1.0}
    assert result["animal"] == {"used": 1, "precision": 1.0, "recall": 1.0}
    # with one reference enough, "field" joins: agreed grass, field (img0) and snow (img1), of which grass is said
    loose = word_classes.run_classes(captions, REFERENCES, agree=1)
    assert loose["setting"]["recall"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no references"):
        word_classes.run_classes({"img9": "a dog"}, REFERENCES)


def test_arms_over_seeds_the_table_and_the_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(word_classes, "reference_captions", lambda root: REFERENCES)
    a0 = _run(tmp_path / "soft-s0", {"img0": "a brown dog on the grass", "img1": "a man in the snow"})
    a1 = _run(tmp_path / "soft-s1", {"img0": "a black dog on the grass", "img1": "a man in the snow"})
    b0 = _run(tmp_path / "wsram-s0", {"img0": "a dog", "img1": "a man"})
    word_classes.main([str(a0), str(a1), str(b0), "--root", "unused", "--json", str(tmp_path / "w.json")])
    table = capsys.readouterr().out
    # colour: seed 0 says "brown" (right; recall 1 of brown, red), seed 1 "black" (wrong; recall 0)
    assert "| soft | 2 | 50.0 (0.0..100.0) / 25.0 (0.0..50.0) |" in table
    assert "| wsram | 1 | - / 0.0 (0.0..0.0) |" in table  # no colour said; brown and red missed
    saved = json.loads((tmp_path / "w.json").read_text())
    assert saved["agree"] == 2 and "colour" in saved["classes"]
    assert saved["arms"]["soft"]["runs"]["soft-s1"]["seed"] == 1
    assert saved["arms"]["soft"]["mean"]["setting_recall"] == pytest.approx(1.0)  # grass and snow, both seeds


def test_bad_run_folders_are_named(tmp_path):
    bad = tmp_path / "x-s0"
    bad.mkdir()
    (bad / "test_captions.json").write_text(json.dumps([{"caption": "a dog"}]))
    with pytest.raises(SystemExit, match=r"x-s0/test_captions.json: not a list of"):
        word_classes.read_captions(bad)
    with pytest.raises(SystemExit, match="no test_captions.json"):
        word_classes.read_captions(tmp_path)


def test_the_paired_bootstrap_of_two_arms():
    def table(*rows):  # per image, one class given, the others empty
        out = np.zeros((len(rows), len(word_classes.CLASSES), 4), dtype=np.int64)
        out[:, 0] = rows
        return out

    right = table([1, 1, 1, 1], [2, 2, 1, 1], [1, 1, 1, 1])  # every colour said is in a reference, every agreed one said
    wrong = table([1, 0, 1, 0], [2, 0, 1, 0], [1, 0, 1, 0])
    result = word_classes.paired_bootstrap([right], [wrong], samples=200)
    colour = result["colour"]
    assert colour["precision"] == {"difference": 1.0, "low": 1.0, "high": 1.0, "a_at_least_b": 1.0}
    assert colour["recall"]["difference"] == 1.0 and colour["recall"]["a_at_least_b"] == 1.0
    # two seeds: the arm's rate is the mean of its seeds' rates, observed on the whole set
    mixed = word_classes.paired_bootstrap([right, wrong], [wrong], samples=200)["colour"]["precision"]
    assert mixed["difference"] == pytest.approx(0.5) and mixed["low"] == pytest.approx(0.5)
    # the same arm against itself: no difference in any draw
    same = word_classes.paired_bootstrap([right], [right], samples=50)["colour"]["precision"]
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0, "a_at_least_b": 1.0}
    with pytest.raises(ValueError, match="same test images"):
        word_classes.paired_bootstrap([right], [right[:2]])


def test_compare_on_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(word_classes, "reference_captions", lambda root: REFERENCES)
    a = _run(tmp_path / "soft-s0", {"img0": "a brown dog on the grass", "img1": "a man in red in the snow"})
    b = _run(tmp_path / "wsram-s0", {"img0": "a black dog in the water", "img1": "a man in the snow"})
    word_classes.main([str(a), str(b), "--root", "x", "--compare", "soft", "wsram", "--samples", "100",
                       "--json", str(tmp_path / "w.json")])
    out = capsys.readouterr().out
    assert "soft minus wsram" in out and "| setting | +50.0" in out
    comparison = json.loads((tmp_path / "w.json").read_text())["comparison"]
    assert comparison["a"] == "soft" and comparison["samples"] == 100
    assert comparison["classes"]["colour"]["precision"]["difference"] == pytest.approx(1.0)
    with pytest.raises(SystemExit):
        word_classes.main([str(a), str(b), "--root", "x", "--compare", "soft", "var"])
    assert "no arm 'var'" in capsys.readouterr().err
    other = _run(tmp_path / "var-s0", {"img0": "a dog", "img9": "a man"})
    monkeypatch.setattr(word_classes, "reference_captions", lambda root: {**REFERENCES, "img9": ["a man ."]})
    with pytest.raises(SystemExit, match="must caption the same test images"):
        word_classes.main([str(a), str(other), "--root", "x", "--compare", "soft", "var"])


def test_two_run_folders_of_one_name_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(word_classes, "reference_captions", lambda root: REFERENCES)
    a = _run(tmp_path / "one" / "soft-s0", {"img0": "a dog"})
    b = _run(tmp_path / "two" / "soft-s0", {"img0": "a dog"})
    with pytest.raises(SystemExit, match="two run folders named soft-s0"):
        word_classes.main([str(a), str(b), "--root", "x"])
