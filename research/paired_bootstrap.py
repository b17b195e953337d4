"""Is one arm's test score really above another's? A paired bootstrap over the test images.

    python -m research.paired_bootstrap \\
        --a eval/flickr8k/attention-study/lite2-ema-sgf/runs/k40qema-s? \\
        --b eval/flickr8k/attention-study/lite2-ema-sgf/runs/softema-s? \\
        --root ../shared/data/flickr8k --json eval/flickr8k/attention-study/lite2-ema-sgf/bootstrap-k40qema-softema.json

Each arm is one or more `captioner train` run folders (its seeds), each with `test_captions.json`. An arm's
score is the mean over its seeds of the coco-caption corpus score: BLEU-4 from the summed n-gram
statistics of pycocoevalcap's BleuScorer ('closest' reference length, its smoothing constants) and
CIDEr-D as the mean of its per-image scores (document frequencies from the whole split's references,
as when the split is scored once). One bootstrap sample draws the test images with replacement, the same
draw for both arms and all their seeds, and recomputes both arms' scores on it. The output is the observed
difference a - b, its 95% percentile interval and the share of samples in which a >= b, per metric.

What it measures: how much a difference could move if the test images were another draw of the same
size. It says nothing about seed-to-seed spread beyond averaging the seeds given (the seed ranges are in
research/seed_table.py's tables). Before it samples, it checks that its BLEU-4 and CIDEr of every run equal
the run's own scores (scores.json or metrics.json) to 1e-6, so the statistic is the score that is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider import Cider

from captioner.data.sources import read_flickr8k
from captioner.metrics.coco import _tokenize, java_available

TINY, SMALL = 1e-15, 1e-9  # pycocoevalcap's BleuScorer smoothing constants
METRICS = ("Bleu_4", "CIDEr")


def image_statistics(captions: dict, references: dict, use_java: bool) -> tuple[list, np.ndarray, np.ndarray]:
    """Per image, in id order: BLEU's sufficient statistics [testlen, reflen (closest), guess_1..4,
    correct_1..4] (N x 10) and CIDEr-D (N)."""
    ids = sorted(captions)
    gts, res = _tokenize(ids, {i: captions[i] for i in ids}, {i: references[i] for i in ids}, use_java)
    scorer = BleuScorer(n=4)
    for key in ids:
        scorer += (res[key][0], gts[key])
    stats = np.zeros((len(ids), 10))
    for row, comps in enumerate(scorer.ctest):
        testlen = comps["testlen"]
        reflen = min((abs(length - testlen), length) for length in comps["reflen"])[1]
        stats[row] = [testlen, reflen, *comps["guess"], *comps["correct"]]
    with contextlib.redirect_stdout(io.StringIO()):
        _, cider = Cider().compute_score({k: gts[k] for k in ids}, {k: res[k] for k in ids})
    return ids, stats, np.asarray(cider, dtype=float)


def bleu4_from_sums(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 from summed statistics (... x 10), exactly as BleuScorer.compute_score('closest')."""
    testlen, reflen = sums[..., 0], sums[..., 1]
    log_precision = sum(np.log((sums[..., 6 + k] + TINY) / (sums[..., 2 + k] + SMALL)) for k in range(4))
    bleu = np.exp(log_precision / 4.0)
    ratio = (testlen + TINY) / (reflen + SMALL)
    return np.where(ratio < 1, bleu * np.exp(1 - 1 / np.maximum(ratio, TINY)), bleu)


def _reported(run: Path) -> dict:
    for name in ("scores.json", "metrics.json"):
        path = run / name
        if path.is_file():
            data = json.loads(path.read_text())
            return data.get("corpus", data)
    raise SystemExit(f"{run}: no scores.json or metrics.json to check the recomputed scores against")


def load_arm(runs: list[Path], references: dict, use_java: bool) -> tuple[list, np.ndarray, np.ndarray]:
    """Every seed of one arm on the same images: ids, BLEU statistics (S x N x 10) and CIDEr (S x N)."""
    all_stats, all_cider, ids = [], [], None
    for run in runs:
        path = run / "test_captions.json"
        if not path.is_file():
            raise SystemExit(f"{path}: missing (each run folder needs its test captions)")
        try:
            captions = {c["image_id"]: c["caption"] for c in json.loads(path.read_text())}
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise SystemExit(f"{path}: not a list of {{image_id, caption}} records ({error})") from error
        unknown = sorted(set(captions) - set(references))
        if unknown:
            raise SystemExit(f"{path}: image ids not in the split's references, e.g. {unknown[:3]}")
        run_ids, stats, cider = image_statistics(captions, references, use_java)
        if ids is not None and run_ids != ids:
            raise SystemExit(f"{path}: captions a different set of images than {runs[0] / 'test_captions.json'}")
        ids = run_ids
        reported = _reported(run)
        mine = {"Bleu_4": float(bleu4_from_sums(stats.sum(axis=0))), "CIDEr": float(cider.mean())}
        for key, value in mine.items():
            if key in reported and abs(reported[key] - value) > 1e-6:
                raise SystemExit(f"{run}: recomputed {key} {value:.8f} != the run's {reported[key]:.8f}")
        all_stats.append(stats)
        all_cider.append(cider)
    return ids, np.stack(all_stats), np.stack(all_cider)


def arm_scores(stats: np.ndarray, cider: np.ndarray, draws: np.ndarray | None) -> dict[str, np.ndarray]:
    """Seed-mean BLEU-4 and CIDEr, on the whole split (draws None) or per bootstrap draw (B x N indices)."""
    if draws is None:
        return {"Bleu_4": bleu4_from_sums(stats.sum(axis=1)).mean(), "CIDEr": cider.mean()}
    bleu = np.stack([bleu4_from_sums(seed[draws].sum(axis=1)) for seed in stats]).mean(axis=0)
    return {"Bleu_4": bleu, "CIDEr": np.stack([seed[draws].mean(axis=1) for seed in cider]).mean(axis=0)}


def paired_bootstrap(a: tuple, b: tuple, samples: int = 10000, seed: int = 0, chunk: int = 500) -> dict:
    """a, b: (ids, stats, cider) of two arms on the same images. Returns per metric the observed
    difference a - b, its 95% percentile interval and the share of draws with a >= b."""
    if a[0] != b[0]:
        raise ValueError("the two arms caption different sets of images")
    n = len(a[0])
    rng = np.random.default_rng(seed)
    diffs = {key: [] for key in METRICS}
    for start in range(0, samples, chunk):
        draws = rng.integers(0, n, size=(min(chunk, samples - start), n))
        sa, sb = arm_scores(a[1], a[2], draws), arm_scores(b[1], b[2], draws)
        for key in METRICS:
            diffs[key].append(sa[key] - sb[key])
    observed_a, observed_b = arm_scores(a[1], a[2], None), arm_scores(b[1], b[2], None)
    out = {}
    for key in METRICS:
        d = np.concatenate(diffs[key])
        low, high = np.percentile(d, [2.5, 97.5])
        out[key] = {"a": float(observed_a[key]), "b": float(observed_b[key]),
                    "difference": float(observed_a[key] - observed_b[key]),
                    "interval_95": [float(low), float(high)], "share_a_at_least_b": float(np.mean(d >= 0))}
        if not all(math.isfinite(v) for v in (out[key]["a"], out[key]["b"], low, high)):
            raise ValueError(f"{key}: a non-finite score")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", nargs="+", type=Path, required=True, help="run folders of arm a (its seeds)")
    parser.add_argument("--b", nargs="+", type=Path, required=True, help="run folders of arm b (its seeds)")
    parser.add_argument("--root", type=Path, default=Path("../shared/data/flickr8k"), help="the Flickr8k release folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", choices=("auto", "java", "python"), default="auto",
                        help="PTB tokenizer: Java where present (auto), or the exact Python port")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    if args.samples < 1:
        parser.error("--samples must be positive")
    if args.tokenizer == "java" and not java_available():
        parser.error("--tokenizer java needs a java executable on PATH")
    use_java = args.tokenizer == "java" or (args.tokenizer == "auto" and java_available())
    splits = read_flickr8k(args.root).splits
    if args.split not in splits:
        parser.error(f"--split {args.split}: {args.root} has splits {sorted(splits)}")
    references = {r.image_id: list(r.captions) for r in splits[args.split]}
    arm_a, arm_b = load_arm(args.a, references, use_java), load_arm(args.b, references, use_java)
    result = paired_bootstrap(arm_a, arm_b, args.samples, args.seed)
    for key, row in result.items():
        low, high = row["interval_95"]
        print(f"{key}: a {100 * row['a']:.2f}  b {100 * row['b']:.2f}  a - b {100 * row['difference']:+.2f} "
              f"(95%: {100 * low:+.2f} .. {100 * high:+.2f}); a >= b in {100 * row['share_a_at_least_b']:.1f}% of draws")
    if args.json:
        record = {"a": [str(p) for p in args.a], "b": [str(p) for p in args.b], "split": args.split,
                  "images": len(arm_a[0]), "samples": args.samples, "seed": args.seed,
                  "tokenizer": "java" if use_java else "python", "metrics": result}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
