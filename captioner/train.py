"""The training loop: updates, per-epoch validation, atomic checkpoints and exact resume, in one
process or in several started by torchrun (DistributedDataParallel, see captioner.distributed).

What a kill leaves behind. Every file is replaced atomically (captioner.files), so a kill leaves
each file old or new, never half of one; what a kill can interrupt is a sequence of writes. The
checkpoints are kept consistent by their order: checkpoints/latest.pt is always written first and
is the whole truth (model, optimiser, step, position in the epoch, random state, the best
validation so far and the step it was at, how many log.jsonl records the run had written); best.pt
is written after it, with the same state, when the validation improved. A kill between the two
leaves a latest.pt whose best step is its own step and an older best.pt: --resume sees that and
copies latest.pt to best.pt before going on. --resume also drops the log.jsonl records written
after the checkpoint (the updates that are redone) and the temporary files of interrupted writes,
so that a resumed run writes the same files, bit for bit, as one that was never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from captioner import distributed
from captioner.averaging import ParameterAverage
from captioner.config import ConfigError, EstimatorConfig, ExperimentConfig, ResearchConfig, experiment_from_dict
from captioner.data.batching import CaptionBatch, CaptionText
from captioner.data.datasets import CachedFeatures, CaptionSplit, MirroredFeatures, load_dataset
from captioner.data.sampler import CaptionSampler, EncodedCaptions, ShardBatch, mix_seed
from captioner.data.vocabulary import Vocabulary
from captioner.estimators import EstimatorResult, ReinforceBaseline, compute_loss
from captioner.evaluation import evaluate_split
from captioner.models.captioner import CaptionModel
from captioner.models.noise import BatchShare
from captioner.models import fused
from captioner.errors import CaptionerError
from captioner.files import TEMPORARY_SUFFIX, atomic_write, atomic_write_text, finite_for_json, json_text
from captioner.graphs import GraphedUpdates, graphable
from captioner.step import make_optimizer, set_learning_rate, training_update

CHECKPOINT_VERSION = 1
# Sections that must match between a checkpoint and the config that resumes it.
_FIXED_SECTIONS = ("data", "model", "estimator", "research")
# Keys of those sections that a resumed run may change (same numbers either way).
_FREE_KEYS = {("research", "attention_kernel")}
# The messages kept for metrics.json (skipped updates and loss warnings); later ones are counted only.
_MAX_WARNINGS = 50


class TrainingError(CaptionerError):
    """Training stopped, or a file was not written, because something went wrong that the message names."""


class SkippedUpdatesError(TrainingError):
    """train.max_skipped_updates_in_a_row updates in a row had a non-finite loss or gradient."""


class NonFiniteStateError(TrainingError):
    """The training state (parameters, buffers, optimiser moments) holds NaN or infinities: refusing
    to write it over a good checkpoint or model."""


class CheckpointMismatchError(TrainingError):
    """checkpoints/best.pt is not the state that checkpoints/latest.pt names as the best."""


# ---- crash tests -------------------------------------------------------------------------------
# The tests of what a kill leaves behind (tests/test_robustness_training.py) set, for a subprocess,
# CAPTIONER_TEST_KILL_AT=N: the process sends itself SIGKILL at its N-th write event (counted from
# 0); and CAPTIONER_TEST_EVENTS=FILE appends one line "N<TAB>label" per event to FILE. The events:
# a checkpoint's temporary file opened, each write into it, the temporary complete (before the
# rename), the file in place, and the steps of the model export (captioner.experiment). In-process
# tests set `crash_hook` instead. Unset (always, outside those tests) nothing is counted and
# checkpoints are written by torch.save to a path, as without it.
class _CrashPoints:
    def __init__(self, kill_at: int | None, events: str | None):
        self.kill_at, self.events, self.count = kill_at, events, 0

    def __call__(self, label: str) -> None:
        if self.events:
            with open(self.events, "a") as handle:
                handle.write(f"{self.count}\t{label}\n")
        if self.count == self.kill_at:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self.count += 1


def _crash_hook_from_environment() -> Callable[[str], None] | None:
    kill_at, events = os.environ.get("CAPTIONER_TEST_KILL_AT"), os.environ.get("CAPTIONER_TEST_EVENTS")
    if not kill_at and not events:
        return None
    return _CrashPoints(int(kill_at) if kill_at else None, events)


crash_hook: Callable[[str], None] | None = _crash_hook_from_environment()


def crash_point(label: str) -> None:
    """A moment at which the crash tests may kill the process (nothing happens otherwise)."""
    if crash_hook is not None:
        crash_hook(label)


class _ReportingFile:
    """A file that reports each write to `crash_point` (the crash tests' view of torch.save)."""

    def __init__(self, handle, name: str):
        self.handle, self.name, self.written = handle, name, 0

    def write(self, data) -> int:
        count = self.handle.write(data)
        self.handle.flush()  # on disk as far as a kill is concerned
        self.written += count
        crash_point(f"{self.name}: {self.written} bytes")
        return count

    def flush(self) -> None:
        self.handle.flush()


def _write_checkpoint(state: dict, path: Path) -> None:
    """torch.save(state) into `path`, atomically."""

    def write(temporary: Path) -> None:
        if crash_hook is None:
            torch.save(state, temporary)
            return
        with open(temporary, "wb") as handle:
            crash_point(f"{path.name}: temporary opened")
            torch.save(state, _ReportingFile(handle, path.name))
        crash_point(f"{path.name}: temporary complete")

    atomic_write(path, write)
    crash_point(f"{path.name}: in place")


def _copy_file(source: Path, target: Path) -> None:
    atomic_write(target, lambda temporary: shutil.copyfile(source, temporary))
    crash_point(f"{target.name}: in place")


def remove_temporary_files(folders: Iterable[Path]) -> list[Path]:
    """Delete the temporary files (NAME.tmp) that writes interrupted by a kill left in `folders`."""
    removed = []
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.glob("*" + TEMPORARY_SUFFIX)):
                if path.is_file():
                    path.unlink()
                    removed.append(path)
    return removed


def non_finite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of the floating-point tensors of `named` that hold a NaN or an infinity, read back
    in one transfer per device."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in named:
        if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex()):
            by_device.setdefault(tensor.device, []).append((name, tensor))
    bad = []
    for items in by_device.values():
        finite = torch.stack([torch.isfinite(tensor).all() for _, tensor in items]).tolist()
        bad += [name for (name, _), ok in zip(items, finite) if not ok]
    return bad


def _checkpoint_step(path: Path) -> int:
    """The step of the checkpoint at `path`, without reading its tensors."""
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)["step"]


def _best_step_from_history(history: list[dict], best_bleu: float) -> int | None:
    """The step of the first validation with BLEU-4 `best_bleu` (checkpoints that predate best_step)."""
    for record in history:
        if record.get("Bleu_4") == best_bleu:
            return record["step"]
    return None


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
    log.jsonl (one JSON record per log line, per validation and per warning), checkpoints/latest.pt
    and checkpoints/best.pt (best validation BLEU-4), and config.yaml.

    An update with a non-finite loss or gradient is skipped (captioner.step) and counted
    (`skipped_updates`, in log.jsonl and the summary); train.max_skipped_updates_in_a_row of them in
    a row stop the run with SkippedUpdatesError. No checkpoint is written from a state that holds a
    NaN or an infinity (NonFiniteStateError). A loss that grows past train.loss_warning_factor times
    its first value is reported once (stderr, a "warning" record in log.jsonl, `warnings`).

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
            removed = remove_temporary_files([self.out_dir, self.out_dir / "checkpoints", self.out_dir / "model"])
            if removed:
                self._note(f"removed {len(removed)} temporary file(s) left by interrupted writes: "
                           + ", ".join(str(path.relative_to(self.out_dir)) for path in removed))
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
        graphs_ok, self.graphs_off_reason = graphable(config)
        if not t.cuda_graphs:
            graphs_ok, self.graphs_off_reason = False, "train.cuda_graphs is off"
        elif self.distributed.active:
            graphs_ok, self.graphs_off_reason = False, "CUDA graphs are not used under torchrun"
        self.optimizer = make_optimizer(self._parameter_groups(), t.learning_rate, t.weight_decay, self.device,
                                        capturable=graphs_ok)
        self.baseline = distributed.AllReducedBaseline() if self.distributed.active else ReinforceBaseline()
        self.sampler = CaptionSampler(
            EncodedCaptions.build(train.captions, self.vocabulary, config.data.max_caption_length, self.device),
            t.batch_size, t.captions_per_image, t.seed, t.length_bucketing, rank=self.distributed.rank,
            world_size=self.distributed.world_size,
            shard_images=not _normalises_with_batch_statistics(self.model.encoder),
            flip_probability=self._flip_probability(train))
        # train.ema_decay: the moving average of the parameters that validation, best.pt and the export use
        self.average = ParameterAverage(self.model, t.ema_decay, t.ema_warmup) if t.ema_decay > 0 else None
        self._noise_generator = torch.Generator(device=self.device)
        self._host_generator = torch.Generator()
        # The update in CUDA graphs (None: eager); _share is the randomness of the update in flight.
        self.graphs = GraphedUpdates(self._graphed_update, [self._noise_generator]) if graphs_ok else None
        # A decaying model.initial_state_dropout, graphed: the rate in a device tensor filled before each update
        self._initial_state_dropout_rate = None
        if graphs_ok and t.initial_state_dropout_decay > 0:
            self._initial_state_dropout_rate = torch.zeros((), device=self.device)
            self.model.decoder.initial_state_dropout_rate = self._initial_state_dropout_rate
        self._share: BatchShare | None = None
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_bleu = -math.inf
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.validation_seconds = 0.0  # the validations of this process (not counted in train_seconds)
        self.best_step: int | None = None  # the step of the best validation (that of best.pt)
        self.log_records = 0  # records this run has written to log.jsonl
        self.skipped_updates = 0  # updates skipped for a non-finite loss or gradient, in all
        self.skipped_in_a_row = 0  # ... and in a row, up to the last update read back
        self.first_loss: float | None = None  # |loss| of the first update that was not skipped
        self.loss_warned = False
        self.warnings: list[str] = []
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, [skipped, loss, grad_norm]) not read yet
        self._last_checkpoint: tuple[Path, int] | None = None
        if resume:
            self._resume()
        elif self.distributed.is_main:
            (self.out_dir / "log.jsonl").unlink(missing_ok=True)  # a new run's log starts empty
        if self.distributed.is_main:
            atomic_write(self.out_dir / "config.yaml", lambda temporary: config.save(temporary))
        self.objective: nn.Module = TrainingObjective(self.model, config.estimator, self.baseline,
                                                      self.distributed.world_size, config.research)
        if self.distributed.active:
            # Inputs are already on this process's device (device_ids=None leaves them alone). Only
            # the proposal can be left out of a loss (VAR and soft with a proposal network configured).
            self.objective = DistributedDataParallel(
                self.objective, device_ids=None,
                find_unused_parameters=self.model.proposal is not None and config.estimator.name != "wsram")

    def _optimizer_for_this_run(self) -> None:
        """After loading an optimiser state saved by a run with or without CUDA graphs: the learning
        rates as this run keeps them (device tensors that the graphs read, or numbers)."""
        capturable = self.graphs is not None
        for group in self.optimizer.param_groups:
            value = float(group["lr"])
            group["lr"] = torch.tensor(value, device=self.device) if capturable else value
            if self.device.type == "cuda":
                group["capturable"] = capturable

    def _flip_probability(self, train: CaptionSplit) -> float:
        """data.flip_probability, for a training split that holds its mirror images (MirroredFeatures)."""
        p = self.config.data.flip_probability
        if p > 0 and not isinstance(train.inputs, MirroredFeatures):
            raise ConfigError("data.flip_probability: the training split holds no mirror images (flip augmentation "
                              "reads data.mirrored_features, a cache made by `captioner extract --mirror`)")
        return p

    def _check_feature_cache(self) -> None:
        """A model must read grids made by its own backbone: same layer, resolution, preprocessing
        and weights (the manifest says which); CacheMismatchError otherwise."""
        for split in self.splits.values():
            if isinstance(split.inputs, CachedFeatures):
                for cache in split.inputs.caches:
                    cache.check_encoder(self.model.encoder.spec.to_dict(), self.model.backbone_weights_hash)

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
        """One group, or two when a backbone (or its tune_to blocks) is fine-tuned: it learns at
        fine_tune_lr_scale x the rate."""
        encoder = self.config.model.encoder
        if not (self.model.uses_backbone and (encoder.fine_tune or encoder.tune_to)):
            return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr_scale": 1.0}]
        tuned = self.model.encoder.backbone if encoder.fine_tune else self.model.encoder.tuned
        backbone = list(tuned.parameters())
        ids = {id(p) for p in backbone}
        rest = [p for p in self.model.parameters() if id(p) not in ids and p.requires_grad]
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
            **({"parameter_average": self.average.state_dict()} if self.average is not None else {}),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_bleu": self.best_bleu,
            "best_step": self.best_step,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "log_records": self.log_records,
            "skipped_updates": self.skipped_updates,
            "skipped_in_a_row": self.skipped_in_a_row,
            "first_loss": self.first_loss,
            "loss_warned": self.loss_warned,
            "warnings": self.warnings,
            "rng": _rng_state(),
        }

    def _note(self, message: str) -> None:
        """One line on stderr (rank 0), above the progress bar."""
        if self.distributed.is_main:
            tqdm.write(f"captioner: {message}", file=sys.stderr)

    def _last_checkpoint_text(self) -> str:
        if self._last_checkpoint is None:
            return "no checkpoint was written yet"
        path, step = self._last_checkpoint
        return f"the last checkpoint, {path} (step {step}), is left as it was"

    def check_finite(self, target: Path | str, model_only: bool = False) -> None:
        """NonFiniteStateError, naming `target` and the tensors, unless the model's parameters and
        buffers (and, unless `model_only`, the optimiser's state and the baseline) are all finite
        (one read per device)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        named: list[tuple[str, Any]] = [(f"model {k}", v) for k, v in self.model.state_dict().items()]
        for group in [] if model_only else self.optimizer.param_groups:
            for parameter in group["params"]:
                for key, value in self.optimizer.state.get(parameter, {}).items():
                    named.append((f"optimizer {key} of {names.get(id(parameter), '?')}", value))
        if self.baseline.value is not None and not model_only:
            named.append(("the REINFORCE baseline", self.baseline.value))
        if self.average is not None and not model_only:
            named += [(f"parameter average of {name}", value) for name, value in self.average.named_tensors()]
        bad = non_finite_tensors(named)
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise NonFiniteStateError(
                f"step {self.step}: refusing to write {target}: the training state holds NaN or infinite values "
                f"({shown}); {self._last_checkpoint_text()}. Lower train.learning_rate "
                f"(now {self.config.train.learning_rate:g}) or look for NaN in the data, then --resume")

    def save_checkpoint(self, name: str = "latest", also_best: bool = False) -> Path:
        """Write checkpoints/`name`.pt (rank 0 only; the state is the same in every process), and
        with `also_best` then checkpoints/best.pt with the same state. Refuses a non-finite state
        (NonFiniteStateError) before writing anything."""
        self._read_pending()
        folder = self.out_dir / "checkpoints"
        path = folder / f"{name}.pt"
        self.check_finite(path)  # in every process (the same state): all of them stop together
        if self.distributed.is_main:
            state = self.state_dict()
            _write_checkpoint(state, path)  # latest first: it is the whole truth (see the module's notes)
            if also_best:
                _write_checkpoint(state, folder / "best.pt")
        if name == "latest":
            self._last_checkpoint = (path, self.step)
        return path

    def _resume(self) -> None:
        """Continue from checkpoints/latest.pt: its state, the log cut back to it, best.pt made its best."""
        folder = self.out_dir / "checkpoints"
        latest = folder / "latest.pt"
        if not latest.is_file():
            if (self.out_dir / "config.yaml").is_file() and not (folder / "best.pt").is_file():
                # the run was stopped before its first checkpoint: nothing to keep, start it again
                self._note(f"{self.out_dir} has no checkpoint yet (the run stopped before its first one): "
                           "starting it from the beginning")
                if self.distributed.is_main:
                    (self.out_dir / "log.jsonl").unlink(missing_ok=True)
                return
            raise FileNotFoundError(f"{latest}: no checkpoint to resume from")
        self.load_checkpoint(latest)
        if self.distributed.is_main:
            self._cut_log()
            self._repair_best()
        if self.log_records is None:
            self.log_records = 0
        self.distributed.barrier()

    def _cut_log(self) -> None:
        """Drop the log.jsonl records written after the checkpoint (their updates are redone), and a
        last line cut short by a kill; atomically."""
        path = self.out_dir / "log.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        if self.log_records is not None:
            kept = lines[:self.log_records]
        else:  # a checkpoint from before log_records: it was written after every record of its step
            kept = []
            for line in lines:
                try:
                    if json.loads(line)["step"] > self.step:
                        break
                except (ValueError, KeyError, TypeError):
                    break
                kept.append(line)
            self.log_records = len(kept)
        kept = [line for line in kept if line.endswith("\n")]
        if kept != lines:
            atomic_write_text(path, "".join(kept))

    def _repair_best(self) -> None:
        """Make checkpoints/best.pt the state of step `best_step`: when a kill came between writing
        latest.pt (which then holds that state) and best.pt, copy latest.pt over."""
        if self.best_step is None:
            return
        folder = self.out_dir / "checkpoints"
        best, latest = folder / "best.pt", folder / "latest.pt"
        found = _checkpoint_step(best) if best.is_file() else None
        if found == self.best_step:
            return
        if self.best_step == self.step:
            _copy_file(latest, best)
            self._note(f"{best} was not written (the run stopped before it): copied from {latest} (step {self.step})")
            return
        raise CheckpointMismatchError(
            f"{best} is {'missing' if found is None else f'from step {found}'} but {latest} says the best validation "
            f"(BLEU-4 {self.best_bleu:.4f}) was at step {self.best_step}; the checkpoints are not of one run")

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
        if self.average is not None:
            if "parameter_average" not in state:
                raise ValueError(f"train.ema_decay: the checkpoint {path} was trained without a parameter average "
                                 f"(train.ema_decay 0); resume it with train.ema_decay=0, or start a new run")
            self.average.load_state_dict(state["parameter_average"], str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self._optimizer_for_this_run()
        self.baseline.load_state_dict(state["baseline"], self.device)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_bleu, self.history = state["best_bleu"], state["history"]
        self.best_step = state["best_step"] if "best_step" in state else _best_step_from_history(
            self.history, self.best_bleu)
        self.train_seconds = state["train_seconds"]
        self.log_records = state.get("log_records")  # None: a checkpoint from before it was kept
        self.skipped_updates = state.get("skipped_updates", 0)
        self.skipped_in_a_row = state.get("skipped_in_a_row", 0)
        self.first_loss = state.get("first_loss")
        self.loss_warned = state.get("loss_warned", False)
        self.warnings = list(state.get("warnings", []))
        self._pending = []
        self._last_checkpoint = (path, self.step)
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
        """Append one record to log.jsonl (rank 0; counted in every process). Strict JSON: a NaN or
        infinite value is written as null and its key listed under "non_finite"."""
        self.log_records += 1
        if self.distributed.is_main:
            clean, replaced = finite_for_json(record)
            if replaced:
                clean["non_finite"] = replaced
            with open(self.out_dir / "log.jsonl", "a") as handle:
                handle.write(json_text(clean) + "\n")

    def _warn(self, message: str) -> None:
        """A warning: on stderr, as a log.jsonl record, and in the summary (the first _MAX_WARNINGS)."""
        self._note(f"warning: {message}")
        self._log({"type": "warning", "step": self.step, "epoch": self.epoch + 1, "message": message})
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings.append(message)

    def _read_pending(self) -> None:
        """Read back whether the updates since the last read were skipped, and their losses (one
        transfer; after every update on the CPU, where it costs nothing, else at log lines,
        checkpoints and epoch ends): count the skipped ones, stop after too many in a row, and warn
        once about a loss that blew up."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = torch.stack([value for _, value in pending]).tolist()
        t = self.config.train
        for (step, _), (skipped, loss, grad_norm) in zip(pending, values):
            if skipped:
                self.skipped_updates += 1
                self.skipped_in_a_row += 1
                self._warn(f"step {step}: non-finite loss or gradient (loss {loss:g}, gradient norm {grad_norm:g}): "
                           f"update skipped, {self.skipped_in_a_row} in a row, {self.skipped_updates} in all")
                if t.max_skipped_updates_in_a_row and self.skipped_in_a_row >= t.max_skipped_updates_in_a_row:
                    raise SkippedUpdatesError(
                        f"step {step}: {self.skipped_in_a_row} updates in a row (steps "
                        f"{step - self.skipped_in_a_row + 1}-{step}) had a non-finite loss or gradient (the last: loss "
                        f"{loss:g}) and were skipped: training stopped, nothing more was saved; "
                        f"{self._last_checkpoint_text()}. Lower "
                        f"train.learning_rate (now {t.learning_rate:g}) or look for NaN in the data, then --resume "
                        f"(train.max_skipped_updates_in_a_row={t.max_skipped_updates_in_a_row})")
                continue
            self.skipped_in_a_row = 0
            if self.first_loss is None:
                self.first_loss = abs(loss)
            elif t.loss_warning_factor and not self.loss_warned:
                reference = max(self.first_loss, 1.0)
                if abs(loss) > t.loss_warning_factor * reference:
                    self.loss_warned = True
                    self._warn(f"step {step}: the training loss is {loss:.3g}, {abs(loss) / reference:.3g} times its "
                               f"first value ({self.first_loss:.3g}): training is diverging; train.learning_rate "
                               f"(now {t.learning_rate:g}) is probably too high "
                               f"(train.loss_warning_factor={t.loss_warning_factor:g})")

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
            set_learning_rate(group, self.learning_rate(self.step) * group["lr_scale"])
        rate = self.model.decoder.initial_state_dropout = self.initial_state_dropout(self.step)
        if self._initial_state_dropout_rate is not None:
            self._initial_state_dropout_rate.fill_(rate)
        self._share = self._randomness(start, stop, total)  # seeds the generators before the update runs
        if self.graphs is not None and input_kind == "features":
            # the initial-state draw happens only while the rate is above 0: one graph with it, one without
            stats = self.graphs(inputs, image_index, text, variant=(rate > 0.0,))
        else:
            stats = training_update(self.model, self.optimizer, inputs, input_kind, image_index, text,
                                    self.config.estimator, self.baseline, t.grad_clip, t.bf16,
                                    self._share, loss_module=self.objective, research=self.config.research)
        # training_update reports the loss it backpropagated, this process's scaled share
        stats["loss"] = stats["loss"] * (total / (self.distributed.world_size * (stop - start)))
        return stats

    def _graphed_update(self, inputs: torch.Tensor, image_index: torch.Tensor,
                        text: CaptionText) -> dict[str, torch.Tensor]:
        """The update that self.graphs captures: that of _update, with the randomness it seeded."""
        t = self.config.train
        return training_update(self.model, self.optimizer, inputs, "features", image_index, text,
                               self.config.estimator, self.baseline, t.grad_clip, t.bf16, self._share,
                               loss_module=self.objective, research=self.config.research)

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
                "learning_rate": float(self.optimizer.param_groups[0]["lr"]), **record}

    def validate(self) -> dict:
        """Scores on the validation split, of the parameter average when train.ema_decay is on."""
        decode = dataclasses.replace(self.config.decode, beam_size=self.config.train.validation_beam_size)
        if self.average is None:
            scores, _ = evaluate_split(self.model, self.splits["val"], decode, self.device,
                                       self.config.train.validation_samples, distributed=self.distributed)
            return scores
        with self.average.swapped_in():
            scores, _ = evaluate_split(self.model, self.splits["val"], decode, self.device,
                                       self.config.train.validation_samples, distributed=self.distributed)
        return scores

    def train_shard(self, shard: ShardBatch) -> dict[str, torch.Tensor]:
        """One update on a planned batch, as `train` makes it, counted in `self.step`; the update's
        statistics are returned left on the device (reading them is the caller's choice)."""
        stats = self._update(self.gather_inputs(shard), self.splits["train"].input_kind, shard.image_index,
                             shard.text, shard.start, shard.stop, shard.total)
        self.step += 1
        if self.average is not None:
            self.average.update(self.step)
        self._pending.append((self.step, torch.stack([stats[key].detach().to(torch.float64)
                                                      for key in ("skipped", "loss", "grad_norm")])))
        if self.device.type == "cpu":
            self._read_pending()
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
            if t.max_steps and self.step >= t.max_steps:  # resumed from the checkpoint that ended the run
                break
            plan = self.sampler.plan(self.epoch, self.device)
            bar = tqdm(total=len(plan), initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{t.epochs}",
                       disable=None if show else True, leave=False)  # None: off when not a terminal
            while self.batch_in_epoch < len(plan):
                if t.max_steps and self.step >= t.max_steps:  # resumed from the max_steps checkpoint
                    bar.close()
                    self.distributed.barrier()
                    return self.summary()
                start = time.perf_counter()
                shard = plan.batch(self.batch_in_epoch)
                stats = self.train_shard(shard)
                self.batch_in_epoch += 1
                self.train_seconds += time.perf_counter() - start
                bar.update(1)
                if self.step % t.log_every == 0:
                    self._read_pending()
                    record = self._log_record(stats, shard.start, shard.stop, shard.total)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    self._log({"type": "train", "step": self.step, "epoch": self.epoch + 1,
                               "train_seconds": self.train_seconds, **record,
                               "skipped_updates": self.skipped_updates})
                for callback in callbacks:  # after this update's log line, which it may read
                    callback.after_update(self)
                if t.max_steps and self.step >= t.max_steps and self.batch_in_epoch < len(plan):
                    bar.close()
                    self.save_checkpoint()
                    self.distributed.barrier()
                    return self.summary()
                if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.batch_in_epoch < len(plan):
                    self.save_checkpoint()  # (at the epoch's end, the end-of-epoch checkpoint follows)
            bar.close()
            self._read_pending()
            self.epoch += 1
            self.batch_in_epoch = 0
            start = time.perf_counter()
            scores = self.validate()
            seconds = time.perf_counter() - start
            self.validation_seconds += seconds
            record = {"type": "validation", "step": self.step, "epoch": self.epoch,
                      "train_seconds": self.train_seconds, "validation_seconds": seconds, **scores}
            self.history.append(record)
            self._log(record)
            for callback in callbacks:
                callback.after_validation(self, record)
            improved = scores["Bleu_4"] > self.best_bleu
            if improved:
                self.best_bleu, self.best_step = scores["Bleu_4"], self.step
            self.save_checkpoint(also_best=improved)
            if t.max_steps and self.step >= t.max_steps:
                break
        self._read_pending()
        self.distributed.barrier()  # the checkpoints are written before any process reads them
        return self.summary()

    def summary(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "train_seconds": self.train_seconds,
                "validation_seconds": self.validation_seconds,
                "best_val_bleu_4": self.best_bleu, "best_step": self.best_step, "history": self.history,
                "skipped_updates": self.skipped_updates, "warnings": list(self.warnings)}

    def load_best(self) -> None:
        """Put the best-by-validation weights (checkpoints/best.pt, the state of step `best_step`)
        into `self.model`; the model is left as it is when no validation has been made. With
        train.ema_decay, the weights put there are best.pt's parameter average (the current average
        when no validation has been made). CheckpointMismatchError when best.pt is missing or of
        another step."""
        path = self.out_dir / "checkpoints" / "best.pt"
        if self.best_step is None:
            if self.average is not None:
                self.average.copy_to_parameters()
            return
        if not path.is_file():
            raise CheckpointMismatchError(f"{path} is missing, but the run's best validation (BLEU-4 "
                                          f"{self.best_bleu:.4f}) was at step {self.best_step}")
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["step"] != self.best_step:
            raise CheckpointMismatchError(f"{path} is from step {state['step']}, but the run's best validation "
                                          f"(BLEU-4 {self.best_bleu:.4f}) was at step {self.best_step}")
        self.model.load_state_dict(state["model"])
        if self.average is not None:
            self.average.load_state_dict(state["parameter_average"], str(path))
            self.average.copy_to_parameters()
