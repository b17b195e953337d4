"""Kendall's tau between caption metrics and expert judgements on Flickr8k-Expert.

    python -m research.metric_validity --root ../shared/data/flickr8k --out eval/metrics/expert_kendall.json

Writes the JSON (protocol, counts, tau-b / tau-c / p-value / bootstrap interval per metric), a bar
chart beside it (same name, .png) and prints a Markdown table. The protocol is in
captioner/metrics/validity.py and in the JSON; eval/metrics/README.md reports the numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from captioner.metrics.results import write_report
from research.validity import run_validity_study

LABELS = {"Bleu_1": "BLEU-1", "Bleu_2": "BLEU-2", "Bleu_3": "BLEU-3", "Bleu_4": "BLEU-4", "METEOR": "METEOR",
          "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr-D", "sacreBLEU_sentence": "sacreBLEU (sentence)"}


def markdown_table(study: dict) -> str:
    main = study["mean_expert"]["tau"]
    published = study.get("published_protocol", {}).get("tau", {})
    rows = ["| metric | tau-b (mean expert) | 95% interval | tau-c | z | published protocol tau-c | tau-b |",
            "|---|---|---|---|---|---|---|"]
    for key, result in main.items():
        interval = result.get("tau_b_95ci")
        ci = f"{interval['low']:.3f} - {interval['high']:.3f}" if interval and interval.get("low") is not None else "-"
        pub = published.get(key)
        pub_c = f"{pub['tau_c']:.3f}" if pub else "-"
        pub_b = f"{pub['tau_b']:.3f}" if pub else "-"
        rows.append(f"| {LABELS.get(key, key)} | {result['tau_b']:.3f} | {ci} | {result['tau_c']:.3f} | "
                    f"{result['z']:.1f} | {pub_c} | {pub_b} |")
    return "\n".join(rows)


def bar_chart(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = study["mean_expert"]["tau"]
    published = study.get("published_protocol", {}).get("tau", {})
    keys = list(main)
    taus = [main[k]["tau_b"] for k in keys]
    errors = None
    if all(main[k].get("tau_b_95ci", {}).get("low") is not None for k in keys):
        errors = [[t - main[k]["tau_b_95ci"]["low"] for t, k in zip(taus, keys)],
                  [main[k]["tau_b_95ci"]["high"] - t for t, k in zip(taus, keys)]]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    positions = range(len(keys))
    ax.bar(positions, taus, yerr=errors, capsize=3, color="#4c72b0",
           label="tau-b vs mean expert score (95% image-bootstrap interval)")
    if published:
        ax.scatter([i for i, k in enumerate(keys) if k in published], [published[k]["tau_c"] for k in keys
                   if k in published], marker="D", color="#dd8452", zorder=3,
                   label="tau-c, published protocol (158 own-caption lines out, ratings separate)")
    for i, t in enumerate(taus):
        ax.text(i, 0.01, f"{t:.3f}", ha="center", va="bottom", color="white", fontsize=8)
    ax.set_xticks(list(positions), [LABELS.get(k, k) for k in keys], rotation=20, ha="right")
    ax.set_ylabel("Kendall tau")
    protocol = study["protocol"]
    ax.set_title(f"Flickr8k-Expert: metric vs expert judgement ({protocol['lines_used']} lines, "
                 f"{protocol['tokenizer']})", fontsize=10)
    ax.set_ylim(0, max(taus + [0.1]) * 1.25)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the Flickr8k release folder (Flickr8k_text/ inside)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (the chart goes beside it, .png)")
    parser.add_argument("--limit", type=int, help="use only the first N usable lines (quick checks)")
    parser.add_argument("--tokenizer", choices=("auto", "java", "python"), default="auto")
    parser.add_argument("--metrics", default="bleu,meteor,rouge,cider",
                        help="coco-caption metrics (sacreBLEU sentence BLEU is always added)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="image-level bootstrap resamples (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-comparison", action="store_true", help="skip the published-protocol rescoring")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    study = run_validity_study(args.root, limit=args.limit, tokenizer=args.tokenizer,
                               metrics=[m.strip() for m in args.metrics.split(",") if m.strip()],
                               bootstrap=args.bootstrap, seed=args.seed, comparison=not args.no_comparison)
    study["command"] = " ".join(["python", "research/metric_validity.py", *(argv if argv is not None else sys.argv[1:])])
    study["bootstrap"] = {"resamples": args.bootstrap, "seed": args.seed,
                          "unit": "judged image (all its lines together)", "interval": "95% percentile"}
    study["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_report(study, args.out)
    print(markdown_table(study))
    protocol = study["protocol"]
    skipped = sum(v["count"] for v in protocol["skipped"].values())
    print(f"\n{protocol['lines_used']} of {protocol['lines_in_file']} lines scored ({skipped} skipped), "
          f"{protocol['candidate_is_own_caption']} candidates were one of the image's own captions; "
          f"tokenizer {protocol['tokenizer']}; experts' agreement tau-b "
          f"{study['mean_expert']['experts_agreement_tau_b']['mean']:.3f}; {study['wall_seconds']} s")
    if not args.no_plot:
        png = args.out.with_suffix(".png")
        bar_chart(study, png)
        print(f"wrote {args.out} and {png}")
    else:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
