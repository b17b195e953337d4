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
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path

from captioner.data.ptb import ptb_tokenize_many
from captioner.data.sources import read_flickr8k
from research.caption_diversity import read_run
from research.seed_table import SEED

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


def run_classes(captions: dict[str, str], references: dict[str, list[str]], agree: int = 2) -> dict:
    """The numbers of one run: captions and references by image id, raw text."""
    missing = sorted(set(captions) - set(references))
    if missing:
        raise ValueError(f"{len(missing)} captioned images have no references (e.g. {missing[0]!r}): "
                         "not this data set's test split")
    if not captions:
        raise ValueError("no captions to measure")
    ids = sorted(captions)
    tokens = ptb_tokenize_many([captions[i] for i in ids])
    flat = [r for i in ids for r in references[i]]
    tokenised = iter(ptb_tokenize_many(flat))
    refs = {i: [next(tokenised).split() for _ in references[i]] for i in ids}
    result = {}
    for name, words in CLASSES.items():
        words = frozenset(words)
        used = supported = agreed = found = 0
        for i, caption in zip(ids, tokens):
            counts = image_counts(caption.split(), refs[i], words, agree)
            used, supported, agreed, found = (a + b for a, b in zip((used, supported, agreed, found), counts))
        result[name] = {"used": used, "precision": supported / used if used else None,
                        "recall": found / agreed if agreed else None}
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


def summarize(runs: list[Path], references: dict[str, list[str]], agree: int = 2) -> dict:
    names = collections.Counter(run.name for run in runs)
    twice = sorted(name for name, count in names.items() if count > 1)
    if twice:
        raise SystemExit(f"two run folders named {twice[0]} (e.g. from two studies): measure one study at a time")
    arms: dict[str, dict] = {}
    for run in sorted(runs):
        match = SEED.match(run.name)
        arm, seed = (match["arm"], int(match["seed"])) if match else (run.name, None)
        arms.setdefault(arm, {"runs": {}})["runs"][run.name] = {"seed": seed,
                                                               **run_classes(read_captions(run), references, agree)}
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
    args = parser.parse_args(argv)
    if args.agree < 1:
        parser.error(f"--agree must be at least 1, got {args.agree}")
    arms = summarize(args.runs, reference_captions(args.root), args.agree)
    print(markdown(arms))
    if args.json:
        args.json.write_text(json.dumps({"agree": args.agree, "classes": CLASSES, "arms": arms}, indent=1) + "\n")


if __name__ == "__main__":
    main()
