"""One picture of several arms' test scores over seeds, from research/seed_table.py's --json files.

    python -m research.plot_seed_tables eval/flickr8k/attention-study/lite2/table.json:soft,k40 \
        eval/flickr8k/attention-study/lite2-flip-k80/table.json:softflip,k40flip,k80 \
        --out eval/flickr8k/attention-study/lite2-flip-k80/scores.png

Each TABLE.json[:ARM,ARM...] adds the named arms (all of the table's arms without a list), in that order.
ARM=LABEL names an arm's bar LABEL in the picture, for two studies whose arms share a name (e.g.
`lite2-tune-ema-ft03/table.json:softtuneema=soft-ft0.3`).
One panel per metric (BLEU-4, CIDEr, METEOR; percent): a dot per seed, a bar at the mean and a line over
the range, so a reader sees at once whether two arms' seeds overlap. A metric a run lacks (METEOR
without Java) is left out of that run's panel, and a panel no run has is left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captioner.plots import plt, save_figure

METRICS = (("Bleu_4", "BLEU-4"), ("CIDEr", "CIDEr"), ("METEOR", "METEOR"))


def load_arms(specs: list[str]) -> list[tuple[str, dict[str, list[float]]]]:
    """[(arm, {metric: [percent per seed]})] in the order the specs name them."""
    arms = []
    for spec in specs:
        path, _, names = spec.partition(":")
        try:
            table = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"{path}: not a readable seed_table --json file ({error})") from None
        wanted = [name for name in names.split(",") if name] or list(table)
        for spec_name in wanted:
            name, _, label = spec_name.partition("=")
            if name not in table or not isinstance(table[name], dict) or "runs" not in table[name]:
                raise SystemExit(f"{path}: no arm {name!r} (arms: {', '.join(sorted(table))})")
            values: dict[str, list[float]] = {key: [] for key, _ in METRICS}
            for run in table[name]["runs"]:
                for key, _ in METRICS:
                    value = (run.get("scores") or {}).get(key)
                    if value is not None:
                        values[key].append(100.0 * float(value))
            arms.append((label or name, values))
    if not arms:
        raise SystemExit("no arms to plot")
    return arms


def plot(arms: list[tuple[str, dict[str, list[float]]]], out: Path, title: str | None = None) -> Path:
    metrics = [(key, label) for key, label in METRICS if any(values[key] for _, values in arms)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 0.6, 3.6), squeeze=False)
    for axis, (key, label) in zip(axes[0], metrics):
        for x, (name, values) in enumerate(arms):
            seeds = values[key]
            if not seeds:
                continue
            mean = sum(seeds) / len(seeds)
            axis.bar(x, mean, width=0.6, color="C0" if "soft" in name else "C1", alpha=0.35)
            axis.vlines(x, min(seeds), max(seeds), color="black", linewidth=1)
            axis.plot([x] * len(seeds), seeds, "o", color="black", markersize=3)
            axis.annotate(f"{mean:.1f}", (x, max(seeds)), textcoords="offset points", xytext=(0, 3),
                          ha="center", fontsize=8)
        every = [v for _, values in arms for v in values[key]]
        low, high = min(every), max(every)
        axis.set_ylim(low - 0.8 * (high - low + 0.5), high + 0.5 * (high - low + 0.5))
        axis.set_xticks(range(len(arms)), [name for name, _ in arms], rotation=30, ha="right")
        axis.set_title(f"test {label} (%)")
        axis.grid(axis="y", alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", metavar="TABLE.json[:ARM[=LABEL],ARM...]")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    print(f"wrote {plot(load_arms(args.tables), args.out, args.title)}")


if __name__ == "__main__":
    main()
