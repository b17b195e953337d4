"""coco-caption tokenisation (pure-Python PTBTokenizer port against the Java original) and scoring.

The expected tokenisations below were produced by pycocoevalcap 1.2's Java PTBTokenizer
(stanford-corenlp-3.4.1, -preserveLines -lowerCase, coco's punctuation removal); the Flickr8k numbers
are those of ../shared/data/flickr8k/README.md. Tests that need Java skip without it.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import random

import pytest

from captioner.metrics import coco as coco_module
from captioner.data import ptb as ptb_module
from captioner.metrics.coco import CaptionScores, format_scores_table, score_captions
from captioner.data.ptb import (
    PUNCTUATIONS,
    java_available,
    java_ptb_tokenize_many,
    ptb_tokenize,
    ptb_tokenize_many,
    ptb_tokens,
)

# caption -> what pycocoevalcap's Java tokenizer makes of it (checked against the jar)
TRICKY = [
    ("A child in a pink dress is climbing up a set of stairs in an entry way .",
     "a child in a pink dress is climbing up a set of stairs in an entry way"),
    ("A dog can't catch the ball, and it won't stop.", "a dog ca n't catch the ball and it wo n't stop"),
    ("He doesn't know; she isn't sure: they aren't here!", "he does n't know she is n't sure they are n't here"),
    ("The dog's ball and the dogs' bone, James' car.", "the dog 's ball and the dogs bone james car"),
    ("I'm sure they're fine, we'll see, you've been, he'd go.",
     "i 'm sure they 're fine we 'll see you 've been he 'd go"),
    ("Cannot do it , gonna try , wanna go .", "can not do it gon na try wan na go"),
    ('A man says "hello" to a woman .', "a man says hello to a woman"),
    ("A sign reading 'STOP' on a pole.", "a sign reading stop on a pole"),
    ("\u201cCurly quotes\u201d and \u2018single ones\u2019 \u2014 with a dash\u2026 and more",
     "curly quotes and single ones with a dash and more"),
    ("Tom & Jerry at AT&T near the S&P 500 sign &amp; more", "tom & jerry at at&t near the s&p 500 sign & more"),
    ("It costs $5,000.00, or 1,000 dollars; 3.5 % off.", "it costs $ 5,000.00 or 1,000 dollars 3.5 % off"),
    ("A man (in red) stands near a [sign] with {braces}.",
     "a man -lrb- in red -rrb- stands near a -lsb- sign -rsb- with -lcb- braces -rcb-"),
    ("A well-known x-ray of a 10-year-old boy's up-to-date T-shirt.",
     "a well-known x-ray of a 10-year-old boy 's up-to-date t-shirt"),
    ("A man/woman rides a bike 1/2 a mile on 24/7 duty.", "a man/woman rides a bike 1/2 a mile on 24/7 duty"),
    ("Mr. Smith and Dr. Who went to the U.S. The end.", "mr. smith and dr. who went to the u.s. the end"),
    ("They live in Washington D.C.", "they live in washington d.c."),
    ("A S.C.U.B.A. diver in the water at 3 p.m. on Main St.", "a s.c.u.b.a. diver in the water at 3 p.m. on main st."),
    ("Wait... what.... ok . . . fine", "wait what ok fine"),
    ("A dog jumps.A cat sleeps.", "a dog jumps.a cat sleeps"),
    ("A DOG WITH CAPS JUMPS OVER THE FENCE.", "a dog with caps jumps over the fence"),
    ("rock 'n' roll in the '90s at o'clock, y'all", "rock 'n' roll in the '90s at o'clock y' all"),
    ("A man -- or woman --- runs - fast", "a man or woman runs fast"),
    ("A man on a street corner ?!", "a man on a street corner ?!"),
    ("Visit www.example.com or http://foo.com/bar or mail user@example.com",
     "visit www.example.com or http://foo.com/bar or mail user@example.com"),
    ("A caf\u00e9 in Z\u00fcrich serves cr\u00e8me br\u00fbl\u00e9e",
     "a caf\u00e9 in z\u00fcrich serves cr\u00e8me br\u00fbl\u00e9e"),
    ("5 7/8 inch pipe and a 555-1234 phone", "5\u00a07/8 inch pipe and a 555-1234 phone"),
    ("The 1990s band plays at 12:30pm on 4x4 trucks", "the 1990s band plays at 12:30 pm on 4x4 trucks"),
    ("A colour photo of a grey theatre", "a colour photo of a grey theatre"),
    ("Fig. 3 shows no. 5 of the set", "fig. 3 shows no. 5 of the set"),
    ("A sign says :) and ^_^", "a sign says :-rrb- and ^_^"),
    ("x<b>y and <3 hearts", "x <b> y and < 3 hearts"),
    ("Inc.", "inc."),
    ("multiple   spaces\tand\ttabs", "multiple spaces and tabs"),
    ("newline\ninside a caption", "newline inside a caption"),
    ("", ""),
    ("...", ""),
]

# Flickr8k test split, caption #0 against #1-4 (README.md of the data copy), pycocoevalcap 1.2
GOLDEN = {"Bleu_1": 0.63641, "Bleu_2": 0.44578, "Bleu_3": 0.30549, "Bleu_4": 0.20946,
          "METEOR": 0.25005, "ROUGE_L": 0.48755, "CIDEr": 0.78860}
GOLDEN_BLEU_STATS = {"testlen": 11117, "reflen": 10751, "guess": [11117, 10117, 9117, 8117],
                     "correct": [7075, 3159, 1308, 548]}


@pytest.fixture(scope="session")
def java():
    if not java_available():
        pytest.skip("Java is not installed: pycocoevalcap's PTBTokenizer and METEOR (the reference here) need it")
    return True


def _flickr8k_token_lines(root):
    out = []
    for line in (root / "Flickr8k_text" / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            key, _, caption = line.partition("\t")
            out.append((key, caption))
    return out


@pytest.fixture(scope="session")
def flickr8k_captions(flickr8k_root):
    return _flickr8k_token_lines(flickr8k_root)


@pytest.fixture(scope="session")
def coco_captions(coco_mini_root):
    data = json.loads((coco_mini_root / "annotations" / "captions_val2017.json").read_text(encoding="utf-8"))
    return [a["caption"] for a in data["annotations"]]


@pytest.fixture(scope="session")
def flickr8k_test_split(flickr8k_root, flickr8k_captions):
    """(hypotheses, references): caption #0 of each test image against captions #1-4."""
    names = [n.strip() for n in (flickr8k_root / "Flickr8k_text" / "Flickr_8k.testImages.txt").read_text().split()
             if n.strip()]
    by_image: dict[str, dict[int, str]] = {}
    for key, caption in flickr8k_captions:
        image, _, number = key.partition("#")
        by_image.setdefault(image, {})[int(number)] = caption
    assert len(names) == 1000
    hypotheses = {name: by_image[name][0] for name in names}
    references = {name: [by_image[name][i] for i in range(1, 5)] for name in names}
    return hypotheses, references


@pytest.fixture(scope="session")
def python_scores(flickr8k_test_split):
    hypotheses, references = flickr8k_test_split
    return score_captions(hypotheses, references, metrics=("bleu", "rouge", "cider"), tokenizer="python")


@pytest.fixture(scope="session")
def java_scores(java, flickr8k_test_split):
    hypotheses, references = flickr8k_test_split
    return score_captions(hypotheses, references, tokenizer="java")


# ---------------------------------------------------------------------------------------------------
# the tokenizer
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("caption,expected", TRICKY, ids=[f"tricky{i}" for i in range(len(TRICKY))])
def test_python_tokenizer_on_tricky_cases(caption, expected):
    assert ptb_tokenize(caption) == expected


def test_tricky_cases_are_what_java_gives(java):
    captions = [c for c, _ in TRICKY]
    assert java_ptb_tokenize_many(captions) == [e for _, e in TRICKY]
    assert ptb_tokenize_many(captions) == [e for _, e in TRICKY]


def test_tokens_before_punctuation_removal():
    assert ptb_tokens('He said "hi" (twice), didn\'t he?') == \
        ["he", "said", "``", "hi", "''", "-lrb-", "twice", "-rrb-", ",", "did", "n't", "he", "?"]
    assert "-LRB-" in PUNCTUATIONS and "-lrb-" not in PUNCTUATIONS  # why -lrb- survives coco's filter


def test_batch_context_crosses_caption_boundaries(java):
    # "Inc." keeps its period, and repeats it as a sentence end when the next caption starts with a
    # capital: the lexer looks across the line break, in the batch as in Java.
    batch = ["They work at Acme Inc.", "The office", "Acme Inc.", "the office", "U.S.", "The end"]
    assert ptb_tokenize_many(batch) == java_ptb_tokenize_many(batch)
    assert ptb_tokenize_many(batch)[:4] == ["they work at acme inc.", "the office", "acme inc.", "the office"]


def test_python_tokenizer_matches_java_on_flickr8k_sample(java, flickr8k_captions):
    rng = random.Random(0)
    sample = [caption for _, caption in rng.sample(flickr8k_captions, 500)]
    python, java_out = ptb_tokenize_many(sample), java_ptb_tokenize_many(sample)
    differ = [(c, p, j) for c, p, j in zip(sample, python, java_out) if p != j]
    assert not differ, f"{len(differ)} of 500 differ, first: {differ[:3]}"


def test_python_tokenizer_matches_java_on_coco_mini(java, coco_captions):
    assert len(coco_captions) == 395
    python, java_out = ptb_tokenize_many(coco_captions), java_ptb_tokenize_many(coco_captions)
    differ = [(c, p, j) for c, p, j in zip(coco_captions, python, java_out) if p != j]
    assert not differ, f"{len(differ)} of {len(coco_captions)} differ, first: {differ[:3]}"


def test_java_tokenizer_says_clearly_when_java_is_missing(monkeypatch):
    monkeypatch.setattr(ptb_module.shutil, "which", lambda name: None)
    assert java_available() is False
    with pytest.raises(RuntimeError, match="needs Java"):
        java_ptb_tokenize_many(["a dog"])


@pytest.mark.slow
def test_python_tokenizer_matches_java_on_all_flickr8k_captions(java, flickr8k_captions):
    captions = [caption for _, caption in flickr8k_captions]
    assert len(captions) == 40460
    python, java_out = ptb_tokenize_many(captions), java_ptb_tokenize_many(captions)
    differ = [(c, p, j) for c, p, j in zip(captions, python, java_out) if p != j]
    assert not differ, f"{len(differ)} of {len(captions)} differ, first: {differ[:3]}"


# ---------------------------------------------------------------------------------------------------
# golden numbers
# ---------------------------------------------------------------------------------------------------
def test_golden_bleu_statistics_with_python_tokenizer(flickr8k_test_split):
    from pycocoevalcap.bleu.bleu import Bleu

    hypotheses, references = flickr8k_test_split
    ids = list(hypotheses)
    res = dict(zip(ids, ([h] for h in ptb_tokenize_many([hypotheses[i] for i in ids]))))
    flat = ptb_tokenize_many([r for i in ids for r in references[i]])
    gts = {i: flat[4 * k:4 * k + 4] for k, i in enumerate(ids)}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        Bleu(4).compute_score(gts, res, verbose=1)
    stats = ast.literal_eval(out.getvalue().splitlines()[0])
    assert {k: stats[k] for k in GOLDEN_BLEU_STATS} == GOLDEN_BLEU_STATS


def test_golden_numbers_with_python_tokenizer(python_scores):
    assert python_scores.tokenizer == "ptb-python"
    assert set(python_scores.corpus) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    for key, value in python_scores.corpus.items():
        assert round(value, 5) == GOLDEN[key], key
    assert len(python_scores.per_image) == 1000


@pytest.mark.slow
def test_golden_numbers_with_java(java_scores):
    assert java_scores.tokenizer == "ptb-java"
    assert java_scores.unavailable == {}
    assert set(java_scores.corpus) == set(GOLDEN)
    for key, value in java_scores.corpus.items():
        assert round(value, 5) == GOLDEN[key], key
    assert java_scores.versions["pycocoevalcap"] == "1.2"


def test_both_tokenizer_paths_give_the_same_scores(python_scores, java_scores):
    for key in python_scores.corpus:
        assert python_scores.corpus[key] == pytest.approx(java_scores.corpus[key], abs=1e-6), key
    for image_id, scores in python_scores.per_image.items():
        for key, value in scores.items():
            assert value == pytest.approx(java_scores.per_image[image_id][key], abs=1e-6), (image_id, key)


def test_per_image_scores_are_pycocoevalcaps(python_scores):
    # pycocoevalcap's corpus ROUGE-L and CIDEr are the means of its per-image scores
    for key in ("ROUGE_L", "CIDEr"):
        values = [s[key] for s in python_scores.per_image.values()]
        assert sum(values) / len(values) == pytest.approx(python_scores.corpus[key], abs=1e-9)
    assert all(set(s) == set(python_scores.corpus) for s in python_scores.per_image.values())


# ---------------------------------------------------------------------------------------------------
# scoring API: small inputs, without METEOR's slow start
# ---------------------------------------------------------------------------------------------------
SMALL_HYPS = {1: "A dog runs on the grass.", 2: "Two men play football"}
SMALL_REFS = {1: ["A dog is running on grass .", "The dog runs across the lawn."],
              2: ["Two men are playing soccer .", "Men play football in a park"]}


def test_without_java_meteor_is_unavailable_and_the_rest_is_scored(monkeypatch):
    monkeypatch.setattr(coco_module, "java_available", lambda: False)
    scores = score_captions(SMALL_HYPS, SMALL_REFS)
    assert isinstance(scores, CaptionScores)
    assert scores.tokenizer == "ptb-python"
    assert "METEOR" in scores.unavailable and "Java" in scores.unavailable["METEOR"]
    assert set(scores.corpus) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert 0 < scores.corpus["Bleu_1"] <= 1 and scores.corpus["CIDEr"] > 0
    assert set(scores.per_image) == {1, 2}
    with pytest.raises(RuntimeError, match="needs Java"):
        score_captions(SMALL_HYPS, SMALL_REFS, metrics=("bleu",), tokenizer="java")


def test_meteor_files_missing_makes_meteor_unavailable_instead_of_hanging(monkeypatch, tmp_path):
    # With Java present and meteor-1.5.jar gone, pycocoevalcap's Meteor() would wait for ever on a
    # Java process that has exited: the files are checked first, and the other metrics are scored.
    monkeypatch.setattr(coco_module, "java_available", lambda: True)
    monkeypatch.setattr(coco_module, "_java_version", lambda: "test")
    monkeypatch.setattr(coco_module, "_meteor_dir", lambda: tmp_path)
    assert coco_module.meteor_files_missing() == [str(tmp_path / "meteor-1.5.jar"),
                                                  str(tmp_path / "data/paraphrase-en.gz")]
    scores = score_captions(SMALL_HYPS, SMALL_REFS, metrics=("bleu", "meteor"), tokenizer="python")
    reason = scores.unavailable["METEOR"]
    assert "missing" in reason and str(tmp_path / "meteor-1.5.jar") in reason
    assert set(scores.corpus) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"}
    monkeypatch.undo()
    assert coco_module.meteor_files_missing() == []  # the installed pycocoevalcap has both files


def test_identical_captions_score_perfectly():
    refs = {k: [v, v] for k, v in SMALL_HYPS.items()}
    scores = score_captions(SMALL_HYPS, refs, metrics=("bleu", "rouge"), tokenizer="python")
    assert scores.corpus["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert scores.corpus["ROUGE_L"] == pytest.approx(1.0, abs=1e-9)
    assert scores.to_dict()["num_images"] == 2 and "per_image" not in scores.to_dict()
    assert scores.to_dict(per_image=True)["per_image"]["1"]["ROUGE_L"] == pytest.approx(1.0)


def test_scorers_do_not_print(capsys):
    score_captions(SMALL_HYPS, SMALL_REFS, metrics=("bleu", "cider"), tokenizer="python")
    assert capsys.readouterr().out == ""


def test_ids_must_match_and_the_error_names_them():
    hyps = {"img_a": "a dog", "img_b": "a cat", "img_c": "a cow"}
    refs = {"img_a": ["a dog"], "img_c": ["a cow"], "img_x": ["a bird"]}
    with pytest.raises(ValueError, match="same image ids") as info:
        score_captions(hyps, refs, metrics=("bleu",), tokenizer="python")
    message = str(info.value)
    assert "no references entry: 'img_b'" in message and "no hypothesis: 'img_x'" in message
    assert "img_a" not in message


@pytest.mark.parametrize("hyps,refs,message", [
    ({1: "  ", 2: "men"}, SMALL_REFS, "empty hypothesis"),
    (SMALL_HYPS, {1: [], 2: ["men"]}, "no reference captions"),
    (SMALL_HYPS, {1: ["a dog", ""], 2: ["men"]}, "empty reference"),
    ({}, {}, "no captions"),
])
def test_invalid_inputs_raise_clear_value_errors(hyps, refs, message):
    with pytest.raises(ValueError, match=message):
        score_captions(hyps, refs, metrics=("bleu",), tokenizer="python")


def test_invalid_arguments():
    with pytest.raises(TypeError, match="list of strings"):
        score_captions({1: "a dog"}, {1: "a dog"}, metrics=("bleu",), tokenizer="python")
    with pytest.raises(ValueError, match="unknown metric"):
        score_captions(SMALL_HYPS, SMALL_REFS, metrics=("spice",), tokenizer="python")
    with pytest.raises(ValueError, match="tokenizer"):
        score_captions(SMALL_HYPS, SMALL_REFS, tokenizer="nltk")


def test_format_scores_table():
    table = format_scores_table({"CIDEr": 0.7886, "Bleu_1": 0.636412, "ROUGE_L": 0.48755, "extra": float("nan")})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "score"]
    assert [line.split()[0] for line in lines[2:]] == ["Bleu_1", "ROUGE_L", "CIDEr", "extra"]
    assert lines[2].split()[1] == "0.6364" and lines[-1].split()[1] == "n/a"
    assert len({len(line) for line in lines}) == 1  # aligned


def test_an_empty_model_caption_is_scored_as_empty_when_allowed():
    from captioner.metrics.coco import score_captions

    references = {1: ["a cat sits on a mat ."], 2: ["a dog runs on the grass ."]}
    with pytest.raises(ValueError, match="empty hypothesis"):
        score_captions({1: " ", 2: "a dog runs"}, references, metrics=("bleu", "cider"), tokenizer="python")
    empty = score_captions({1: "", 2: "a dog runs"}, references, metrics=("bleu",), tokenizer="python",
                           allow_empty=True)
    alone = score_captions({2: "a dog runs"}, {2: references[2]}, metrics=("bleu",), tokenizer="python")
    # The empty caption adds nothing to the matches and nothing to the hypothesis length.
    assert empty.per_image[1]["Bleu_1"] < 1e-6
    assert empty.corpus["Bleu_1"] < alone.corpus["Bleu_1"]  # its reference length still counts
