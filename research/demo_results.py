#!/usr/bin/env python3
"""The README's demo results table: `captioner demo` over several seeds, one table.

    python -m research.demo_results --seeds 0-3 --out runs/demo-seeds --readme README.md
    python -m research.demo_results --seeds 0-15 --out runs/demo-gpu --device cuda --jobs 16

Runs `captioner demo --out OUT/seed-S --set train.seed=S` for every seed (finished runs, those with
metrics.json, are kept), `--jobs` at a time (1 by default, so each run's wall time is its own),
then writes OUT/summary.json and OUT/table.md: one row per seed (test BLEU-1..4, attention accuracy,
test bound, wall time) and a last row with the mean and the range over the seeds, and how many
seeds reach the reliability bar (BLEU-4 >= 0.80 and attention accuracy >= 0.90). With --readme the
table replaces what stands between the lines `<!-- demo-results:start -->` and
`<!-- demo-results:end -->` of that file. --set options go to every run; --summarise only reads
runs already under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "attention_accuracy", "bound_prior", "wall_seconds")
START, END = "<!-- demo-results:start -->", "<!-- demo-results:end -->"
BAR = {"Bleu_4": 0.80, "attention_accuracy": 0.90}


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            low, high = part.split("-")
            seeds.extend(range(int(low), int(high) + 1))
        elif part:
            seeds.append(int(part))
    if not seeds:
        raise SystemExit(f"--seeds {text!r}: expected a range a-b or a list a,b,c")
    return seeds


def run_seed(seed: int, out: Path, device: str | None, overrides: list[str]) -> Path:
    folder = out / f"seed-{seed}"
    if (folder / "metrics.json").is_file():
        return folder
    command = [sys.executable, "-m", "captioner.cli", "demo", "--out", str(folder), "--quiet",
               "--set", f"train.seed={seed}"]
    if device:
        command += ["--device", device]
    for override in overrides:
        command += ["--set", override]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "stdout.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"seed {seed}: `captioner demo` exited {code}; see {folder}/stdout.log")
    return folder


def table(rows: list[dict], device: str) -> str:
    lines = ["| seed | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | attention accuracy | test L_K (prior, K = 10) | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['seed']} | {row['Bleu_1']:.3f} | {row['Bleu_2']:.3f} | {row['Bleu_3']:.3f} | "
                     f"{row['Bleu_4']:.3f} | {row['attention_accuracy']:.3f} | {row['bound_prior']:.2f} nats | "
                     f"{row['wall_seconds']:.0f} s |")

    def spread(key: str, digits: int = 3) -> str:
        values = [r[key] for r in rows]
        return f"{statistics.fmean(values):.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"

    lines.append(f"| **mean (min..max)** | {spread('Bleu_1')} | {spread('Bleu_2')} | {spread('Bleu_3')} | "
                 f"**{spread('Bleu_4')}** | **{spread('attention_accuracy')}** | {spread('bound_prior', 2)} | "
                 f"{spread('wall_seconds', 0)} |")
    passed = sum(all(r[k] >= v for k, v in BAR.items()) for r in rows)
    lines.append("")
    lines.append(f"{passed} of {len(rows)} seeds reach BLEU-4 >= {BAR['Bleu_4']:.2f} and attention accuracy >= "
                 f"{BAR['attention_accuracy']:.2f} ({device}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-3")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", help="cpu (default) or cuda")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--readme", type=Path, help="write the table into this file, between the markers")
    parser.add_argument("--summarise", action="store_true", help="only read the runs already under --out")
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarise:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(lambda s: run_seed(s, args.out, args.device, args.overrides), seeds))
    rows = []
    for seed in seeds:
        path = args.out / f"seed-{seed}" / "metrics.json"
        if not path.is_file():
            raise SystemExit(f"{path}: missing (run without --summarise first)")
        metrics = json.loads(path.read_text())
        rows.append({"seed": seed, **{k: metrics[k] for k in KEYS}, "train_seconds": metrics["train_seconds"],
                     "device": metrics["config"]["train"]["device"]})
    device = rows[0]["device"]
    text = table(rows, f"{device}, {platform.machine()}, {time.strftime('%Y-%m-%d')}")
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "summary.json").write_text(json.dumps({"seeds": seeds, "overrides": args.overrides, "bar": BAR,
                                                       "runs": rows}, indent=1))
    print(text)
    if args.readme:
        content = args.readme.read_text()
        if START not in content or END not in content:
            raise SystemExit(f"{args.readme}: no {START} ... {END} block to replace")
        head, rest = content.split(START, 1)
        _, tail = rest.split(END, 1)
        args.readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
        print(f"wrote the table into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
