"""The training loop: updates, per-epoch validation, atomic checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from captioner.config import ExperimentConfig, from_dict
from captioner.data.datasets import CachedFeatures, CaptionSplit, load_dataset
from captioner.data.vocabulary import Vocabulary
from captioner.estimators import ReinforceBaseline, compute_loss
from captioner.evaluation import evaluate_split
from captioner.models.captioner import CaptionModel

CHECKPOINT_VERSION = 1
# Sections that must match between a checkpoint and the config that resumes it.
_FIXED_SECTIONS = ("data", "model", "estimator")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj, path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


class Trainer:
    """Trains one model described by an ExperimentConfig, writing everything under `out_dir`:
    log.jsonl (one JSON record per log line and per validation), checkpoints/latest.pt and
    checkpoints/best.pt (best validation BLEU-4), and config.yaml."""

    def __init__(self, config: ExperimentConfig, out_dir: str | Path, resume: bool = False,
                 splits: dict[str, CaptionSplit] | None = None):
        self.config = config
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "checkpoints").mkdir(exist_ok=True)
        self.device = torch.device(config.train.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but PyTorch sees no CUDA GPU; use --device cpu")
        torch.manual_seed(config.train.seed)
        np.random.seed(config.train.seed)
        random.seed(config.train.seed)
        self.splits = splits if splits is not None else load_dataset(config.data, config.model)
        train = self.splits["train"]
        self.vocabulary = Vocabulary.build((c for caps in train.captions for c in caps), config.data.min_word_count)
        self.model = CaptionModel(config.model, self.vocabulary, config.data.image_size).to(self.device)
        self._check_feature_cache()
        self._features_to_device()
        self.optimizer = torch.optim.AdamW(
            self._parameter_groups(), lr=config.train.learning_rate, weight_decay=config.train.weight_decay,
            **({"fused": True} if self.device.type == "cuda" else {}),
        )
        self.baseline = ReinforceBaseline()
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_bleu = -math.inf
        self.history: list[dict] = []
        self.train_seconds = 0.0
        if resume:
            self.load_checkpoint(self.out_dir / "checkpoints" / "latest.pt")
        config.save(self.out_dir / "config.yaml")

    def _check_feature_cache(self) -> None:
        """A model must read grids made by its own backbone: same layer, resolution, preprocessing
        and weights (the manifest says which); CacheMismatchError otherwise."""
        for split in self.splits.values():
            if isinstance(split.inputs, CachedFeatures):
                split.inputs.cache.check_encoder(self.model.encoder.spec.to_dict(), self.model.backbone_weights_hash)

    def _features_to_device(self) -> None:
        """Cached grids that sit in RAM move to the GPU once, so batches are gathered there."""
        if self.device.type != "cuda":
            return
        for split in self.splits.values():
            if isinstance(split.inputs, CachedFeatures) and split.inputs.loaded is not None:
                split.inputs.loaded = split.inputs.loaded.to(self.device)

    def _parameter_groups(self) -> list[dict]:
        """One group, or two when a backbone is fine-tuned (it learns at fine_tune_lr_scale x the rate)."""
        encoder = self.config.model.encoder
        if not (self.model.uses_backbone and encoder.fine_tune):
            return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr_scale": 1.0}]
        backbone = list(self.model.encoder.backbone.parameters())
        ids = {id(p) for p in backbone}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        return [{"params": rest, "lr_scale": 1.0}, {"params": backbone, "lr_scale": encoder.fine_tune_lr_scale}]

    # ---- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "vocabulary": self.vocabulary.words,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_bleu": self.best_bleu,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "rng": _rng_state(),
        }

    def save_checkpoint(self, name: str = "latest") -> Path:
        path = self.out_dir / "checkpoints" / f"{name}.pt"
        _atomic_torch_save(self.state_dict(), path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION}")
        saved = from_dict(ExperimentConfig, state["config"]).to_dict()
        current = self.config.to_dict()
        for section in _FIXED_SECTIONS:
            for key, value in saved[section].items():
                if current[section][key] != value:
                    raise ValueError(f"{section}.{key}: the checkpoint {path} was trained with {value!r}, "
                                     f"the config asks for {current[section][key]!r}; resume with the same value")
        if state["vocabulary"] != self.vocabulary.words:
            raise ValueError(f"{path}: the checkpoint's vocabulary differs from the one built from the data")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline.load_state_dict(state["baseline"], self.device)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_bleu, self.history = state["best_bleu"], state["history"]
        self.train_seconds = state["train_seconds"]
        _set_rng_state(state["rng"])

    # ---- training ----------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.config.train.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.splits["train"]), generator=generator)

    def learning_rate(self, step: int) -> float:
        """The learning rate of update `step` (0-based): a pure function of the step, so resume is exact."""
        t = self.config.train
        if t.lr_schedule == "constant":
            return t.learning_rate
        total = t.epochs * math.ceil(len(self.splits["train"]) / t.batch_size)
        progress = min(step / max(total - 1, 1), 1.0)
        return t.learning_rate * (t.final_lr_fraction + (1 - t.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    def _autocast(self):
        if self.device.type == "cuda" and self.config.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _log(self, record: dict) -> None:
        with open(self.out_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def train_step(self, batch) -> dict[str, float]:
        t = self.config.train
        batch = batch.to(self.device)
        with self._autocast():
            features = self.model.encode_inputs(batch.inputs, batch.input_kind)[batch.image_index]
            result = compute_loss(self.model, features, batch.text, self.config.estimator, self.baseline)
        self.optimizer.zero_grad(set_to_none=True)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step) * group["lr_scale"]
        result.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for group in self.optimizer.param_groups for p in group["params"]], t.grad_clip)
        self.optimizer.step()
        return {"loss": result.loss.detach(), "grad_norm": grad_norm, "learning_rate": torch.tensor(
            self.optimizer.param_groups[0]["lr"]), **result.diagnostics}

    def validate(self) -> dict:
        decode = dataclasses.replace(self.config.decode, beam_size=self.config.train.validation_beam_size)
        scores, _ = evaluate_split(self.model, self.splits["val"], decode, self.device,
                                   self.config.train.validation_samples)
        return scores

    def train(self) -> dict:
        """Run until `train.epochs` epochs (or `train.max_steps` updates) are done; return a summary."""
        t = self.config.train
        train = self.splits["train"]
        batches_per_epoch = math.ceil(len(train) / t.batch_size)
        self.model.train()
        while self.epoch < t.epochs:
            order = self._epoch_order(self.epoch)
            bar = tqdm(total=batches_per_epoch, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{t.epochs}",
                       disable=None if t.progress_bar else True, leave=False)  # None: off when not a terminal
            while self.batch_in_epoch < batches_per_epoch:
                start = time.perf_counter()
                indices = order[self.batch_in_epoch * t.batch_size:(self.batch_in_epoch + 1) * t.batch_size]
                # Which captions of each image: fixed by (seed, step), so a resumed run draws the same.
                choice = torch.Generator().manual_seed(t.seed * 1_000_003 + 7919 * self.step + 1)
                batch = train.batch(indices, self.vocabulary, self.config.data.max_caption_length, choice,
                                    t.captions_per_image)
                stats = self.train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                self.train_seconds += time.perf_counter() - start
                bar.update(1)
                if self.step % t.log_every == 0:
                    record = {k: float(v) for k, v in stats.items()}
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    self._log({"type": "train", "step": self.step, "epoch": self.epoch + 1,
                               "train_seconds": self.train_seconds, **record})
                if t.max_steps and self.step >= t.max_steps and self.batch_in_epoch < batches_per_epoch:
                    bar.close()
                    self.save_checkpoint()
                    return self.summary()
            bar.close()
            self.epoch += 1
            self.batch_in_epoch = 0
            scores = self.validate()
            record = {"type": "validation", "step": self.step, "epoch": self.epoch,
                      "train_seconds": self.train_seconds, **scores}
            self.history.append(record)
            self._log(record)
            improved = scores["Bleu_4"] > self.best_bleu
            if improved:
                self.best_bleu = scores["Bleu_4"]
            self.save_checkpoint()
            if improved:
                self.save_checkpoint("best")
            if t.max_steps and self.step >= t.max_steps:
                break
        return self.summary()

    def summary(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "train_seconds": self.train_seconds,
                "best_val_bleu_4": self.best_bleu, "history": self.history}

    def load_best(self) -> None:
        """Put the best-by-validation weights into `self.model` (if a best checkpoint exists)."""
        path = self.out_dir / "checkpoints" / "best.pt"
        if path.is_file():
            self.model.load_state_dict(torch.load(path, map_location=self.device, weights_only=False)["model"])
