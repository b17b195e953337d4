"""Score the test captions of Flickr8k runs with coco-caption's scorers, METEOR included (needs Java).

    python -m research.score_flickr8k_runs eval/flickr8k/runs/* --root ../shared/data/flickr8k
    python -m research.score_flickr8k_runs eval/efficiency/flickr8k/runs/* --summary SUMMARY.json
    python -m research.score_flickr8k_runs RUNS/* --captions decodes/captions-b3-marginal.json --summary S.json

--captions scores another captions file of each run (a `research.decoding_study --captions-dir`
file) instead of test_captions.json; its BLEU/CIDEr are then checked against the decoding study's
row of the same setting (decodes/study.json) when that file is there, and the scores are written
beside the captions file (NAME.scores.json).

A run is a `captioner train` folder (metrics.json) or an efficiency-study run (result.json); both
hold test_captions.json.

Where there is no Java (the GPU host of the recorded runs), a run scores BLEU, ROUGE-L and CIDEr
with the pure-Python PTB tokenizer and leaves METEOR out. This script scores each run's `test_captions.json` again with the
Java PTB tokenizer and METEOR 1.5 (pycocoevalcap 1.2), checks that BLEU, ROUGE-L and CIDEr agree
with the run's own metrics.json to 1e-6, and writes `scores.json` beside it (corpus scores, per-image
scores, tokenizer, versions). It also writes a summary table of all runs to --summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captioner.data.sources import read_flickr8k
from captioner.metrics.coco import score_captions

KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/flickr8k"))
    parser.add_argument("--summary", type=Path, default=Path("eval/flickr8k/results.json"))
    parser.add_argument("--captions", default="test_captions.json",
                        help="captions file inside each run (default test_captions.json)")
    args = parser.parse_args()
    references = {r.image_id: list(r.captions) for r in read_flickr8k(args.root).splits["test"]}
    summary = {}
    for run in args.runs:
        path = run / args.captions
        if not path.is_file():
            continue
        captions = {c["image_id"]: c["caption"] for c in json.loads(path.read_text())}
        result = score_captions(captions, {i: references[i] for i in captions}, tokenizer="java")
        if (run / "metrics.json").is_file():
            metrics = json.loads((run / "metrics.json").read_text())
        else:  # an efficiency-study run: its test scores and config in result.json
            study_result = json.loads((run / "result.json").read_text())
            test = study_result["test"]
            metrics = {**test, "dataset": "flickr8k", "split": "test", "estimator": study_result["estimator"],
                       "beam_size": study_result["test_beam"], "config": study_result["config"],
                       "best_val_bleu_4": None, "train_seconds": study_result["gpu_seconds"],
                       "wall_seconds": None, "steps": study_result["steps"],
                       "epochs": study_result["config"]["train"]["epochs"]}
        reference_scores, scores_path = metrics, run / "scores.json"
        if args.captions != "test_captions.json":
            scores_path = path.with_name(path.stem + ".scores.json")
            reference_scores = {}
            study = path.parent / "study.json"
            if study.is_file():
                name = path.stem.removeprefix("captions-")
                for row in json.loads(study.read_text())["rows"]:
                    row_name = f"b{row['beam_size']}-{row['attention_mode']}" + ("-lp" if row["length_penalty"] else "") + (
                        "-tri" if row["block_trigrams"] else "")
                    if row_name == name:
                        reference_scores = row
        for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
            if key in reference_scores and abs(reference_scores[key] - result.corpus[key]) > 1e-6:
                raise SystemExit(f"{run}: {key} {reference_scores[key]} (device, Python tokenizer) != "
                                 f"{result.corpus[key]} (Java)")
        scores_path.write_text(json.dumps(result.to_dict(per_image=True), indent=1))
        config = metrics["config"]
        summary[run.name] = {
            "dataset": metrics["dataset"], "split": metrics["split"], "estimator": metrics["estimator"],
            "beam_size": metrics["beam_size"], **{k: result.corpus[k] for k in KEYS},
            "tokenizer": result.tokenizer, "best_val_bleu_4_greedy": metrics["best_val_bleu_4"],
            "bound_prior": metrics.get("bound_prior"), "bound_proposal": metrics.get("bound_proposal"),
            "train_seconds": metrics["train_seconds"], "wall_seconds": metrics["wall_seconds"],
            "steps": metrics["steps"], "epochs": metrics["epochs"],
            "layer": config["model"]["encoder"]["layer"], "hidden_dim": config["model"]["hidden_dim"],
            "seed": config["train"]["seed"],
        }
        row = summary[run.name]
        print(f"{run.name:24s} " + " ".join(f"{k}={row[k]:.4f}" for k in KEYS))
    args.summary.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.summary} and scores.json in each run")


if __name__ == "__main__":
    main()
