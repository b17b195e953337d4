"""The CUDA-graph measurements as one figure: eager against graphed, per update and per epoch.

    python -m benchmarks.plot_graphs eval/bench/graphs [--out eval/bench/graphs/graphs.png]

Reads what benchmarks/bench_train.py (bench_train.json: variants ESTIMATOR and ESTIMATOR-graphed,
with wsram-fast as WS-RAM's eager row) and benchmarks/bench_epoch.py (epochs/epoch-E-graphs-{true,false}.json)
wrote there, and draws milliseconds per update by shape and estimator, and seconds per Flickr8k
epoch of the real Trainer by estimator.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captioner.plots import save_figure

EAGER = {"wsram": "wsram-fast", "var": "var", "soft": "soft"}


def plot(root: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    rows = [r for r in json.loads((root / "bench_train.json").read_text())["results"] if "error" not in r]
    labels, eager, graphed = [], [], []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for estimator, eager_variant in EAGER.items():
            find = {r["variant"]: r for r in rows if r["shape"] == shape}
            if eager_variant in find:
                labels.append(f"{shape}\n{estimator}")
                eager.append(1000 * find[eager_variant]["seconds_per_update"])
                g = find.get(f"{estimator}-graphed")
                graphed.append(1000 * g["seconds_per_update"] if g else 0.0)
    positions = range(len(labels))
    axis = axes[0]
    axis.bar([p - 0.2 for p in positions], eager, 0.4, label="eager")
    axis.bar([p + 0.2 for p in positions], graphed, 0.4, label="CUDA graphs")
    for p, value in zip(positions, graphed):
        axis.text(p + 0.2, value, f"{value:.1f}" if value else "n/a", ha="center", va="bottom", fontsize=8)
    axis.set_xticks(list(positions), labels, fontsize=8)
    axis.set_ylabel("ms per update")
    axis.set_title("one training update (bench_train)")
    axis.legend()
    axis = axes[1]
    names, seconds = [], {True: [], False: []}
    for estimator in EAGER:
        files = {g: root / "epochs" / f"epoch-{estimator}-graphs-{str(g).lower()}.json" for g in (True, False)}
        if all(f.is_file() for f in files.values()):
            names.append(estimator)
            for g, f in files.items():
                seconds[g].append(json.loads(f.read_text())["mean_epoch_seconds_after_first"])
    positions = range(len(names))
    axis.bar([p - 0.2 for p in positions], seconds[False], 0.4, label="eager")
    axis.bar([p + 0.2 for p in positions], seconds[True], 0.4, label="CUDA graphs")
    for p, value in zip(positions, seconds[True]):
        axis.text(p + 0.2, value, f"{value:.2f} s", ha="center", va="bottom", fontsize=8)
    axis.set_xticks(list(positions), names)
    axis.set_ylabel("seconds per epoch")
    axis.set_title("one Flickr8k epoch of the Trainer (bench_epoch)")
    axis.legend()
    figure.tight_layout()
    return save_figure(figure, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    print(plot(args.root, args.out or args.root / "graphs.png"))


if __name__ == "__main__":
    main()
