#!/usr/bin/env python3
"""Does WS-RAM train faster than REINFORCE? Run an efficiency study (issue 8) and draw its figures.

    python -m research.efficiency_study eval/efficiency/flickr8k.yaml --out eval/efficiency/flickr8k [--device cuda]
    python -m research.efficiency_study eval/efficiency/scenes-smoke.yaml --out runs/study-smoke   (CPU, minutes)

The study file names the shared config, the arms (estimator, seeds, overrides) and the measurement
settings; captioner/study.py documents the format and every file written under --out. Re-running
the same command resumes an interrupted study: finished runs are kept, an unfinished one continues
from its last checkpoint. `--max-runs N` stops after N new runs (to spread a grid over several
sessions); `--summarise` only rewrites summary.json and the figures from the runs already there.
Where the runs shared a GPU, `--timing FILE` (each estimator's seconds per update alone on it, from
benchmarks/time_training.py) adds clocks at those costs: summary.json's alone_seconds and
bound_vs_alone_seconds.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from research.study import load_study, load_timing, run_names, run_study, summarise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="study YAML")
    parser.add_argument("--out", required=True, help="folder for the runs, summary and figures")
    parser.add_argument("--device", help="train.device for every run (default: the config's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every run (after the study's own)")
    parser.add_argument("--max-runs", type=int, help="train at most this many unfinished runs in this call")
    parser.add_argument("--only", nargs="+", metavar="ARM-sSEED",
                        help="train only these runs (e.g. wsram-s0 var-s1), as parallel workers on one --out do")
    parser.add_argument("--no-summary", action="store_true",
                        help="train only: write no summary or figures (several workers sharing --out)")
    parser.add_argument("--save-models", action="store_true",
                        help="also export each finished run's best model to runs/ARM-sSEED/model")
    parser.add_argument("--list", action="store_true", help="print the study's run names, one a line, and exit")
    parser.add_argument("--summarise", action="store_true", help="only summarise the runs already under --out")
    parser.add_argument("--timing", metavar="JSONL",
                        help="seconds per update of each estimator alone on the GPU (benchmarks/time_training.py "
                             "output): also gives every clock as updates x that cost, for runs that shared a GPU")
    args = parser.parse_args()
    study = load_study(args.study)
    study.overrides += args.set + ([f"train.device={args.device}"] if args.device else [])
    study.save_models = study.save_models or args.save_models
    if args.list:
        print("\n".join(run_names(study)))
        return
    timing = load_timing(args.timing) if args.timing else None
    if args.summarise:
        from research.study_plots import plot_study

        summary = summarise(study, Path(args.out), timing)
        (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))
        plot_study(study, Path(args.out), summary)
    else:
        summary = run_study(study, args.out, args.max_runs, only=args.only, write_summary=not args.no_summary,
                            timing=timing)
        if summary is None:
            return
    for name, arm in summary["arms"].items():
        print(f"{name:24} seeds {arm['finished']}/{arm['seeds']}  test BLEU-4 {arm['test_bleu_4']}  "
              f"best dev L_K {arm['best_dev_bound_prior']}  GPU s {arm['gpu_seconds']}")
    print(json.dumps(summary["targets"], indent=1))


if __name__ == "__main__":
    main()
