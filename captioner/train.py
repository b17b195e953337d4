"""The training loop: updates, per-epoch validation, atomic checkpoints and exact resume, in one
process or in several started by torchrun (DistributedDataParallel, see captioner.distributed)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from captioner import distributed
from captioner.config import EstimatorConfig, ExperimentConfig, ResearchConfig, experiment_from_dict
from captioner.data.batching import CaptionBatch, CaptionText
from captioner.data.datasets import CachedFeatures, CaptionSplit, load_dataset
from captioner.data.sampler import CaptionSampler, EncodedCaptions, ShardBatch, mix_seed
from captioner.data.vocabulary import Vocabulary
from captioner.estimators import EstimatorResult, ReinforceBaseline, compute_loss
from captioner.evaluation import evaluate_split
from captioner.models.captioner import CaptionModel
from captioner.models.noise import BatchShare
from captioner.models import fused
from captioner.files import atomic_torch_save
from captioner.step import make_optimizer, training_update

CHECKPOINT_VERSION = 1
# Sections that must match between a checkpoint and the config that resumes it.
_FIXED_SECTIONS = ("data", "model", "estimator", "research")
# Keys of those sections that a resumed run may change (same numbers either way).
_FREE_KEYS = {("research", "attention_kernel")}


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    """Restore `_rng_state()`; its byte tensors may have been loaded onto a GPU (map_location)."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _normalises_with_batch_statistics(module: nn.Module) -> bool:
    """True when a BatchNorm layer of `module` normalises with the statistics of its batch while
    training (small_cnn's do; a pretrained backbone keeps its BatchNorm layers in eval mode)."""
    was_training = module.training
    module.train()
    found = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules() if m.training)
    module.train(was_training)
    return found


class TrainingObjective(nn.Module):
    """The training loss as a module whose forward returns it, so that DistributedDataParallel sees
    the forward pass and averages the gradients of the processes.

    It encodes the images it is given once (those of this process's captions, or every image of the
    batch for an encoder with batch statistics), passes one grid per image with each caption's image
    index (the fused layout never copies a grid per caption), and scales the
    share's mean loss by world_size x (share's captions / batch's captions): the averaged gradient is
    then the gradient of the mean over the whole batch, however the batch was shared out."""

    def __init__(self, model: CaptionModel, estimator: EstimatorConfig, baseline: ReinforceBaseline,
                 world_size: int = 1, research: ResearchConfig | None = None):
        super().__init__()
        self.model = model
        self.estimator = estimator
        self.research = research
        self.baseline = baseline
        self.world_size = world_size

    def forward(self, inputs: torch.Tensor, input_kind: str, image_index: torch.Tensor, text: CaptionText,
                share: BatchShare) -> EstimatorResult:
        features = self.model.encode_inputs(inputs, input_kind)
        result = compute_loss(self.model, features, text, self.estimator, self.baseline, share, image_index,
                              self.research)
        weight = self.world_size * (share.stop - share.start) / share.total
        return EstimatorResult(result.loss * weight, result.diagnostics)


class TrainerCallback:
    """What `Trainer.train` calls while it trains; override either method (both do nothing here)."""

    def after_update(self, trainer: "Trainer") -> None:
        """After every update, in every process; `trainer.step` already counts it."""

    def after_validation(self, trainer: "Trainer", record: dict) -> None:
        """After each epoch's validation, in every process, with its log record."""


class Trainer:
    """Trains one model described by an ExperimentConfig, writing everything under `out_dir`:
    log.jsonl (one JSON record per log line and per validation), checkpoints/latest.pt and
    checkpoints/best.pt (best validation BLEU-4), and config.yaml.

    Started by torchrun, each process trains on its share of every batch (the batches are those of
    one process) and rank 0 alone writes files. The randomness of update s is a pure function of
    (train.seed, s): the sampled locations are one draw for the whole batch (BatchShare), so they do
    not depend on the number of processes; dropout draws from the global generator, seeded by
    (train.seed, s, rank)."""

    def __init__(self, config: ExperimentConfig, out_dir: str | Path, resume: bool = False,
                 splits: dict[str, CaptionSplit] | None = None):
        self.config = config
        t = config.train
        self.out_dir = Path(out_dir)
        if torch.device(t.device).type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but PyTorch sees no CUDA GPU; use --device cpu")
        self.distributed = distributed.setup(t.device)
        self.device = self.distributed.device(t.device)
        if self.distributed.is_main:
            (self.out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.manual_seed(t.seed)
        np.random.seed(t.seed)
        random.seed(t.seed)
        self.splits = splits if splits is not None else load_dataset(config.data, config.model)
        train = self.splits["train"]
        self.vocabulary = Vocabulary.build((c for caps in train.captions for c in caps), config.data.min_word_count)
        self.model = CaptionModel(config.model, self.vocabulary, config.data.scenes.image_size).to(self.device)
        self._check_feature_cache()
        self._features_to_device()
        fused.use_compiled_kernels(self.device.type == "cuda" and t.compile, config.research.attention_kernel)
        self.optimizer = make_optimizer(self._parameter_groups(), t.learning_rate, t.weight_decay, self.device)
        self.baseline = distributed.AllReducedBaseline() if self.distributed.active else ReinforceBaseline()
        self.sampler = CaptionSampler(
            EncodedCaptions.build(train.captions, self.vocabulary, config.data.max_caption_length, self.device),
            t.batch_size, t.captions_per_image, t.seed, t.length_bucketing, rank=self.distributed.rank,
            world_size=self.distributed.world_size,
            shard_images=not _normalises_with_batch_statistics(self.model.encoder))
        self._noise_generator = torch.Generator(device=self.device)
        self._host_generator = torch.Generator()
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_bleu = -math.inf
        self.history: list[dict] = []
        self.train_seconds = 0.0
        if resume:
            self.load_checkpoint(self.out_dir / "checkpoints" / "latest.pt")
        if self.distributed.is_main:
            config.save(self.out_dir / "config.yaml")
        self.objective: nn.Module = TrainingObjective(self.model, config.estimator, self.baseline,
                                                      self.distributed.world_size, config.research)
        if self.distributed.active:
            # Inputs are already on this process's device (device_ids=None leaves them alone). Only
            # the proposal can be left out of a loss (VAR and soft with a proposal network configured).
            self.objective = DistributedDataParallel(
                self.objective, device_ids=None,
                find_unused_parameters=self.model.proposal is not None and config.estimator.name != "wsram")

    def _check_feature_cache(self) -> None:
        """A model must read grids made by its own backbone: same layer, resolution, preprocessing
        and weights (the manifest says which); CacheMismatchError otherwise."""
        for split in self.splits.values():
            if isinstance(split.inputs, CachedFeatures):
                split.inputs.cache.check_encoder(self.model.encoder.spec.to_dict(), self.model.backbone_weights_hash)

    def _features_to_device(self) -> None:
        """Inputs held in RAM (cached grids within the preload limit, the scenes images) move to the
        GPU once, so that batches are gathered there."""
        if self.device.type != "cuda":
            return
        for split in self.splits.values():
            if isinstance(split.inputs, CachedFeatures) and split.inputs.loaded is not None:
                split.inputs.loaded = split.inputs.loaded.to(self.device)
            elif isinstance(split.inputs, torch.Tensor):
                split.inputs = split.inputs.to(self.device)

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
        """Write checkpoints/`name`.pt (rank 0 only; the state is the same in every process)."""
        path = self.out_dir / "checkpoints" / f"{name}.pt"
        if self.distributed.is_main:
            atomic_torch_save(self.state_dict(), path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION}")
        saved = experiment_from_dict(state["config"], f"{path}").to_dict()
        current = self.config.to_dict()
        for section in _FIXED_SECTIONS:
            for key, value in saved[section].items():
                if (section, key) not in _FREE_KEYS and current[section][key] != value:
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
    def learning_rate(self, step: int) -> float:
        """The learning rate of update `step` (0-based): a pure function of the step, so resume is exact."""
        t = self.config.train
        if t.lr_schedule == "constant":
            return t.learning_rate
        total = t.epochs * self.sampler.batches_per_epoch
        progress = min(step / max(total - 1, 1), 1.0)
        return t.learning_rate * (t.final_lr_fraction + (1 - t.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    def initial_state_dropout(self, step: int) -> float:
        """model.initial_state_dropout at update `step`: constant, or falling linearly to 0 over the
        first train.initial_state_dropout_decay of the updates (a pure function of the step)."""
        start = self.config.model.initial_state_dropout
        decay = self.config.train.initial_state_dropout_decay
        if decay <= 0.0:
            return start
        total = self.config.train.epochs * self.sampler.batches_per_epoch
        return start * max(0.0, 1.0 - step / max(decay * total, 1.0))

    def _log(self, record: dict) -> None:
        if self.distributed.is_main:
            with open(self.out_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def _randomness(self, start: int, stop: int, total: int) -> BatchShare:
        """The randomness of update `self.step`, for rows [start, stop) of a batch of `total`: seeds
        the global generator that dropout draws from with (seed, step, rank), and returns the
        generators of sampled locations and of whole-batch decisions, seeded with (seed, step)."""
        seed = self.config.train.seed
        torch.manual_seed(mix_seed(seed, self.step, 2, self.distributed.rank))
        return BatchShare(self._noise_generator.manual_seed(mix_seed(seed, self.step, 0)),
                          self._host_generator.manual_seed(mix_seed(seed, self.step, 1)), start, stop, total)

    def _update(self, inputs: torch.Tensor, input_kind: str, image_index: torch.Tensor, text: CaptionText,
                start: int, stop: int, total: int) -> dict[str, torch.Tensor]:
        """One update from this process's captions [start, stop) of a batch of `total` (on the device):
        caption n reads the image inputs[image_index[n]]. Returns the statistics, left on the device."""
        t = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step) * group["lr_scale"]
        self.model.decoder.initial_state_dropout = self.initial_state_dropout(self.step)
        stats = training_update(self.model, self.optimizer, inputs, input_kind, image_index, text,
                                self.config.estimator, self.baseline, t.grad_clip, t.bf16,
                                self._randomness(start, stop, total), loss_module=self.objective,
                                research=self.config.research)
        # training_update reports the loss it backpropagated, this process's scaled share
        stats["loss"] = stats["loss"] * (total / (self.distributed.world_size * (stop - start)))
        return stats

    def train_step(self, batch: CaptionBatch) -> dict[str, torch.Tensor]:
        """One update on a batch built on the CPU (CaptionSplit.batch), e.g. to time updates. With
        several processes, each passes the same batch and trains on its share of the captions."""
        batch = batch.to(self.device)
        rows = self.distributed.share(len(batch.text))
        return self._update(batch.inputs, batch.input_kind, batch.image_index[rows.start:rows.stop],
                            batch.text.rows(rows.start, rows.stop), rows.start, rows.stop, len(batch.text))

    def gather_inputs(self, shard: ShardBatch) -> torch.Tensor:
        """The model inputs of a planned batch's images (`self.sampler.plan(epoch, device).batch(i)`):
        gathered on the device from inputs resident there, else read (grids from memory-mapped
        shards, image files) and copied over."""
        inputs = self.splits["train"].inputs
        if isinstance(inputs, torch.Tensor) and inputs.device == self.device:
            return inputs[shard.images]
        if isinstance(inputs, CachedFeatures) and inputs.loaded is not None and inputs.loaded.device == self.device:
            return inputs.loaded[shard.images].float()
        return inputs[shard.host_images].to(self.device, non_blocking=True)

    def _log_record(self, stats: dict[str, torch.Tensor], start: int, stop: int, total: int) -> dict[str, float]:
        """The statistics of an update over the whole batch: every process's means weighted by its
        share of the captions and summed. One device-to-host read, every log_every updates."""
        values = torch.stack([value.to(self.device, torch.float64) for value in stats.values()])
        values = self.distributed.all_reduce(values * ((stop - start) / total)).tolist()
        record = dict(zip(stats, values))
        return {"loss": record.pop("loss"), "grad_norm": record.pop("grad_norm"),
                "learning_rate": self.optimizer.param_groups[0]["lr"], **record}

    def validate(self) -> dict:
        decode = dataclasses.replace(self.config.decode, beam_size=self.config.train.validation_beam_size)
        scores, _ = evaluate_split(self.model, self.splits["val"], decode, self.device,
                                   self.config.train.validation_samples, distributed=self.distributed)
        return scores

    def train_shard(self, shard: ShardBatch) -> dict[str, torch.Tensor]:
        """One update on a planned batch, as `train` makes it, counted in `self.step`; the update's
        statistics are returned left on the device (reading them is the caller's choice)."""
        stats = self._update(self.gather_inputs(shard), self.splits["train"].input_kind, shard.image_index,
                             shard.text, shard.start, shard.stop, shard.total)
        self.step += 1
        return stats

    def synchronize(self) -> None:
        """Wait for the work queued on the device and count the wait as training time, so that
        `train_seconds` read afterwards is the time the updates took (a GPU runs behind the host)."""
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_seconds += time.perf_counter() - start

    def train(self, callbacks: Sequence[TrainerCallback] = ()) -> dict:
        """Run until `train.epochs` epochs (or `train.max_steps` updates) are done; return a summary.
        Every callback's `after_update(trainer)` runs in every process after every update (with
        `trainer.step` already counting it and that update's log line written), e.g. to evaluate at
        fixed update counts; `after_validation(trainer, record)` after each epoch's validation."""
        t = self.config.train
        show = t.progress_bar and self.distributed.is_main
        self.model.train()
        while self.epoch < t.epochs:
            plan = self.sampler.plan(self.epoch, self.device)
            bar = tqdm(total=len(plan), initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{t.epochs}",
                       disable=None if show else True, leave=False)  # None: off when not a terminal
            while self.batch_in_epoch < len(plan):
                start = time.perf_counter()
                shard = plan.batch(self.batch_in_epoch)
                stats = self.train_shard(shard)
                self.batch_in_epoch += 1
                self.train_seconds += time.perf_counter() - start
                bar.update(1)
                if self.step % t.log_every == 0:
                    record = self._log_record(stats, shard.start, shard.stop, shard.total)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    self._log({"type": "train", "step": self.step, "epoch": self.epoch + 1,
                               "train_seconds": self.train_seconds, **record})
                for callback in callbacks:  # after this update's log line, which it may read
                    callback.after_update(self)
                if t.max_steps and self.step >= t.max_steps and self.batch_in_epoch < len(plan):
                    bar.close()
                    self.save_checkpoint()
                    self.distributed.barrier()
                    return self.summary()
            bar.close()
            self.epoch += 1
            self.batch_in_epoch = 0
            scores = self.validate()
            record = {"type": "validation", "step": self.step, "epoch": self.epoch,
                      "train_seconds": self.train_seconds, **scores}
            self.history.append(record)
            self._log(record)
            for callback in callbacks:
                callback.after_validation(self, record)
            improved = scores["Bleu_4"] > self.best_bleu
            if improved:
                self.best_bleu = scores["Bleu_4"]
            self.save_checkpoint()
            if improved:
                self.save_checkpoint("best")
            if t.max_steps and self.step >= t.max_steps:
                break
        self.distributed.barrier()  # the checkpoints are written before any process reads them
        return self.summary()

    def summary(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "train_seconds": self.train_seconds,
                "best_val_bleu_4": self.best_bleu, "history": self.history}

    def load_best(self) -> None:
        """Put the best-by-validation weights into `self.model` (if a best checkpoint exists)."""
        path = self.out_dir / "checkpoints" / "best.pt"
        if path.is_file():
            self.model.load_state_dict(torch.load(path, map_location=self.device, weights_only=False)["model"])
