#!/usr/bin/env python3
"""Train the demo configuration over several seeds and estimators, in parallel processes, and
summarise how often and how well each one trains.

    python -m research.seed_study --out runs/seeds --device cuda --jobs 16 \\
        --arm wsram:0-5 --arm var:0-2 --arm soft:0-2 --arm wsram-sleep:0-2=estimator.sleep_update=true

An arm is NAME:SEEDS[=OVERRIDE[,OVERRIDE...]]; NAME starts with the estimator (wsram, var or soft);
SEEDS is a range a-b or a list a,b,c. Each run is `captioner train` with train.seed set, in
OUT/NAME-sSEED/; finished runs (with metrics.json) are kept. Writes OUT/summary.json and prints a
table: per arm, the mean and spread of test BLEU-4, attention accuracy and the test bound, and the
wall time of each run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def parse_arm(text: str) -> tuple[str, list[int], list[str]]:
    head, _, overrides = text.partition("=")
    name, _, seeds = head.partition(":")
    if "-" in seeds:
        low, high = seeds.split("-")
        seed_list = list(range(int(low), int(high) + 1))
    else:
        seed_list = [int(s) for s in seeds.split(",") if s]
    extra = overrides.split(",") if overrides else []
    if name.split("-")[0] not in ("wsram", "var", "vimco", "soft") or not seed_list:
        raise SystemExit(f"--arm {text!r}: expected NAME:SEEDS[=OVERRIDES], NAME starting with wsram, var, vimco or soft")
    return name, seed_list, extra


def run(name: str, seed: int, extra: list[str], out: Path, device: str, common: list[str]) -> dict:
    folder = out / f"{name}-s{seed}"
    if not (folder / "metrics.json").is_file():
        command = [sys.executable, "-m", "captioner.cli", "train", "--out", str(folder), "--quiet",
                   "--estimator", name.split("-")[0], "--device", device, "--set", f"train.seed={seed}"]
        for override in common + extra:
            command += ["--set", override]
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(folder / "stdout.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        if code != 0:
            return {"arm": name, "seed": seed, "error": f"exit {code}, see {folder}/stdout.log",
                    "seconds": time.perf_counter() - start}
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"arm": name, "seed": seed, **{k: metrics[k] for k in ("Bleu_1", "Bleu_4", "attention_accuracy",
                                                                   "bound_prior", "wall_seconds", "train_seconds")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arm", action="append", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every run")
    args = parser.parse_args(argv)
    arms = [parse_arm(a) for a in args.arm]
    tasks = [(name, seed, extra) for name, seeds, extra in arms for seed in seeds]
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda t: run(*t, args.out, args.device, args.overrides), tasks))
    summary = {"device": args.device, "overrides": args.overrides, "arms": {}, "runs": results}
    print(f"{'arm':<16} {'seeds':>5} {'BLEU-4 mean (min..max)':>26} {'attention acc mean (min..max)':>32} "
          f"{'bound':>8} {'wall s':>8}")
    for name, _, extra in arms:
        done = [r for r in results if r["arm"] == name and "error" not in r]
        failed = [r for r in results if r["arm"] == name and "error" in r]
        if not done:
            print(f"{name:<16} all runs failed: {[r['error'] for r in failed]}")
            continue
        stats = {}
        for key in ("Bleu_4", "attention_accuracy", "bound_prior", "wall_seconds"):
            values = [r[key] for r in done]
            stats[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "values": values}
        summary["arms"][name] = {"overrides": extra, "runs": len(done), "failed": len(failed), **stats}
        b, a = stats["Bleu_4"], stats["attention_accuracy"]
        print(f"{name:<16} {len(done):>5} {b['mean']:>8.3f} ({b['min']:.3f}..{b['max']:.3f})     "
              f"{a['mean']:>10.3f} ({a['min']:.3f}..{a['max']:.3f})      {stats['bound_prior']['mean']:>8.2f} "
              f"{stats['wall_seconds']['mean']:>8.0f}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
