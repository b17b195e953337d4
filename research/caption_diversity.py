"""How varied are a model's test captions? Length, vocabulary, repeats and novelty, over seeds.

    python -m research.caption_diversity eval/flickr8k/attention-study/lite2-tune-ema/runs/*/ \\
        --root ../shared/data/flickr8k --json eval/flickr8k/attention-study/lite2-tune-ema/diversity.json

Each run folder holds `test_captions.json` ([{"image_id", "caption"}], as `captioner train` writes it);
runs are grouped into arms by their folder name without the trailing `-sN`, as in research/seed_table.py.
Every caption is tokenised as the scores tokenise it (pycocoevalcap's PTB rules, without Java:
captioner.data.ptb). Per run:
- words per caption (mean);
- vocabulary: distinct words over all its test captions;
- distinct captions: the share of its test captions that no other test image of the run got word for word;
- most repeated: how many test images got the run's most frequent caption;
- novel (with --root): the share of its test captions that are not word for word a reference caption of
  the training split (Flickr8k, tokenised the same way).

A captioner that says the same generic sentence for many images has fewer distinct captions, a smaller
vocabulary and fewer novel captions; BLEU and CIDEr do not show that by themselves. Prints a markdown
table (each arm's mean and min..max over its seeds); --json writes every number.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path

from captioner.data.ptb import ptb_tokenize_many
from captioner.data.sources import read_flickr8k
from research.seed_table import SEED  # run folders ARM-sN, grouped into arms as the seed tables group them


def run_diversity(captions: list[str], training: set[str] | None = None) -> dict:
    """The numbers of one run from its test captions (raw text) and, optionally, the training split's
    tokenised reference captions."""
    if not captions:
        raise ValueError("no captions to measure")
    tokens = ptb_tokenize_many(captions)
    counts = collections.Counter(tokens)
    result = {
        "captions": len(tokens),
        "words_per_caption": statistics.fmean(len(t.split()) for t in tokens),
        "vocabulary": len({w for t in tokens for w in t.split()}),
        "distinct_captions": sum(1 for t in tokens if counts[t] == 1) / len(tokens),
        "most_repeated": counts.most_common(1)[0][1],
    }
    if training is not None:
        result["novel"] = sum(1 for t in tokens if t not in training) / len(tokens)
    return result


def read_run(run: Path) -> list[str]:
    path = run / "test_captions.json"
    if not path.is_file():
        raise SystemExit(f"{run}: no test_captions.json (a `captioner train` run folder writes it at the end)")
    try:
        rows = json.loads(path.read_text())
        return [row["caption"] for row in rows]
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise SystemExit(f"{path}: not a list of {{'image_id', 'caption'}} records ({error})") from error


def training_captions(root: Path) -> set[str]:
    texts = [text for record in read_flickr8k(root).splits["train"] for text in record.captions]
    return set(ptb_tokenize_many(texts))


KEYS = ("words_per_caption", "vocabulary", "distinct_captions", "most_repeated", "novel")


def arm_runs(runs: list[Path]) -> list[tuple[str, int | None, Path]]:
    """(arm, seed, folder) of each run folder in name order, ARM-sN grouped as research/seed_table.py groups
    them (a folder without -sN is an arm of its own name, seed None); two folders of one name are refused."""
    names = collections.Counter(run.name for run in runs)
    twice = sorted(name for name, count in names.items() if count > 1)
    if twice:
        raise SystemExit(f"two run folders named {twice[0]} (e.g. from two studies): measure one study at a time")
    grouped = []
    for run in sorted(runs):
        match = SEED.match(run.name)
        grouped.append((match["arm"], int(match["seed"]), run) if match else (run.name, None, run))
    return grouped


def summarize(runs: list[Path], training: set[str] | None) -> dict:
    arms: dict[str, dict] = {}
    for arm, seed, run in arm_runs(runs):
        arms.setdefault(arm, {"runs": {}})["runs"][run.name] = {"seed": seed, **run_diversity(read_run(run), training)}
    for arm in arms.values():
        rows = list(arm["runs"].values())
        arm["mean"] = {k: statistics.fmean(r[k] for r in rows) for k in KEYS if k in rows[0]}
        arm["min"] = {k: min(r[k] for r in rows) for k in arm["mean"]}
        arm["max"] = {k: max(r[k] for r in rows) for k in arm["mean"]}
    return arms


def _cell(arm: dict, key: str) -> str:
    if key not in arm["mean"]:
        return "-"
    percent = key in ("distinct_captions", "novel")
    scale, digits = (100.0, 1) if percent else (1.0, 2 if key == "words_per_caption" else 0)

    def fmt(value: float) -> str:
        return f"{value * scale:.{digits}f}" + ("%" if percent else "")

    return f"{fmt(arm['mean'][key])} ({fmt(arm['min'][key])}..{fmt(arm['max'][key])})"


def markdown(arms: dict) -> str:
    lines = ["| arm | seeds | words per caption | vocabulary | distinct captions | most repeated caption (images) | "
             "novel (not a training caption) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, arm in arms.items():
        lines.append(f"| {name} | {len(arm['runs'])} | " + " | ".join(_cell(arm, k) for k in KEYS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, each with test_captions.json")
    parser.add_argument("--root", type=Path, help="the Flickr8k release folder: adds the share of novel captions")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    training = training_captions(args.root) if args.root else None
    arms = summarize(args.runs, training)
    print(markdown(arms))
    if args.json:
        args.json.write_text(json.dumps(arms, indent=1) + "\n")


if __name__ == "__main__":
    main()
