"""Flip augmentation: a feature cache of mirrored images (`captioner extract --mirror`), training
images replaced by their mirror image with data.flip_probability, drawn per image and epoch from
(seed, epoch), and "left" / "right" swapped in the captions of a mirrored image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from captioner.cli import main
from captioner.config import ConfigError, load_config
from captioner.data.datasets import CachedFeatures, MirroredFeatures, load_disk_dataset
from captioner.data.feature_cache import CacheMismatchError, FeatureCache, extract_features
from captioner.data.images import read_image
from captioner.data.sampler import CaptionSampler, EncodedCaptions, mirror_word_ids
from captioner.data.vocabulary import Vocabulary
from captioner.train import Trainer
from tests.test_feature_cache import FakeBackbone, _images
from tests.test_real_data_training import TINY_MODEL, tiny_flickr  # noqa: F401 (a fixture)

CAPTIONS = [["a dog on the left", "a dog runs"], ["the man on the right of a dog", "a man", "left right left"],
            ["a cat"], ["a cat on the right", "a dog"]]


def _vocabulary() -> Vocabulary:
    return Vocabulary.build([c for image in CAPTIONS for c in image])


def _sampler(flip: float, seed: int = 3, vocabulary: Vocabulary | None = None) -> CaptionSampler:
    vocabulary = vocabulary or _vocabulary()
    encoded = EncodedCaptions.build(CAPTIONS, vocabulary, None, "cpu")
    return CaptionSampler(encoded, batch_size=2, captions_per_image=0, seed=seed, flip_probability=flip)


def _words(plan, vocabulary: Vocabulary) -> list[tuple[int, str]]:
    """(image row, caption) of every caption of an epoch plan, batch after batch."""
    out = []
    for b in range(len(plan)):
        shard = plan.batch(b)
        for n in range(len(shard.text)):
            out.append((int(shard.images[shard.image_index[n]]), vocabulary.decode(shard.text.targets[n])))
    return out


def test_mirror_word_ids_swaps_left_and_right_and_keeps_every_other_word():
    vocabulary = _vocabulary()
    lookup = mirror_word_ids(vocabulary)
    left, right = vocabulary.index["left"], vocabulary.index["right"]
    assert lookup[left] == right and lookup[right] == left
    others = [i for i in range(len(vocabulary)) if i not in (left, right)]
    assert lookup[others].tolist() == others
    # a vocabulary with only one of the two words keeps it
    one = Vocabulary.build(["a dog on the left"])
    assert mirror_word_ids(one).tolist() == list(range(len(one)))


def test_without_flips_the_plan_is_as_before_and_with_flips_only_images_and_words_change():
    vocabulary = _vocabulary()
    plain = _words(_sampler(0.0).plan(2, "cpu"), vocabulary)
    assert all(row < 4 for row, _ in plain)
    flipped_sampler = _sampler(0.5)
    flips = flipped_sampler.flips(2)
    assert flips is not None and 0 < int(flips.sum()) < 4  # seed 3, epoch 2: some of the four, not all
    flipped = _words(flipped_sampler.plan(2, "cpu"), vocabulary)
    assert len(flipped) == len(plain) == 8
    swap = {"left": "right", "right": "left"}
    for (row, caption), (plain_row, plain_caption) in zip(flipped, plain):
        assert row % 4 == plain_row  # the same order of images and captions
        assert (row >= 4) == bool(flips[plain_row])  # a mirrored image reads row N + i ...
        expected = " ".join(swap.get(w, w) for w in plain_caption.split()) if row >= 4 else plain_caption
        assert caption == expected  # ... and its captions with left and right swapped
    assert any(row >= 4 and "left" in caption for row, caption in flipped) or \
        any(row >= 4 and "right" in caption for row, caption in flipped)


def test_flips_are_a_function_of_seed_and_epoch():
    a, b = _sampler(0.5, seed=1), _sampler(0.5, seed=1)
    assert all(torch.equal(a.flips(e), b.flips(e)) for e in range(5))
    assert not all(torch.equal(a.flips(0), a.flips(e)) for e in range(1, 5))
    assert _sampler(1.0).flips(0).all() and _sampler(0.0).flips(0) is None
    with pytest.raises(ValueError, match="flip_probability"):
        _sampler(1.5)


def test_a_mirrored_cache_holds_the_mirror_images_grids_and_says_so(tmp_path):
    records = _images(tmp_path / "images", 3)
    backbone = FakeBackbone()
    extract_features(records, backbone, tmp_path / "plain", shard_size=2, workers=1)
    extract_features(records, backbone, tmp_path / "mirror", shard_size=2, workers=1, mirror=True)
    plain, mirror = FeatureCache(tmp_path / "plain"), FeatureCache(tmp_path / "mirror")
    assert mirror.mirrored and not plain.mirrored
    ids = [r.image_id for r in records]
    for record, grid in zip(records, mirror.get(ids).numpy()):
        pixels = torch.from_numpy(read_image(record.path, 32)).permute(2, 0, 1)[None].flip(-1)
        with torch.no_grad():
            expected = backbone(backbone.preprocess(pixels))[0].numpy()
        np.testing.assert_allclose(grid, expected, rtol=1e-3, atol=1e-3)  # float16 storage
    # the 2x2 grid of a mirror image is the original's with its columns swapped
    original = plain.get(ids).numpy().reshape(3, 2, 2, -1)
    np.testing.assert_allclose(mirror.get(ids).numpy().reshape(3, 2, 2, -1), original[:, :, ::-1], atol=2e-3)
    # one folder cannot hold both
    with pytest.raises(CacheMismatchError, match="mirrored"):
        extract_features(records, backbone, tmp_path / "mirror", shard_size=2, workers=1)
    # a plain cache's key is what it was before mirrored caches existed
    shard = json.loads((tmp_path / "plain" / "shard-00000.json").read_text())
    assert shard["cache_key"] != json.loads((tmp_path / "mirror" / "shard-00000.json").read_text())["cache_key"]


@pytest.fixture(scope="module")
def caches(tiny_flickr, tmp_path_factory):  # noqa: F811
    """The tiny Flickr8k folder's plain and mirrored caches (EfficientNet-Lite0 at 64 px)."""
    out = tmp_path_factory.mktemp("flip")
    for flag, folder in (([], out / "plain"), (["--mirror"], out / "mirror")):
        args = ["extract", "--config", "eval/flickr8k/wsram.yaml", "--quiet", "--shard-size", "5", "--workers", "2",
                "--out", str(folder), *flag]
        for item in [f"data.root={tiny_flickr}", *TINY_MODEL]:
            args += ["--set", item]
        assert main(args) == 0
    return tiny_flickr, out / "plain", out / "mirror"


def _flip_config(root, plain, mirror, *extra):
    return load_config("eval/flickr8k/wsram.yaml",
                       [f"data.root={root}", f"data.features={plain}", f"data.mirrored_features={mirror}",
                        "data.flip_probability=0.5", *TINY_MODEL, *extra])


def test_the_training_split_holds_each_image_and_its_mirror_image(caches):
    root, plain, mirror = caches
    assert json.loads((mirror / "extraction.json").read_text())["mirrored"] is True
    splits = load_disk_dataset(_flip_config(root, plain, mirror).data)
    train = splits["train"]
    assert isinstance(train.inputs, MirroredFeatures) and len(train.inputs) == 2 * len(train) == 14
    assert type(splits["val"].inputs) is CachedFeatures and type(splits["test"].inputs) is CachedFeatures
    ids = train.image_ids
    np.testing.assert_array_equal(train.inputs[list(range(7))].numpy(), FeatureCache(plain).get(ids).half().float())
    np.testing.assert_array_equal(train.inputs[list(range(7, 14))].numpy(),
                                  FeatureCache(mirror).get(ids).half().float())
    # read from the shards (not preloaded), rows come out the same, in the order asked
    streamed = MirroredFeatures(FeatureCache(plain), FeatureCache(mirror), ids)
    order = [9, 0, 13, 2]
    np.testing.assert_allclose(streamed[order].numpy(), train.inputs[order].numpy(), atol=1e-2)


def test_flip_augmentation_refuses_what_it_cannot_use(caches):
    root, plain, mirror = caches
    with pytest.raises(CacheMismatchError, match="unmirrored"):
        load_disk_dataset(_flip_config(root, plain, plain).data)
    with pytest.raises(CacheMismatchError, match="holds mirrored images"):
        load_disk_dataset(_flip_config(root, mirror, mirror).data)
    with pytest.raises(ConfigError, match="data.mirrored_features"):
        _flip_config(root, plain, "")
    with pytest.raises(ConfigError, match="data.flip_probability"):
        _flip_config(root, plain, mirror, "data.flip_probability=1.5")
    with pytest.raises(ConfigError, match="fine_tune"):
        _flip_config(root, plain, mirror, "model.encoder.fine_tune=true")
    with pytest.raises(ConfigError, match="scenes"):
        load_config(overrides=["data.flip_probability=0.5", "data.mirrored_features=x"])


def test_training_with_flips_reads_mirror_images_and_resumes_exactly(caches, tmp_path):
    """4 updates straight == 1, save, resume, 3 more (over an epoch boundary: 2 batches an epoch);
    the updates read mirror images, and a run without flips ends elsewhere."""
    root, plain, mirror = caches

    def run(folder, steps, *extra, resume=False):
        trainer = Trainer(_flip_config(root, plain, mirror, f"train.max_steps={steps}", "train.epochs=3", *extra),
                          tmp_path / folder, resume=resume)
        seen = []
        gather = trainer.gather_inputs
        trainer.gather_inputs = lambda shard: (seen.extend(shard.images.tolist()), gather(shard))[1]
        trainer.train()
        return trainer, seen

    straight, seen = run("straight", 4)
    assert any(i >= 7 for i in seen) and any(i < 7 for i in seen)  # mirror images and originals
    run("split", 1)
    resumed, _ = run("split", 4, resume=True)
    assert resumed.step == straight.step == 4
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    unflipped, seen = run("unflipped", 4, "data.flip_probability=0")
    assert all(i < 7 for i in seen)
    assert any(not torch.equal(a[key], value) for key, value in unflipped.model.state_dict().items())
