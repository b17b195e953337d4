"""research/paired_bootstrap.py: its scores are coco-caption's, and its interval behaves as a paired test should."""

import json

import numpy as np
import pytest

from captioner.metrics.coco import score_captions
from research.paired_bootstrap import bleu4_from_sums, image_statistics, load_arm, paired_bootstrap

REFERENCES = {
    "img0": ["a dog runs across the grass", "a brown dog is running on grass", "the dog runs outside",
             "a dog running in a field", "a brown dog runs through a green field"],
    "img1": ["two children play in the sand", "kids playing on a beach", "two kids dig in the sand",
             "children on the beach", "two young children playing in sand at the beach"],
    "img2": ["a man rides a bike down the street", "a cyclist on a city street", "a man on a bicycle",
             "a person riding a bike", "a man riding his bicycle on the road"],
    "img3": ["a woman in a red coat walks in the snow", "a lady walking through snow", "a woman walks outside",
             "a person in red walking in snow", "a woman in a red jacket in the snow"],
}
GOOD = {"img0": "a brown dog runs through the grass", "img1": "two children play in the sand",
        "img2": "a man rides a bicycle on the street", "img3": "a woman in a red coat walks in the snow"}
WORSE = {**GOOD, "img1": "a man is standing"}


def _run(tmp_path, name, captions, corrupt=None):
    run = tmp_path / name
    run.mkdir()
    (run / "test_captions.json").write_text(json.dumps([{"image_id": k, "caption": v} for k, v in captions.items()]))
    references = {k: REFERENCES[k] for k in captions}
    corpus = score_captions(captions, references, metrics=("bleu", "cider"), tokenizer="python").corpus
    metrics = {"Bleu_4": corpus["Bleu_4"], "CIDEr": corpus["CIDEr"], **(corrupt or {})}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_its_bleu_4_and_cider_are_coco_captions_scores():
    for captions in (GOOD, WORSE):
        ids, stats, cider = image_statistics(captions, REFERENCES, use_java=False)
        expected = score_captions(captions, REFERENCES, metrics=("bleu", "cider"), tokenizer="python")
        assert ids == sorted(REFERENCES)
        assert float(bleu4_from_sums(stats.sum(axis=0))) == pytest.approx(expected.corpus["Bleu_4"], abs=1e-12)
        assert float(cider.mean()) == pytest.approx(expected.corpus["CIDEr"], abs=1e-12)
        for row, key in zip(cider, ids):
            assert row == pytest.approx(expected.per_image[key]["CIDEr"], abs=1e-12)


def test_an_arm_against_itself_differs_by_exactly_nothing(tmp_path):
    arm = load_arm([_run(tmp_path, "a-s0", GOOD), _run(tmp_path, "a-s1", WORSE)], REFERENCES, use_java=False)
    result = paired_bootstrap(arm, arm, samples=300, seed=1)
    for row in result.values():
        assert row["difference"] == 0.0 and row["interval_95"] == [0.0, 0.0] and row["share_a_at_least_b"] == 1.0


def test_a_better_caption_on_one_image_wins_every_draw_that_holds_it(tmp_path):
    good = load_arm([_run(tmp_path, "good-s0", GOOD)], REFERENCES, use_java=False)
    worse = load_arm([_run(tmp_path, "worse-s0", WORSE)], REFERENCES, use_java=False)
    result = paired_bootstrap(good, worse, samples=2000, seed=0)
    cider = result["CIDEr"]
    assert cider["difference"] > 0 and cider["share_a_at_least_b"] == 1.0  # equal elsewhere, better on img1
    assert cider["interval_95"][0] == 0.0 < cider["interval_95"][1]  # draws without img1 (about 32%) tie
    assert result["Bleu_4"]["difference"] > 0
    swapped = paired_bootstrap(worse, good, samples=2000, seed=0)
    assert swapped["CIDEr"]["difference"] == pytest.approx(-cider["difference"])
    assert swapped["CIDEr"]["interval_95"] == pytest.approx([-cider["interval_95"][1], -cider["interval_95"][0]])


def test_the_seed_mean_is_the_mean_of_the_seeds_scores(tmp_path):
    arm = load_arm([_run(tmp_path, "a-s0", GOOD), _run(tmp_path, "a-s1", WORSE)], REFERENCES, use_java=False)
    one = load_arm([_run(tmp_path, "b-s0", GOOD)], REFERENCES, use_java=False)
    result = paired_bootstrap(arm, one, samples=10, seed=0)
    good = score_captions(GOOD, REFERENCES, metrics=("bleu", "cider"), tokenizer="python").corpus
    worse = score_captions(WORSE, REFERENCES, metrics=("bleu", "cider"), tokenizer="python").corpus
    for key in ("Bleu_4", "CIDEr"):
        assert result[key]["a"] == pytest.approx((good[key] + worse[key]) / 2, abs=1e-12)
        assert np.isfinite(result[key]["interval_95"]).all()


def test_it_refuses_a_run_whose_reported_score_it_does_not_reproduce(tmp_path):
    run = _run(tmp_path, "a-s0", GOOD, corrupt={"CIDEr": 0.123})
    with pytest.raises(SystemExit, match=r"a-s0: recomputed CIDEr .* != the run's 0\.12300000"):
        load_arm([run], REFERENCES, use_java=False)


def test_it_names_a_missing_or_foreign_captions_file(tmp_path):
    empty = tmp_path / "x-s0"
    empty.mkdir()
    with pytest.raises(SystemExit, match=r"x-s0/test_captions.json: missing"):
        load_arm([empty], REFERENCES, use_java=False)
    foreign = _run(tmp_path, "y-s0", GOOD)
    (foreign / "test_captions.json").write_text(json.dumps([{"image_id": "nope", "caption": "a dog"}]))
    with pytest.raises(SystemExit, match=r"y-s0/test_captions.json: image ids not in the split's references"):
        load_arm([foreign], REFERENCES, use_java=False)
    fewer = _run(tmp_path, "z-s0", {k: GOOD[k] for k in ("img0", "img1")})
    with pytest.raises(SystemExit, match=r"z-s0/test_captions.json: captions a different set of images"):
        load_arm([_run(tmp_path, "w-s0", GOOD), fewer], REFERENCES, use_java=False)
