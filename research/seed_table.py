"""One table of test scores and attention diagnostics over seeds, from `captioner train` run folders.

    python -m research.seed_table eval/flickr8k/attention-study/lite2/runs/* \\
        --json eval/flickr8k/attention-study/lite2/table.json > TABLE.md

Runs are grouped into arms by their folder name without the trailing `-sN` (seed N). For each run:
test BLEU-4, CIDEr and METEOR (METEOR and the other scores from `scores.json`, the Java scoring of
`research.score_flickr8k_runs`, where it is there; else BLEU and CIDEr from `metrics.json` and no
METEOR), the decoding of the test scores, where the prior's argmax and marginal glimpse look over the
test images of `spread-argmax.json` / `spread-marginal.json` (`research.attention_spread`), and from the
training log: log q - log pi at the last update and its mean over the last epoch, the prior's entropy and
ESS/K at the last update. Each arm then gets a row of means with the range (min..max) over its seeds.
Prints a markdown table; --json writes every number.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

SEED = re.compile(r"^(?P<arm>.+)-s(?P<seed>\d+)$")


def _train_rows(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            row = json.loads(line)
            if row.get("type") == "train":
                rows.append(row)
    return rows


def _spread(run: Path, mode: str) -> dict | None:
    path = run / f"spread-{mode}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {"distinct_cells": data["mean_distinct_locations_per_caption"],
            "captions_on_one_cell": data["captions_with_one_location"],
            "words_at_modal_cell": data["mean_share_of_words_at_the_modal_location"],
            "images": data.get("images")}


def summarize_run(run: Path) -> dict:
    """Every number of one run folder that the table shows."""
    metrics = json.loads((run / "metrics.json").read_text())
    scores_path = run / "scores.json"
    if scores_path.is_file():
        scores = dict(json.loads(scores_path.read_text())["corpus"])
        source = "scores.json"
    else:
        scores = {key: metrics[key] for key in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr") if key in metrics}
        source = "metrics.json"
    out = {"run": run.name, "scores": scores, "scores_from": source, "beam_size": metrics.get("beam_size"),
           "attention_mode": metrics.get("attention_mode"), "best_step": metrics.get("best_step"),
           "steps": metrics.get("steps"), "train_seconds": metrics.get("train_seconds"),
           "wall_seconds": metrics.get("wall_seconds"), "time_seconds": metrics.get("time_seconds"),
           "spread": {mode: _spread(run, mode) for mode in ("argmax", "marginal")}}
    rows = _train_rows(run)
    if rows and "log_q_minus_log_prior" in rows[-1]:
        last_epoch = [r for r in rows if r.get("epoch") == rows[-1].get("epoch") and "log_q_minus_log_prior" in r]
        out["log_q_minus_log_prior"] = {
            "last_update": rows[-1]["log_q_minus_log_prior"],
            "last_epoch_mean": statistics.fmean(r["log_q_minus_log_prior"] for r in last_epoch),
            "max": max(r["log_q_minus_log_prior"] for r in rows if "log_q_minus_log_prior" in r)}
        out["prior_entropy"] = rows[-1].get("prior_entropy")
        out["ess_per_k"] = rows[-1].get("ess_per_k")
    return out


def _mean_range(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: list[Path]) -> dict:
    arms: dict[str, list[dict]] = {}
    for run in sorted(runs):
        if not (run / "metrics.json").is_file():
            continue
        match = SEED.match(run.name)
        arm = match["arm"] if match else run.name
        arms.setdefault(arm, []).append(summarize_run(run))
    table = {}
    for arm, items in arms.items():
        def values(get):
            out = []
            for item in items:
                try:
                    out.append(get(item))
                except (KeyError, TypeError):
                    out.append(None)
            return out
        table[arm] = {
            "runs": items,
            "Bleu_4": _mean_range(values(lambda r: r["scores"]["Bleu_4"])),
            "CIDEr": _mean_range(values(lambda r: r["scores"]["CIDEr"])),
            "METEOR": _mean_range(values(lambda r: r["scores"]["METEOR"])),
            "distinct_cells_argmax": _mean_range(values(lambda r: r["spread"]["argmax"]["distinct_cells"])),
            "distinct_cells_marginal": _mean_range(values(lambda r: r["spread"]["marginal"]["distinct_cells"])),
            "captions_on_one_cell_argmax": _mean_range(
                values(lambda r: r["spread"]["argmax"]["captions_on_one_cell"])),
            "log_q_minus_log_prior_last": _mean_range(values(lambda r: r["log_q_minus_log_prior"]["last_update"])),
        }
    return table


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(table: dict) -> str:
    head = ("| arm | seed | decoding | BLEU-4 | CIDEr | METEOR | cells per caption, argmax / marginal | "
            "captions on one cell, argmax | log q - log pi, last update (last-epoch mean) | prior entropy | ESS/K |")
    lines = [head, "| " + " | ".join(["---"] * 11) + " |"]
    for arm, data in table.items():
        for run in data["runs"]:
            match = SEED.match(run["run"])
            seed = match["seed"] if match else "-"
            spread_a, spread_m = run["spread"]["argmax"], run["spread"]["marginal"]
            lq = run.get("log_q_minus_log_prior")
            lines.append("| " + " | ".join([
                arm, seed, f"beam {run['beam_size']}, {run['attention_mode']}",
                _pct(run["scores"].get("Bleu_4")), _pct(run["scores"].get("CIDEr")), _pct(run["scores"].get("METEOR")),
                (f"{_num(spread_a['distinct_cells'])} / {_num(spread_m['distinct_cells']) if spread_m else '-'}"
                 if spread_a else "-"),
                f"{_pct(spread_a['captions_on_one_cell'])}%" if spread_a else "-",
                f"{lq['last_update']:.2f} ({lq['last_epoch_mean']:.2f})" if lq else "-",
                _num(run.get("prior_entropy")), _num(run.get("ess_per_k"))]) + " |")

        def mr(key, scale=100.0, digits=1):
            value = data[key]
            if value is None:
                return "-"
            return (f"**{scale * value['mean']:.{digits}f}** ({scale * value['min']:.{digits}f}.."
                    f"{scale * value['max']:.{digits}f})")
        cells = data["distinct_cells_argmax"]
        lines.append("| " + " | ".join([
            f"{arm}: mean (range)", f"{len(data['runs'])} seeds", "", mr("Bleu_4"), mr("CIDEr"), mr("METEOR"),
            mr("distinct_cells_argmax", 1.0, 2) if cells else "-", "",
            mr("log_q_minus_log_prior_last", 1.0, 2) if data["log_q_minus_log_prior_last"] else "-", "", ""]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    table = summarize(args.runs)
    if not table:
        parser.error("no run folder with a metrics.json among the arguments")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    print(markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
