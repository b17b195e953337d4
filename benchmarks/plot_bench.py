"""One figure of the recorded speed measurements under eval/bench/ (throughput, epochs, scaling).

    python -m benchmarks.plot_bench eval/bench [--out eval/bench/speed.png]

Reads the JSON files that benchmarks/bench_train.py and benchmarks/bench_epoch.py
wrote there (h200-triton/results.json, epochs/epoch-*.json, scaling/{one-gpu,two-gpus}/results.json,
scaling/epoch-wsram-*.json) and draws three panels: caption-samples per second of one update per
variant and shape; seconds of one Flickr8k epoch of the real Trainer per estimator; one GPU against two.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captioner.plots import save_figure


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def plot(root: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    bench = _load(root / "h200-triton" / "results.json")
    rows = [r for r in bench["results"] if "error" not in r]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    width = 0.8 / len(shapes)
    axis = axes[0]
    for j, shape in enumerate(shapes):
        values = [next((r["caption_samples_per_second"] for r in rows if r["shape"] == shape and r["variant"] == v), 0)
                  for v in variants]
        bars = axis.bar([i + j * width for i in range(len(variants))], [v / 1000 for v in values], width, label=shape)
        axis.bar_label(bars, [f"{v / 1000:.0f}k" for v in values], fontsize=7)
    axis.axhline(100, color="grey", linestyle="--", linewidth=1)
    axis.text(len(variants) - 0.5, 102, "target, COCO shapes", ha="right", fontsize=8, color="grey")
    axis.set_xticks([i + width * (len(shapes) - 1) / 2 for i in range(len(variants))], variants, rotation=20,
                    fontsize=8)
    axis.set_ylabel("caption-samples / s (thousands)")
    axis.set_title(f"one update, {bench['device']}", fontsize=10)
    axis.legend(fontsize=8)

    axis = axes[1]
    epochs = []
    for name, label in [("wsram", "WS-RAM K=5\n(Triton)"), ("wsram-inductor", "WS-RAM K=5\n(inductor)"),
                        ("var", "VAR"), ("soft", "soft")]:
        path = root / "epochs" / f"epoch-{name}.json"
        if path.is_file():
            epochs.append((label, _load(path)["mean_epoch_seconds_after_first"]))
    bars = axis.bar([label for label, _ in epochs], [seconds for _, seconds in epochs], color="tab:green")
    axis.bar_label(bars, [f"{seconds:.1f} s" for _, seconds in epochs], fontsize=8)
    axis.axhline(1.5, color="grey", linestyle="--", linewidth=1)
    axis.text(-0.4, 1.7, "target 1.5 s", ha="left", fontsize=8, color="grey")
    axis.set_ylabel("seconds per Flickr8k epoch (wall, synchronised)")
    axis.set_title("real Trainer, 30,000 captions (x5 samples for WS-RAM), bucketing on", fontsize=10)
    axis.tick_params(axis="x", labelsize=8)

    axis = axes[2]
    one = _load(root / "scaling" / "one-gpu" / "results.json")["results"]
    two = _load(root / "scaling" / "two-gpus" / "results.json")["results"]
    labels, ratios = [], []
    for r1 in one:
        r2 = next(r for r in two if r["shape"] == r1["shape"] and r["variant"] == r1["variant"])
        labels.append(f"{r1['shape']}\n{r1['variant']}")
        ratios.append(r2["caption_samples_per_second"] / r1["caption_samples_per_second"])
    trainer_one = _load(root / "scaling" / "epoch-wsram-one-gpu.json")["mean_epoch_seconds_after_first"]
    trainer_two = _load(root / "scaling" / "epoch-wsram-two-gpus.json")["mean_epoch_seconds_after_first"]
    labels.append("Trainer epoch\nFlickr8k WS-RAM\n(same batch)")
    ratios.append(trainer_one / trainer_two)
    bars = axis.bar(labels, ratios, color="tab:purple")
    axis.bar_label(bars, [f"{r:.2f}x" for r in ratios], fontsize=8)
    axis.axhline(1.8, color="grey", linestyle="--", linewidth=1)
    axis.text(len(labels) - 0.5, 1.85, "target 1.8x", ha="right", fontsize=8, color="grey")
    axis.set_ylabel("two GPUs / one GPU throughput")
    axis.set_title("torchrun + DDP, 2 x H200 of one host", fontsize=10)
    axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    return save_figure(figure, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    print(f"wrote {plot(args.root, args.out or args.root / 'speed.png')}")


if __name__ == "__main__":
    main()
