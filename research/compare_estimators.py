#!/usr/bin/env python3
"""Run the demo with WS-RAM, VAR and soft attention on the same budget and compare them.

    python -m research.compare_estimators --out eval/scenes [--set key=value ...] [--estimators wsram var soft]

Each estimator trains in OUT/<estimator>/ exactly as `captioner demo --estimator <estimator>` would
(a run whose metrics.json exists is kept, so an interrupted comparison resumes). Then writes
OUT/summary.json, OUT/summary.md (a table with the per-epoch validation bound L_K, BLEU-4 and
attention accuracy) and OUT/learning_curves.png. Large folders (checkpoints, model weights) are
left in OUT/<estimator>/ for inspection; eval/ keeps only the small files (see .gitignore).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from captioner.config import config_for_estimator, load_config
from captioner.experiment import run_experiment
from captioner.plots import plot_learning_curves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--estimators", nargs="+", default=["wsram", "var", "soft"], choices=["wsram", "var", "vimco", "soft"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    results = {}
    for name in args.estimators:
        folder = args.out / name
        if (folder / "metrics.json").is_file():
            results[name] = json.loads((folder / "metrics.json").read_text())
            print(f"{name}: kept the finished run in {folder}", file=sys.stderr)
            continue
        config = load_config(base=config_for_estimator(name), overrides=args.overrides + [
            f"train.device={args.device}", "train.progress_bar=false"])
        print(f"{name}: training in {folder}", file=sys.stderr)
        results[name] = run_experiment(config, folder, examples=4)
    plot_learning_curves({name: r["validation"] for name, r in results.items()}, args.out / "learning_curves.png")
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device}
    summary = {name: {k: r[k] for k in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "attention_accuracy", "bound_prior",
                                        "wall_seconds", "train_seconds", "steps", "epochs")}
               for name, r in results.items()}
    (args.out / "summary.json").write_text(json.dumps({"machine": machine, "overrides": args.overrides,
                                                       "results": summary}, indent=2))
    lines = ["| estimator | test BLEU-1 | BLEU-4 | attention accuracy | test L_K (prior, K=10) | train s | wall s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in summary.items():
        lines.append(f"| {name} | {r['Bleu_1']:.3f} | {r['Bleu_4']:.3f} | {r['attention_accuracy']:.3f} | "
                     f"{r['bound_prior']:.2f} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |")
    lines += ["", "Validation after each epoch (L_K per caption in nats / BLEU-4 greedy / attention accuracy):", "",
              "| epoch | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    epochs = max(len(r["validation"]) for r in results.values())
    for e in range(epochs):
        cells = []
        for r in results.values():
            v = r["validation"][e] if e < len(r["validation"]) else None
            cells.append("" if v is None else
                         f"{v['bound_prior']:.2f} / {v['Bleu_4']:.3f} / {v['attention_accuracy']:.3f}")
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
