"""A whole run: train, pick the best checkpoint, export the model, score the test split."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from PIL import Image

from captioner.config import ExperimentConfig
from captioner.data.datasets import skip_summary
from captioner.evaluation import evaluate_split
from captioner.files import atomic_write, atomic_write_text, finite_for_json, json_text, write_json
from captioner.inference import caption_files
from captioner.plots import plot_learning_curves
from captioner.train import Trainer, crash_point


def format_scores(scores: dict) -> str:
    """A small aligned table of the numeric scores."""
    rows = [(key, value) for key, value in scores.items() if isinstance(value, (int, float))]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"  {key:<{width}}  {value:.4f}" if isinstance(value, float) else f"  {key:<{width}}  {value}"
                     for key, value in rows)


def run_experiment(config: ExperimentConfig, out_dir: str | Path, resume: bool = False,
                   examples: int = 0) -> dict:
    """Train under `out_dir`, export the best model to `out_dir/model`, score it on the test split
    with `config.decode`, and write `out_dir/metrics.json`. With `examples` > 0, also caption that
    many test images from PNG files (out_dir/examples), with attention pictures.

    Under torchrun every process trains and scores its share of the test split; rank 0 writes the
    files. Every process returns the metrics.

    Killed at any moment and run again with `resume`, it writes the same model and metrics.json
    (wall-clock times apart) as a run that was never stopped: training continues from the last
    checkpoint and everything after training is done again from checkpoints/best.pt. Nothing
    non-finite is exported (the Trainer's NonFiniteStateError); a NaN or infinite score is written
    to metrics.json as null and its key listed under "non_finite"."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    trainer = Trainer(config, out_dir, resume=resume)
    clock = {"setup": time.perf_counter() - start}
    mark = time.perf_counter()
    summary = trainer.train()
    clock["training"] = time.perf_counter() - mark
    clock["validation"] = summary["validation_seconds"]
    mark = time.perf_counter()
    trainer.load_best()
    model_dir = out_dir / "model"
    trainer.check_finite(model_dir / "model.safetensors", model_only=True)  # before scoring it, in every process
    model = trainer.model.eval()
    test = trainer.splits["test"]
    scores, captions = evaluate_split(model, test, config.decode, trainer.device, config.train.validation_samples,
                                      full_metrics=True, distributed=trainer.distributed)
    clock["test"] = time.perf_counter() - mark
    mark = time.perf_counter()
    if not trainer.distributed.is_main:
        clock["export"] = time.perf_counter() - mark
        return _metrics(config, scores, summary, model_dir, time.perf_counter() - start, clock)
    model.save_pretrained(model_dir, config.decode)
    atomic_write(model_dir / "training_config.yaml",
                 lambda temporary: shutil.copyfile(out_dir / "config.yaml", temporary))
    crash_point("model exported")
    # The test captions in the COCO results format, so any scorer can score them again.
    write_json(out_dir / "test_captions.json",
               [{"image_id": image_id, "caption": c.text} for image_id, c in zip(test.image_ids, captions)], indent=0)
    if summary["history"]:
        plot_learning_curves({config.estimator.name: summary["history"]}, out_dir / "learning_curves.png")
    if examples and test.raw_images is not None:
        folder = out_dir / "examples"
        folder.mkdir(exist_ok=True)
        paths = []
        for image_id, pixels in list(zip(test.image_ids, test.raw_images))[:examples]:
            path = folder / f"scene_{image_id:05d}.png"
            Image.fromarray(pixels).save(path)
            paths.append(path)
        lines = []
        for record in caption_files(model, paths, config.decode, trainer.device, attention_dir=out_dir / "attention"):
            clean, replaced = finite_for_json(record.to_json())
            lines.append(json_text({**clean, "non_finite": replaced} if replaced else clean) + "\n")
        atomic_write_text(out_dir / "captions.jsonl", "".join(lines))
    clock["export"] = time.perf_counter() - mark
    metrics = _metrics(config, scores, summary, model_dir, time.perf_counter() - start, clock)
    metrics["skipped"] = skip_summary(trainer.splits)  # what the data readers left out, by reason
    crash_point("metrics ready")
    write_json(out_dir / "metrics.json", metrics)
    crash_point("metrics.json in place")
    return metrics


def _metrics(config: ExperimentConfig, scores: dict, summary: dict, model_dir: Path, seconds: float,
             clock: dict[str, float]) -> dict:
    """The metrics.json record of a run: strict JSON, a NaN or infinite value as null with its key
    listed under "non_finite".

    `clock` is where this process's `seconds` went: "setup" (reading the data, building the model),
    "training" (the epochs: updates, validations and checkpoints), "validation" (the part of
    "training" spent validating), "test" (decoding and scoring the test split) and "export" (the
    model, captions and pictures). A resumed run counts only what this process did; its
    train_seconds, like its log, go on from the checkpoint."""
    metrics, replaced = finite_for_json({
        "dataset": config.data.dataset,
        "split": "test",
        "estimator": config.estimator.name,
        "beam_size": config.decode.beam_size,
        "attention_mode": config.decode.attention_mode,
        **scores,
        "wall_seconds": seconds,
        "train_seconds": summary["train_seconds"],
        "time_seconds": clock,
        "steps": summary["step"],
        "epochs": summary["epoch"],
        "best_val_bleu_4": summary["best_val_bleu_4"],
        "best_step": summary["best_step"],
        "skipped_updates": summary["skipped_updates"],
        "warnings": summary["warnings"],
        "validation": summary["history"],
        "config": dataclasses.asdict(config),
        "model_dir": str(model_dir),
    })
    if replaced:
        metrics["non_finite"] = replaced
    return metrics

