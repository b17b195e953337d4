"""Tests for the built-in "scenes" data set (captioner/data/scenes.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from captioner.data.scenes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    SceneExample,
    ScenesSpec,
    generate_scenes,
    make_scene_splits,
    save_scene_images,
)

COLOUR_RGB = {
    "red": (225, 35, 35),
    "green": (40, 200, 50),
    "blue": (45, 90, 245),
    "yellow": (240, 215, 35),
    "white": (240, 240, 240),
}

RELATION_WORDS = {"below", "above", "left", "right"}


@pytest.fixture(scope="module")
def scenes() -> list[SceneExample]:
    return generate_scenes(150, seed=7)


def test_constants():
    assert len(POSITIONS) == 9
    assert POSITIONS[0] == "top left" and POSITIONS[4] == "center" and POSITIONS[8] == "bottom right"
    assert set(COLOUR_RGB) == set(COLOURS)
    assert SIZES == ("small", "large")


def test_determinism():
    a = generate_scenes(20, seed=3)
    b = generate_scenes(20, seed=3)
    for x, y in zip(a, b):
        assert x.image_id == y.image_id
        assert np.array_equal(x.image, y.image)
        assert x.objects == y.objects
        assert x.captions == y.captions
        assert x.word_cells == y.word_cells


def test_different_seeds_differ():
    a = generate_scenes(10, seed=1)
    b = generate_scenes(10, seed=2)
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [x.captions for x in a] != [y.captions for y in b]


def test_image_format_and_ids(scenes):
    assert len(scenes) == 150
    assert [e.image_id for e in scenes] == list(range(150))
    for e in scenes:
        assert e.image.dtype == np.uint8 and e.image.shape == (72, 72, 3)
        assert 1 <= len(e.objects) <= 3
        assert len({o.cell for o in e.objects}) == len(e.objects)
        for o in e.objects:
            assert o.shape in SHAPES and o.colour in COLOURS and o.size in SIZES and 0 <= o.cell < 9
    shifted = generate_scenes(3, seed=7, first_image_id=500)
    assert [e.image_id for e in shifted] == [500, 501, 502]
    assert np.array_equal(shifted[0].image, scenes[0].image)


def test_object_count_bounds():
    for e in generate_scenes(30, seed=5, min_objects=2, max_objects=2):
        assert len(e.objects) == 2
    for e in generate_scenes(30, seed=5, min_objects=3, max_objects=3, image_size=48):
        assert len(e.objects) == 3 and e.image.shape == (48, 48, 3)


def test_splits():
    spec = ScenesSpec(train=30, val=7, test=5, seed=11)
    splits = make_scene_splits(spec)
    assert set(splits) == {"train", "val", "test"}
    assert [len(splits[k]) for k in ("train", "val", "test")] == [30, 7, 5]
    ids = [e.image_id for k in ("train", "val", "test") for e in splits[k]]
    assert len(ids) == len(set(ids)) == 42
    # Different derived seeds: the first val image is not the first train image.
    assert not np.array_equal(splits["train"][0].image, splits["val"][0].image)
    again = make_scene_splits(spec)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(again["test"], splits["test"]))


def test_caption_format(scenes):
    for e in scenes:
        assert len(e.captions) == 5 and len(e.word_cells) == 5
        for caption, cells in zip(e.captions, e.word_cells):
            tokens = caption.split()
            assert caption == " ".join(tokens)  # single spaces, no leading/trailing blanks
            assert all(t.isalpha() and t.islower() for t in tokens)
            assert len(cells) == len(tokens)
            assert len(tokens) <= 22


def test_vocabulary_small(scenes):
    words = {w for e in scenes for c in e.captions for w in c.split()}
    assert len(words) < 60


def test_tags_match_objects(scenes):
    for e in scenes:
        by_cell = {o.cell: o for o in e.objects}
        for caption, cells in zip(e.captions, e.word_cells):
            tokens = caption.split()
            for tok, cell in zip(tokens, cells):
                if cell == -1:
                    # Untagged tokens are never colour or shape words.
                    assert tok not in COLOURS and tok not in SHAPES and tok not in SIZES, caption
                    continue
                assert cell in by_cell, (caption, cells)
                obj = by_cell[cell]
                assert tok in (obj.colour, obj.size, obj.shape), (caption, tok, obj)
            # Every object is mentioned, with its colour and shape tagged at its cell.
            for obj in e.objects:
                tagged = [t for t, c in zip(tokens, cells) if c == obj.cell]
                assert obj.shape in tagged and obj.colour in tagged, (caption, obj)
                assert tagged.count(obj.shape) == 1


def _object_spans(cells):
    """Order of the objects (by cell) as they first appear in a caption."""
    order = []
    for c in cells:
        if c != -1 and c not in order:
            order.append(c)
    return order


def test_relations_true(scenes):
    n_relations = 0
    for e in scenes:
        for caption, cells in zip(e.captions, e.word_cells):
            tokens = caption.split()
            rel_idx = [i for i, t in enumerate(tokens) if t in ("below", "above") or t == "of"]
            if not rel_idx:
                continue
            n_relations += 1
            assert len(e.objects) == 2
            i = rel_idx[0]
            word = tokens[i] if tokens[i] != "of" else tokens[i - 1]
            before = {c for c in cells[:i] if c != -1}
            after = {c for c in cells[i:] if c != -1}
            assert len(before) == 1 and len(after) == 1, caption
            (a,), (b,) = before, after
            (ra, ca), (rb, cb) = divmod(a, 3), divmod(b, 3)
            expected = {"below": ra > rb, "above": ra < rb, "left": ca < cb, "right": ca > cb}[word]
            assert expected, (caption, a, b)
    assert n_relations > 10


def _cell_mean(image, cell, cell_size=24):
    r, c = divmod(cell, 3)
    return image[r * cell_size:(r + 1) * cell_size, c * cell_size:(c + 1) * cell_size].reshape(-1, 3).mean(0)


def _colour_pixels(image, cell, colour, cell_size=24):
    r, c = divmod(cell, 3)
    patch = image[r * cell_size:(r + 1) * cell_size, c * cell_size:(c + 1) * cell_size].astype(float)
    dist = np.linalg.norm(patch - np.array(COLOUR_RGB[colour], dtype=float), axis=-1)
    return int((dist < 60).sum())


def test_objects_drawn_in_their_cells(scenes):
    small_counts, large_counts = [], []
    for e in scenes:
        occupied = {o.cell for o in e.objects}
        empty = [c for c in range(9) if c not in occupied]
        for obj in e.objects:
            target = np.array(COLOUR_RGB[obj.colour], dtype=float)
            d_obj = np.linalg.norm(_cell_mean(e.image, obj.cell) - target)
            for c in empty:
                assert d_obj < np.linalg.norm(_cell_mean(e.image, c) - target), (e.image_id, obj)
            n = _colour_pixels(e.image, obj.cell, obj.colour)
            assert n >= 40, (e.image_id, obj, n)
            (small_counts if obj.size == "small" else large_counts).append(n)
            for c in empty:
                assert _colour_pixels(e.image, c, obj.colour) == 0, (e.image_id, obj, c)
    # "large" objects are clearly larger than "small" ones.
    assert min(large_counts) > 1.5 * max(small_counts)


def test_caption_variety(scenes):
    sample = scenes[:100]
    skeletons = set()
    first_words = set()
    for e in sample:
        for caption, cells in zip(e.captions, e.word_cells):
            tokens = caption.split()
            first_words.add(tokens[0])
            skeleton = tuple(t for t, c in zip(tokens, cells)
                             if c == -1 and t not in POSITIONS and t not in ("top", "bottom", "left", "right", "center"))
            skeletons.add(skeleton)
    assert len(first_words) >= 4
    assert len(skeletons) >= 8
    # Objects are always named in reading order (row-major cell order), whatever the template.
    multi = [e for e in sample if len(e.objects) >= 2]
    assert len(multi) > 30
    for e in multi:
        for cells in e.word_cells:
            assert _object_spans(cells) == sorted(o.cell for o in e.objects)
    # Captions within an image are not all identical, and size words are sometimes dropped.
    assert all(len(set(e.captions)) >= 3 for e in sample)
    n_size = sum(t in SIZES for e in sample for c in e.captions for t in c.split())
    n_shape = sum(t in SHAPES for e in sample for c in e.captions for t in c.split())
    assert 0.2 * n_shape < n_size < 0.9 * n_shape


def test_save_scene_images(tmp_path, scenes):
    paths = save_scene_images(scenes[:3], tmp_path / "out")
    assert [p.name for p in paths] == ["scene_00000.png", "scene_00001.png", "scene_00002.png"]
    for p, e in zip(paths, scenes):
        assert np.array_equal(np.asarray(Image.open(p).convert("RGB")), e.image)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_images=-1), "num_images"),
        (dict(min_objects=3, max_objects=2), "min_objects"),
        (dict(min_objects=0), "min_objects"),
        (dict(max_objects=10), "max_objects"),
        (dict(grid=4, image_size=96), "grid"),
        (dict(image_size=30), "image_size"),
        (dict(captions_per_image=0), "captions_per_image"),
        (dict(seed=-5), "seed"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = dict(num_images=2, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        generate_scenes(**args)


def test_bad_spec():
    with pytest.raises(ValueError, match="train"):
        make_scene_splits(ScenesSpec(train=-1))
    with pytest.raises(ValueError, match="image_size"):
        make_scene_splits(ScenesSpec(train=1, val=1, test=1, image_size=24))
