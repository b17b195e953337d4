"""The built-in "scenes" data set.

Small RGB images holding 1-3 coloured shapes at distinct cells of a 3x3
layout, on a low-contrast noisy background.  Every image comes with several
reference captions in varied wording and word order, and for every token of
every caption the cell of the object it describes (or -1), so that attention
maps can be scored against ground truth.

Everything is generated deterministically from a seed with numpy's
``default_rng`` (per image, seeded from ``(seed, image_index)``); nothing is
downloaded and no global random state is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "POSITIONS",
    "COLOUR_RGB",
    "POSITION_PHRASES",
    "TEMPLATES",
    "MAX_CAPTION_TOKENS",
    "SceneObject",
    "SceneExample",
    "ScenesSpec",
    "generate_scenes",
    "make_scene_splits",
    "save_scene_images",
    "scenes_vocabulary",
]

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "white")
SIZES = ("small", "large")
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)

#: Nominal, saturated RGB value of every colour word (a small per-object
#: jitter is added when drawing).
COLOUR_RGB = {
    "red": (225, 35, 35),
    "green": (40, 200, 50),
    "blue": (45, 90, 245),
    "yellow": (240, 215, 35),
    "white": (240, 240, 240),
}

#: Prepositional phrase naming each cell of the 3x3 layout.
POSITION_PHRASES = (
    "at the top left", "at the top", "at the top right",
    "on the left", "in the center", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
)

#: Longest caption (in tokens) the generator ever produces.
MAX_CAPTION_TOKENS = 22

# Object radius as a fraction of the cell size.
_RADIUS_FRACTION = {"small": 0.22, "large": 0.40}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_MIN_CELL_SIZE = 12


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: int  # row * grid + col, row 0 = top


@dataclass
class SceneExample:
    image_id: int
    image: np.ndarray  # uint8, (image_size, image_size, 3)
    objects: tuple[SceneObject, ...]
    captions: list[str]  # lower case, single spaces, no punctuation
    word_cells: list[list[int]]  # word_cells[c][i]: cell of token i of captions[c].split(), or -1


@dataclass(frozen=True)
class ScenesSpec:
    train: int = 2000
    val: int = 200
    test: int = 200
    image_size: int = 72
    grid: int = 3
    min_objects: int = 1
    max_objects: int = 3
    captions_per_image: int = 5
    seed: int = 0


# --------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------
# A caption is built as a list of (token, cell) pairs; object words carry the
# cell of their object, every other token -1.

_Tagged = list[tuple[str, int]]


def _words(text: str) -> _Tagged:
    return [(w, -1) for w in text.split()]


def _noun_phrase(obj: SceneObject, with_size: bool) -> _Tagged:
    out: _Tagged = [("a", -1)]
    if with_size:
        out.append((obj.size, obj.cell))
    out.append((obj.colour, obj.cell))
    out.append((obj.shape, obj.cell))
    return out


def _join(parts: Sequence[_Tagged]) -> _Tagged:
    """'A', 'A and B', 'A B and C' (no commas: there is no punctuation)."""
    out: _Tagged = []
    for i, part in enumerate(parts):
        if i > 0 and i == len(parts) - 1:
            out.append(("and", -1))
        out.extend(part)
    return out


def _list_pos(objs, sizes, rel) -> _Tagged:
    return _join([_noun_phrase(o, s) + _words(POSITION_PHRASES[o.cell]) for o, s in zip(objs, sizes)])


def _bare(objs, sizes, rel) -> _Tagged:
    return _join([_noun_phrase(o, s) for o, s in zip(objs, sizes)])


def _with(objs, sizes, rel) -> _Tagged:
    nps = [_noun_phrase(o, s) for o, s in zip(objs, sizes)]
    return nps[0] + [("with", -1)] + _join(nps[1:])


def _shows_pos(objs, sizes, rel) -> _Tagged:
    return _words("the image shows") + _list_pos(objs, sizes, rel)


def _shows(objs, sizes, rel) -> _Tagged:
    return _words("the image shows") + _bare(objs, sizes, rel)


def _count_head(n: int, noun: str) -> _Tagged:
    return _words(f"{_NUMBER_WORDS[n]} {noun if n == 1 else noun + 's'}")


def _count_pos(objs, sizes, rel) -> _Tagged:
    return _count_head(len(objs), "object") + _list_pos(objs, sizes, rel)


def _count(objs, sizes, rel) -> _Tagged:
    return _count_head(len(objs), "shape") + _bare(objs, sizes, rel)


def _there_pos(objs, sizes, rel) -> _Tagged:
    return _words("there is") + _list_pos(objs, sizes, rel)


def _pos_first(objs, sizes, rel) -> _Tagged:
    parts = [_words(POSITION_PHRASES[o.cell] + " there is") + _noun_phrase(o, s) for o, s in zip(objs, sizes)]
    out: _Tagged = []
    for i, part in enumerate(parts):  # "and" between every clause
        if i > 0:
            out.append(("and", -1))
        out.extend(part)
    return out


def _relation_there(objs, sizes, rel) -> _Tagged:
    return _words("there is") + _noun_phrase(objs[0], sizes[0]) + _words(rel) + _noun_phrase(objs[1], sizes[1])


def _relation_is(objs, sizes, rel) -> _Tagged:
    return _noun_phrase(objs[0], sizes[0]) + _words("is " + rel) + _noun_phrase(objs[1], sizes[1])


# name -> (builder, needs a relation between exactly two objects)
TEMPLATES: dict[str, tuple[Callable[..., _Tagged], bool]] = {
    "list_pos": (_list_pos, False),
    "bare": (_bare, False),
    "with": (_with, False),
    "shows_pos": (_shows_pos, False),
    "shows": (_shows, False),
    "count_pos": (_count_pos, False),
    "count": (_count, False),
    "there_pos": (_there_pos, False),
    "pos_first": (_pos_first, False),
    "relation_there": (_relation_there, True),
    "relation_is": (_relation_is, True),
}

_RELATIONS = ("below", "above", "to the left of", "to the right of")


def _true_relations(a: SceneObject, b: SceneObject, grid: int) -> list[str]:
    """Relations r such that 'a r b' is true for the cells of a and b."""
    ra, ca = divmod(a.cell, grid)
    rb, cb = divmod(b.cell, grid)
    out = []
    if ra > rb:
        out.append("below")
    if ra < rb:
        out.append("above")
    if ca < cb:
        out.append("to the left of")
    if ca > cb:
        out.append("to the right of")
    return out


def _applicable_templates(n_objects: int) -> list[str]:
    names = []
    dummy = tuple(SceneObject("triangle", "yellow", "large", 8) for _ in range(n_objects))
    for name, (builder, relational) in TEMPLATES.items():
        if relational and n_objects != 2:
            continue
        if name == "with" and n_objects < 2:
            continue
        # Longest position phrase, no size words: the shortest form it can take.
        if len(builder(dummy, [False] * n_objects, _RELATIONS[-1])) <= MAX_CAPTION_TOKENS:
            names.append(name)
    return names


def _make_caption(objects: tuple[SceneObject, ...], template: str, grid: int,
                  rng: np.random.Generator) -> tuple[str, list[int]]:
    builder, relational = TEMPLATES[template]
    # Objects are named in reading order (top row first, left to right): the wording varies, the
    # order does not, so a model must look at the image to know which object comes next.
    order = sorted(objects, key=lambda o: o.cell)
    rel = ""
    if relational:
        rel_options = _true_relations(order[0], order[1], grid)
        rel = rel_options[int(rng.integers(len(rel_options)))]
    sizes = list(rng.random(len(order)) < 0.7)
    tagged = builder(order, sizes, rel)
    while len(tagged) > MAX_CAPTION_TOKENS:  # drop size words until it fits
        kept = [i for i, s in enumerate(sizes) if s]
        sizes[kept[int(rng.integers(len(kept)))]] = False
        tagged = builder(order, sizes, rel)
    return " ".join(w for w, _ in tagged), [c for _, c in tagged]


def _make_captions(objects, count: int, grid: int, rng: np.random.Generator):
    names = _applicable_templates(len(objects))
    chosen = [names[i] for i in rng.permutation(len(names))[:count]]
    while len(chosen) < count:  # more captions than templates: allow repeats
        chosen.append(names[int(rng.integers(len(names)))])
    captions, cells = [], []
    for name in chosen:
        text, tags = _make_caption(objects, name, grid, rng)
        captions.append(text)
        cells.append(tags)
    return captions, cells


def scenes_vocabulary() -> list[str]:
    """Every word any caption can contain, sorted."""
    words = set(SHAPES) | set(COLOURS) | set(SIZES)
    words |= {w for p in POSITION_PHRASES for w in p.split()}
    words |= {w for r in _RELATIONS for w in r.split()}
    words |= set("a and with there is the image shows object objects shape shapes one two three".split())
    return sorted(words)


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------

def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Dark grey noise with a faint gradient, faint stripes and a slight tint."""
    base = rng.uniform(40.0, 65.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    gradient = rng.uniform(6.0, 14.0) * ((np.cos(angle) * xx + np.sin(angle) * yy) - 0.5)
    s_angle = rng.uniform(0.0, np.pi)
    period = rng.uniform(5.0, 12.0)
    stripes = rng.uniform(2.0, 5.0) * np.sin(
        2.0 * np.pi * (np.cos(s_angle) * xx + np.sin(s_angle) * yy) * size / period + rng.uniform(0, 2 * np.pi))
    grey = base + gradient + stripes
    tint = rng.uniform(-5.0, 5.0, size=3)
    img = grey[:, :, None] + tint[None, None, :] + rng.normal(0.0, 7.0, size=(size, size, 3))
    return img


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, cell_size: int, grid: int,
                 rng: np.random.Generator) -> None:
    row, col = divmod(obj.cell, grid)
    r = _RADIUS_FRACTION[obj.size] * cell_size
    jitter = max(0.0, min(0.15 * cell_size, 0.5 * cell_size - r - 1.0))
    cx = (col + 0.5) * cell_size + rng.uniform(-jitter, jitter)
    cy = (row + 0.5) * cell_size + rng.uniform(-jitter, jitter)
    rgb = np.array(COLOUR_RGB[obj.colour]) + rng.integers(-15, 16, size=3)
    fill = tuple(int(v) for v in np.clip(rgb, 0, 255))
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        h = 0.85 * r
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + 0.95 * r, cy + 0.8 * r), (cx - 0.95 * r, cy + 0.8 * r)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # pragma: no cover - SHAPES and this function must agree
        raise ValueError(f"unknown shape {obj.shape!r}")


def _render(objects: Sequence[SceneObject], image_size: int, grid: int, rng: np.random.Generator) -> np.ndarray:
    background = _background(image_size, rng)
    canvas = Image.fromarray(np.clip(np.rint(background), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(canvas)
    cell_size = image_size // grid
    for obj in objects:
        _draw_object(draw, obj, cell_size, grid, rng)
    img = np.asarray(canvas, dtype=np.float64) + rng.normal(0.0, 4.0, size=(image_size, image_size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _sample_objects(n: int, grid: int, rng: np.random.Generator) -> tuple[SceneObject, ...]:
    cells = rng.choice(grid * grid, size=n, replace=False)
    # Distinct (colour, shape) pairs, so that every caption names each object unambiguously.
    pairs = rng.choice(len(COLOURS) * len(SHAPES), size=n, replace=False)
    objects = []
    for cell, pair in zip(cells, pairs):
        colour_i, shape_i = divmod(int(pair), len(SHAPES))
        size = SIZES[int(rng.integers(len(SIZES)))]
        objects.append(SceneObject(SHAPES[shape_i], COLOURS[colour_i], size, int(cell)))
    objects.sort(key=lambda o: o.cell)
    return tuple(objects)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _validate(num_images, seed, image_size, grid, min_objects, max_objects, captions_per_image, first_image_id):
    _check_int("num_images", num_images, 0)
    _check_int("seed", seed, 0)
    _check_int("grid", grid, 1)
    if grid != 3:
        raise ValueError(f"grid must be 3 (position words only exist for a 3x3 layout), got {grid}")
    _check_int("image_size", image_size, 1)
    if image_size // grid < _MIN_CELL_SIZE:
        raise ValueError(
            f"image_size too small for the grid: image_size // grid must be >= {_MIN_CELL_SIZE}, "
            f"got image_size={image_size}, grid={grid}")
    _check_int("min_objects", min_objects, 1)
    _check_int("max_objects", max_objects, 1)
    if min_objects > max_objects:
        raise ValueError(f"min_objects ({min_objects}) must be <= max_objects ({max_objects})")
    if max_objects > grid * grid:
        raise ValueError(f"max_objects ({max_objects}) must be <= grid*grid ({grid * grid})")
    if max_objects > 3:
        raise ValueError(f"max_objects must be <= 3 (captions must fit in {MAX_CAPTION_TOKENS} tokens), "
                         f"got {max_objects}")
    _check_int("captions_per_image", captions_per_image, 1)
    _check_int("first_image_id", first_image_id, 0)


def generate_scenes(num_images: int, seed: int, image_size: int = 72, grid: int = 3,
                    min_objects: int = 1, max_objects: int = 3, captions_per_image: int = 5,
                    first_image_id: int = 0) -> list[SceneExample]:
    """Generate ``num_images`` scenes.

    Image ``i`` depends only on ``(seed, i)`` and the layout arguments, so a
    longer run extends a shorter one.  Image ids are ``first_image_id + i``.
    """
    _validate(num_images, seed, image_size, grid, min_objects, max_objects, captions_per_image, first_image_id)
    examples = []
    for i in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
        n = int(rng.integers(min_objects, max_objects + 1))
        objects = _sample_objects(n, grid, rng)
        image = _render(objects, image_size, grid, rng)
        captions, word_cells = _make_captions(objects, captions_per_image, grid, rng)
        examples.append(SceneExample(first_image_id + i, image, objects, captions, word_cells))
    return examples


_SPLITS = ("train", "val", "test")


def make_scene_splits(spec: ScenesSpec) -> dict[str, list[SceneExample]]:
    """Train/val/test splits, each from its own seed derived from (spec.seed, split index).

    Image ids run consecutively over train, then val, then test, so they are
    unique across splits.
    """
    _check_int("seed", spec.seed, 0)
    out: dict[str, list[SceneExample]] = {}
    next_id = 0
    for index, split in enumerate(_SPLITS):
        count = getattr(spec, split)
        _check_int(split, count, 0)
        split_seed = int(np.random.SeedSequence([spec.seed, index]).generate_state(1, dtype=np.uint32)[0])
        out[split] = generate_scenes(count, split_seed, image_size=spec.image_size, grid=spec.grid,
                                     min_objects=spec.min_objects, max_objects=spec.max_objects,
                                     captions_per_image=spec.captions_per_image, first_image_id=next_id)
        next_id += count
    return out


def save_scene_images(examples: Sequence[SceneExample], folder) -> list[Path]:
    """Write each image as ``folder/scene_{image_id:05d}.png``; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ex in examples:
        path = folder / f"scene_{ex.image_id:05d}.png"
        Image.fromarray(np.ascontiguousarray(ex.image, dtype=np.uint8), mode="RGB").save(path)
        paths.append(path)
    return paths
