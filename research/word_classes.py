"""Which kinds of words does a model get right? Precision and recall of word classes against the references.

    python -m research.word_classes eval/flickr8k/attention-study/lite2-tune-ema/runs/*/ \\
        --root ../shared/data/flickr8k --json eval/flickr8k/attention-study/word-classes/lite2-tune-ema.json

Each run folder holds `test_captions.json` ([{"image_id", "caption"}], as `captioner train` writes it);
runs are grouped into arms by their folder name without the trailing `-sN`, as in research/seed_table.py.
Captions and the test split's references (Flickr8k, from --root) are tokenised as the scores tokenise
them (captioner.data.ptb). For each class of words below (`CLASSES`) and each run:
- used: how many class words the run's test captions hold (each word counted once per caption);
- precision: the share of them that at least one of the image's references uses;
- recall: of the class words that at least --agree (default 2) of the image's references use, the share
  that the caption uses.

BLEU and CIDEr weigh all n-grams together; this tells whether a model loses on what one glimpse can
see (a colour, a garment) or on what takes the whole picture (the setting, how many). Prints a
markdown table (each arm's mean and min..max over its seeds); --json writes every number.

--compare A B adds a paired bootstrap over the test images, as research/paired_bootstrap.py does for
BLEU-4 and CIDEr: each draw takes the 1,000 test images with replacement, the same draw for both arms
and all their seeds, and recomputes each arm's seed-mean precision and recall. It says how far a
difference could move with another test set of the same size, not how far with other seeds.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path

import numpy as np

from captioner.data.ptb import ptb_tokenize_many
from captioner.data.sources import read_flickr8k
from research.caption_diversity import arm_runs, read_run

# Frequent Flickr8k words of each kind (singular and plural where both are common).
CLASSES: dict[str, tuple[str, ...]] = {
    "colour": ("black", "white", "brown", "red", "blue", "green", "yellow", "orange", "pink", "purple", "gray",
               "grey", "tan"),
    "count": ("two", "three", "four", "five", "several", "group", "couple"),
    "person": ("man", "men", "woman", "women", "boy", "boys", "girl", "girls", "child", "children", "kid", "kids",
               "baby", "people", "person", "lady", "player", "players"),
    "animal": ("dog", "dogs", "cat", "horse", "horses", "bird", "birds", "cow", "cows", "sheep", "puppy"),
    "clothing": ("shirt", "jacket", "hat", "dress", "helmet", "shorts", "coat", "uniform", "jersey", "pants"),
    "setting": ("water", "grass", "snow", "beach", "street", "field", "sand", "ocean", "road", "pool", "park",
                "building", "wall", "air", "mountain", "rock", "river", "lake", "forest", "city", "crowd", "stage"),
    "action": ("running", "jumping", "playing", "sitting", "standing", "walking", "climbing", "swimming", "riding",
               "holding", "looking", "smiling"),
}


def image_counts(caption: list[str], references: list[list[str]], words: frozenset[str],
                 agree: int) -> tuple[int, int, int, int]:
    """One image, one class: (class words in the caption, of them used by some reference, class words at
    least `agree` references use, of them in the caption)."""
    said = set(caption) & words
    support = collections.Counter(w for reference in references for w in set(reference) & words)
    agreed = {w for w, n in support.items() if n >= agree}
    return len(said), len(said & set(support)), len(agreed), len(agreed & said)


def image_table(captions: dict[str, str], references: dict[str, list[str]],
                agree: int = 2) -> tuple[list[str], np.ndarray]:
    """Per image (sorted ids) and class (CLASSES' order), `image_counts`: an (images, classes, 4) array."""
    missing = sorted(set(captions) - set(references))
    if missing:
        raise ValueError(f"{len(missing)} captioned images have no references (e.g. {missing[0]!r}): "
                         "not this data set's test split")
    if not captions:
        raise ValueError("no captions to measure")
    ids = sorted(captions)
    tokens = ptb_tokenize_many([captions[i] for i in ids])
    tokenised = iter(ptb_tokenize_many([r for i in ids for r in references[i]]))
    refs = {i: [next(tokenised).split() for _ in references[i]] for i in ids}
    classes = [frozenset(words) for words in CLASSES.values()]
    table = np.array([[image_counts(caption.split(), refs[i], words, agree) for words in classes]
                      for i, caption in zip(ids, tokens)], dtype=np.int64)
    return ids, table


def _rates(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., classes, 4) summed counts -> precision and recall (..., classes); nan where nothing to divide."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[..., 1] / sums[..., 0], sums[..., 3] / sums[..., 2]


def run_classes(captions: dict[str, str], references: dict[str, list[str]], agree: int = 2) -> dict:
    """The numbers of one run: captions and references by image id, raw text."""
    return table_classes(image_table(captions, references, agree)[1])


def table_classes(table: np.ndarray) -> dict:
    """Per class: words used, precision and recall (None where there is nothing to divide)."""
    sums = table.sum(0)
    precision, recall = _rates(sums)
    return {name: {"used": int(sums[c, 0]),
                   "precision": None if np.isnan(precision[c]) else float(precision[c]),
                   "recall": None if np.isnan(recall[c]) else float(recall[c])}
            for c, name in enumerate(CLASSES)}


def paired_bootstrap(a: list[np.ndarray], b: list[np.ndarray], samples: int = 2000, seed: int = 0) -> dict:
    """Arm a minus arm b (each a list of its seeds' `image_table`s over the same images): per class, the
    observed difference of the seed-mean precision and recall, its 95% percentile interval over
    bootstrap draws of the test images (one draw for both arms and all their seeds), and the share of
    draws in which a >= b."""
    images = a[0].shape[0]
    if any(t.shape != a[0].shape for t in a + b):
        raise ValueError("the runs compared must caption the same test images")
    draws = np.random.default_rng(seed).integers(0, images, size=(samples, images))
    weights = np.zeros((samples, images))
    np.add.at(weights, (np.arange(samples)[:, None], draws), 1.0)

    def arm(tables: list[np.ndarray], w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rates = [_rates(np.einsum("si,ick->sck", w, t.astype(float))) for t in tables]
        return np.mean([r[0] for r in rates], 0), np.mean([r[1] for r in rates], 0)

    observed = [x - y for x, y in zip(arm(a, np.ones((1, images))), arm(b, np.ones((1, images))))]
    sampled = [x - y for x, y in zip(arm(a, weights), arm(b, weights))]
    result = {}
    for c, name in enumerate(CLASSES):
        result[name] = {}
        for key, obs, draw in zip(("precision", "recall"), observed, sampled):
            values = draw[:, c][~np.isnan(draw[:, c])]
            if np.isnan(obs[0, c]) or not values.size:  # a class neither arm's captions (or references) hold
                result[name][key] = None
                continue
            result[name][key] = {"difference": float(obs[0, c]),
                                 "low": float(np.percentile(values, 2.5)), "high": float(np.percentile(values, 97.5)),
                                 "a_at_least_b": float(np.mean(values >= 0))}
    return result


def reference_captions(root: Path) -> dict[str, list[str]]:
    return {record.image_id: list(record.captions) for record in read_flickr8k(root).splits["test"]}


def read_captions(run: Path) -> dict[str, str]:
    read_run(run)  # a missing or unreadable file gets caption_diversity's message
    path = run / "test_captions.json"
    try:
        return {row["image_id"]: row["caption"] for row in json.loads(path.read_text())}
    except (TypeError, KeyError) as error:
        raise SystemExit(f"{path}: not a list of {{'image_id', 'caption'}} records ({error})") from error


def summarize(runs: list[Path], references: dict[str, list[str]], agree: int = 2,
              tables: dict[str, list[tuple[list[str], np.ndarray]]] | None = None) -> dict:
    """Each arm's runs, mean, min and max; `tables`, when given, receives each arm's `image_table`s."""
    arms: dict[str, dict] = {}
    for arm, seed, run in arm_runs(runs):
        ids, table = image_table(read_captions(run), references, agree)
        arms.setdefault(arm, {"runs": {}})["runs"][run.name] = {"seed": seed, **table_classes(table)}
        if tables is not None:
            tables.setdefault(arm, []).append((ids, table))
    for arm in arms.values():
        rows = list(arm["runs"].values())
        arm["mean"], arm["min"], arm["max"] = {}, {}, {}
        for name in CLASSES:
            for key in ("precision", "recall"):
                values = [row[name][key] for row in rows if row[name][key] is not None]
                if values:
                    arm["mean"][f"{name}_{key}"] = statistics.fmean(values)
                    arm["min"][f"{name}_{key}"] = min(values)
                    arm["max"][f"{name}_{key}"] = max(values)
    return arms


def markdown(arms: dict) -> str:
    header = "| arm | seeds | " + " | ".join(f"{name}: precision / recall" for name in CLASSES) + " |"
    lines = [header, "| --- | --- | " + " | ".join("---" for _ in CLASSES) + " |"]

    def cell(arm: dict, key: str) -> str:
        if key not in arm["mean"]:
            return "-"
        return f"{100 * arm['mean'][key]:.1f} ({100 * arm['min'][key]:.1f}..{100 * arm['max'][key]:.1f})"

    for name, arm in arms.items():
        cells = [f"{cell(arm, f'{c}_precision')} / {cell(arm, f'{c}_recall')}" for c in CLASSES]
        lines.append(f"| {name} | {len(arm['runs'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, each with test_captions.json")
    parser.add_argument("--root", type=Path, required=True, help="the Flickr8k release folder (the references)")
    parser.add_argument("--agree", type=int, default=2, help="references that must use a word for recall (of 5)")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="two arms: a paired bootstrap of A minus B over the test images")
    parser.add_argument("--samples", type=int, default=2000, help="bootstrap draws (--compare)")
    args = parser.parse_args(argv)
    if args.agree < 1:
        parser.error(f"--agree must be at least 1, got {args.agree}")
    tables: dict[str, list[tuple[list[str], np.ndarray]]] = {}
    arms = summarize(args.runs, reference_captions(args.root), args.agree, tables)
    print(markdown(arms))
    output = {"agree": args.agree, "classes": CLASSES, "arms": arms}
    if args.compare:
        a, b = args.compare
        unknown = [arm for arm in (a, b) if arm not in arms]
        if unknown:
            parser.error(f"--compare: no arm {unknown[0]!r} among the runs ({', '.join(arms)})")
        first = tables[a][0][0]
        if any(ids != first for arm in (a, b) for ids, _ in tables[arm]):
            raise SystemExit(f"--compare: the runs of {a} and {b} must caption the same test images")
        comparison = paired_bootstrap([t for _, t in tables[a]], [t for _, t in tables[b]], args.samples)
        output["comparison"] = {"a": a, "b": b, "samples": args.samples, "classes": comparison}
        print(f"\n{a} minus {b}, percentage points (95% interval over {args.samples} draws of the test images; "
              f"share of draws with {a} >= {b}):\n")
        print("| class | precision | recall |\n| --- | --- | --- |")
        for name, row in comparison.items():
            cells = ["-" if r is None else f"{100 * r['difference']:+.1f} ({100 * r['low']:+.1f}..{100 * r['high']:+.1f}; "
                     f"{100 * r['a_at_least_b']:.0f}%)" for r in (row["precision"], row["recall"])]
            print(f"| {name} | {cells[0]} | {cells[1]} |")
    if args.json:
        args.json.write_text(json.dumps(output, indent=1) + "\n")


if __name__ == "__main__":
    main()
