"""Typed configuration: dataclasses loaded from YAML, with command-line overrides.

One config system for everything. A run is described by an `ExperimentConfig`; it is built
from defaults, then a YAML file, then `section.key=value` overrides, and validated as a
whole. Every error names the offending key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


class ConfigRenamedWarning(FutureWarning):
    """A config file or override used a key under its old name; it was read under the new one."""


@dataclass
class ScenesConfig:
    """The built-in scenes data (`data.dataset: scenes`), generated from `seed`: images of
    `image_size` px with min_objects..max_objects shapes in a 3 x 3 layout. Ignored by the data sets
    on disk."""

    train_size: int = 4000
    val_size: int = 100
    test_size: int = 200
    image_size: int = 72
    min_objects: int = 1
    max_objects: int = 3
    seed: int = 0


@dataclass
class DataConfig:
    """Which data set to read and how captions are prepared for training.

    scenes is built in (its settings in `data.scenes`); the others are read from disk (see
    data/README.md) and use the keys below: flickr8k (the release layout under `root`), karpathy
    (Karpathy's split JSON `annotations`, images under `root`), coco (the official layout under
    `root`: annotations/captions_{train,val}YEAR.json and trainYEAR/, valYEAR/) and huggingface (the
    parquet-backed hub set `hf_name`). The text keys at the end apply to every data set."""

    dataset: Literal["scenes", "flickr8k", "karpathy", "coco", "huggingface"] = "scenes"
    scenes: ScenesConfig = field(default_factory=ScenesConfig)
    # data sets on disk
    root: str = ""
    annotations: str = ""  # karpathy: the split JSON (dataset_coco.json, dataset_flickr8k.json, ...)
    coco_year: str = "2014"
    hf_name: str = ""  # huggingface: a hub name (yerevann/coco-karpathy, jxie/flickr8k) or local parquet folder
    restval: Literal["train", "drop"] = "train"  # Karpathy's restval images: into train (the standard) or left out
    features: str = ""  # the feature cache (`captioner extract`) that training reads for pretrained encoders
    limit_images: int = 0  # 0: all; otherwise the first N images of each split (quick trials)
    # karpathy only: false does not look for the image files, for a run that reads a ready feature
    # cache (data.features, frozen encoder): the cache then decides which images are used.
    check_image_files: bool = True
    # Cached grids of a split are loaded into memory (and onto the GPU) when they take at most this
    # many GiB as float16, else read from the memory-mapped shards batch by batch.
    preload_limit_gib: float = 8.0
    # Flip augmentation: each epoch, each training image is replaced by its mirror image (left and right
    # swapped) with this probability, drawn anew every epoch from (train.seed, epoch), so a resumed run
    # draws the same. The mirror images' grids come from `mirrored_features`, a cache made by
    # `captioner extract --mirror` with the same encoder; their captions have "left" and "right"
    # swapped. Cached features only; validation and test images are never mirrored.
    flip_probability: float = 0.0
    mirrored_features: str = ""
    # text
    max_caption_length: int = 16  # words kept for training; references are never truncated
    min_word_count: int = 5  # vocabulary threshold on training captions


# Settings that differ for the built-in data: its vocabulary is tiny and its captions list up to
# three objects in longer sentences. Applied under the user's YAML and overrides.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "scenes": {"max_caption_length": 24, "min_word_count": 1},
}


@dataclass
class EncoderConfig:
    """The image encoder that turns an image into a grid of L feature vectors.

    small_cnn is trained from scratch on the built-in data (grid x grid cells of the image).
    The others are pretrained backbones (captioner.models.backbones): their grid comes from `layer`
    and `image_size`; training reads their features from a cache unless `fine_tune` is on, and a
    learned adapter (LayerNorm, linear map to `feature_dim`, position codes) feeds the decoder."""

    name: Literal["small_cnn", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "resnet50",
                  "resnet101", "resnet152", "hf"] = "small_cnn"
    feature_dim: int = 32
    grid: int = 3  # small_cnn only; a backbone's grid follows from layer and image_size
    position_embedding: bool = True  # lets a single glimpse tell where it was taken
    # Small at the start: with large random position codes the attention MLP can single out one
    # empty cell early and both prior and proposal collapse onto it (measured: eval/README.md).
    position_embedding_scale: float = 0.05
    channels: int = 24  # small_cnn: width of the CNN's first layer
    normalize_features: bool = False  # LayerNorm on each location's feature vector
    # pretrained backbones
    layer: str = ""  # "" = the backbone's default (efficientnet-lite0: block15; lite1/2: block20; resnets: layer4)
    image_size: int = 224
    hf_model: str = ""  # name: hf -> a Hugging Face vision backbone (hub name or local folder)
    pretrained: bool = True
    fine_tune: bool = False  # train the backbone too, from images (slow; no cache needed)
    fine_tune_lr_scale: float = 0.1  # the backbone's (and the tune_to blocks') learning rate relative to the rest
    # EfficientNet-Lite: train the backbone's last blocks from a cache of an earlier tap. The blocks
    # after `layer` up to this one (e.g. layer block14, tune_to block20) start from their ImageNet
    # weights and learn at fine_tune_lr_scale x the rate; the cache holds `layer`'s grid, the decoder
    # reads `tune_to`'s. "" = none (the decoder reads `layer`'s grid, the backbone stays frozen).
    tune_to: str = ""
    feature_dropout: float = 0.0  # dropout on the adapted feature vectors while training (backbones)
    # A wider glimpse, as RAM's retina sees around its fixation: r > 0 adds to each location's vector
    # a learned linear map (zero at the start) of the mean of the (2r + 1) x (2r + 1) cells around it
    # (those inside the grid), so one hard glimpse also carries its neighbourhood. The attention still
    # picks one location; soft attention reads the same widened grid. 0: the cell alone (as before).
    glimpse_context: int = 0


@dataclass
class ModelConfig:
    """Sizes of the captioner and which attention and proposal it uses."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    embedding_dim: int = 32
    hidden_dim: int = 64
    attention_dim: int = 32
    dropout: float = 0.0  # on the deep output layer
    embedding_dropout: float = 0.0  # on the word embeddings the decoder reads
    attention: Literal["hard", "soft"] = "hard"
    proposal: Literal["factorised", "sequential", "none"] = "factorised"
    proposal_hidden_dim: int = 32
    # Hard glimpses per word (G): a_t is G locations drawn independently from pi_t (and from q_t while
    # training), z_t the mean of their features, log pi_t(a_t) the sum of their log-probabilities. G = 1
    # is the method as the spec gives it; larger G lets one word see several places (a scene, a count)
    # and tends to the expected glimpse as G grows. Decoding: argmax takes the mode (G times argmax
    # pi_t, the same glimpse as G = 1), marginal sums over all L^G ordered tuples (G = 2 on a 7 x 7 grid:
    # 2,401 LSTM rows per hypothesis).
    glimpses_per_word: int = 1
    # Start the decoder blind to its glimpse (zero weights on z_t in the LSTM input and the deep
    # output), so that early glimpses add no noise that the attention would learn to avoid.
    zero_init_glimpse: bool = False
    # Where h_0, c_0 come from: "mean_feature" (tanh(W mean_i F_i), Show-Attend-Tell's and the spec's)
    # or "learned" (a learned constant: the image reaches the decoder through its glimpses only).
    initial_state: Literal["mean_feature", "learned"] = "mean_feature"
    # While training, replace the mean feature behind h_0, c_0 by zeros for each image (each caption
    # where the decoder reads one grid per caption; always shared by a caption's K samples) with this
    # probability (an information bottleneck on the initial state, as word dropout in text VAEs): a
    # decoder that can describe the image from h_0 has no reason to read its glimpses, and the
    # attention then settles wherever it first drifts, away from the objects as often as not
    # (the "look-away" mode, eval/scenes/lookaway/README.md). 0.75 measured best on the built-in data.
    initial_state_dropout: float = 0.75
    # Start the prior and the proposal exactly uniform (zero weights on the attention score), so
    # that where they first lean comes from the estimator's signal, not from random initial weights
    # meeting features that change for other reasons.
    uniform_attention_init: bool = True


@dataclass
class EstimatorConfig:
    """The training objective and its options (see shared/design/wsram.md)."""

    name: Literal["wsram", "var", "vimco", "soft"] = "wsram"
    # WS-RAM (and VIMCO: K samples from the prior, leave-one-out baselines, no proposal; K >= 2)
    samples: int = 5  # K
    control_variates: bool = True  # c^q = 1/K for the proposal (c^p: research.prior_control_variate)
    sleep_update: bool = False
    sleep_weight: float = 1.0
    defensive_weight: float = 0.0  # delta of the mixture (1 - delta) q + delta * component
    defensive_component: Literal["prior", "uniform"] = "uniform"
    # The proposal's wake term, -sum_k sg(w~_k - c^q_k) log q(a^k | y, x), also trains the encoder
    # that q reads (the adapter and any model.encoder.tune_to blocks, which belong to p_theta).
    # False: q reads sg(F), so that term moves only phi (as the sleep update's already does) and
    # the encoder learns from the bound alone.
    proposal_encoder_gradient: bool = True
    # VAR / REINFORCE (Show-Attend-Tell's settings)
    reinforce_weight: float = 0.1
    entropy_weight: float = 0.002
    baseline_decay: float = 0.9
    expected_glimpse_probability: float = 0.0
    # soft attention
    doubly_stochastic_weight: float = 1.0


@dataclass
class TrainConfig:
    """Optimisation, validation and checkpointing."""

    epochs: int = 14
    max_steps: int = 0  # 0: no limit; otherwise stop (and checkpoint) after this many updates
    batch_size: int = 20  # images per update (the whole update: under torchrun, over all processes)
    # Captions of each image in an epoch, drawn anew every epoch (0: all of them). An update holds
    # batch_size x captions_per_image captions (captions_per_image 0: batch_size x the median number of
    # captions per image), over all processes of a multi-GPU run.
    captions_per_image: int = 2
    # Sort the captions of every 100 batches by length before cutting them into batches (the batches
    # then come in a random order), so that a batch pads to a short maximum length. Off by default:
    # on Flickr8k it made WS-RAM's epochs about 13% faster but its test scores lower (BLEU-4 0.182 and
    # 0.188 over two seeds, against 0.193-0.198 for three runs without it; eval/bench/README.md).
    length_bucketing: bool = False
    # On CUDA, run the attention scores through compiled kernels and the word log-probabilities
    # through torch.compile (captioner/models/fused.py): same numbers, far less memory traffic.
    # Ignored on the CPU. (Which kernels: research.attention_kernel.)
    compile: bool = True
    # On CUDA, capture the whole update in CUDA graphs, one per batch shape, and replay them
    # (captioner/graphs.py): the same update with one launch instead of hundreds. Ignored on the CPU,
    # under torchrun, and for the settings graphs cannot hold (captioner.graphs.graphable says why).
    cuda_graphs: bool = True
    # Fraction of the updates over which model.initial_state_dropout falls linearly to 0 (0: constant).
    initial_state_dropout_decay: float = 0.0
    learning_rate: float = 5e-3
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # cosine: decay to final_lr_fraction at the end
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    # Polyak averaging: keep an exponential moving average of the parameters, updated after every
    # update with decay min(ema_decay, (1 + n) / (ema_warmup + n)) at update n (so early averages do not
    # remember the initial weights), and validate, pick best.pt by, export and score those averaged
    # weights; training itself runs on the live parameters, unchanged. 0: off (the live weights).
    ema_decay: float = 0.0
    # Until the cap ema_decay binds, the average spans about the last 1 / (ema_warmup - 1) of the
    # updates: 10, the last ninth; 4, the last third. Must exceed 1. With ema_decay 0.999 the cap binds
    # only after about 9,000 updates, so on a Flickr8k budget (2,256) this constant alone sets the span.
    ema_warmup: float = 10.0
    seed: int = 0
    device: str = "cpu"  # under torchrun, "cuda" puts each process on its own GPU, cuda:LOCAL_RANK
    bf16: bool = True  # autocast to bfloat16 on CUDA; ignored on CPU
    validation_samples: int = 10  # K of the validation bound L_K
    validation_beam_size: int = 1
    log_every: int = 20
    progress_bar: bool = True
    # Also write checkpoints/latest.pt every this many updates (0: at epoch ends only); --resume then
    # continues exactly from the update after it, within an epoch or not.
    checkpoint_every: int = 0
    # An update whose loss or gradient is not finite is skipped (parameters, optimiser and batch
    # statistics unchanged) and counted; this many in a row stop the run with an error that names
    # the last good checkpoint (0: never stop).
    max_skipped_updates_in_a_row: int = 5
    # Warn (on stderr, in log.jsonl and metrics.json) when the training loss grows past this many
    # times its first value (at least 1 in magnitude): a learning rate far too high; 0: never warn.
    loss_warning_factor: float = 100.0


@dataclass
class ResearchConfig:
    """Switches that the studies and benchmarks turn: ablations of the method, the reference layout
    and kernel choices. The defaults are the method as specified (shared/design/wsram.md) at its
    fastest; a user training a captioner leaves this section out."""

    # Where WS-RAM draws its K location sequences: "model", the caption-conditioned proposal network
    # q_phi; or "prior", the model's own prior pi (importance weights p(y | a, x), no proposal network:
    # the ablation that shows what the caption-conditioned proposal is worth).
    proposal_source: Literal["model", "prior"] = "model"
    # c^p: the self-normalised estimate of E_p[grad log p(a|x)] from q's samples. Its O(1/K) bias
    # grows with the distance between prior and q, and on the scenes data it kept the prior from
    # following q (eval/README.md); off by default: the prior gets the plain wake update.
    prior_control_variate: bool = False
    # How the prior learns from the K weighted samples: "wake", the spec's -sum_k w~_k log pi(a^k)
    # (minus c^p); "expected", each sampled location's log pi_t(a_t) replaced by its expectation
    # sum_i q_t(i) log pi_t(i) under the proposal it was drawn from (weights unchanged; c^p unused).
    # The sampled form moves the prior by sampling noise alone while the weights carry no signal
    # (q = pi, decoder blind to its glimpse); the expected form is then exactly zero.
    prior_update: Literal["wake", "expected"] = "wake"
    # fused: with a factorised proposal every location is drawn before the decoder runs, which then
    # runs as one LSTM call. stepwise: the decoder runs word by word (the layout REINFORCE needs);
    # same numbers, slower: the reference loop of benchmarks/bench_train.py.
    layout: Literal["fused", "stepwise"] = "fused"
    # Which compiled kernels the attention scores use on CUDA (train.compile): "triton" (hand-written
    # forward and backward, captioner/models/attention_kernels.py) or "inductor" (torch.compile'd
    # reductions).
    attention_kernel: Literal["triton", "inductor"] = "triton"


@dataclass
class DecodeConfig:
    """How captions are generated at test time (the prior only: q needs the caption)."""

    beam_size: int = 3
    max_length: int = 24
    length_penalty: float = 0.0
    block_trigrams: bool = False  # never repeat a word trigram within a caption
    attention_mode: Literal["argmax", "sample", "expected", "marginal"] = "argmax"


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    research: ResearchConfig = field(default_factory=ResearchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# Numbers as people write them. YAML 1.1 (PyYAML) reads 1e-3 and 5E6 as strings (it wants 1.0e-3);
# and "nan", "inf" as strings, ".nan", ".inf" as floats: neither may reach a setting.
_DECIMAL = re.compile(r"[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_NON_FINITE = re.compile(r"[-+]?\.?(?:nan|inf|infinity)", re.IGNORECASE)


def _convert_number(value: Any, annotation: type, key: str) -> int | float:
    """An int or float setting: YAML numbers, and strings such as "1e-3", "-2.5E-1"; NaN and infinities refused."""
    if isinstance(value, str) and _NON_FINITE.fullmatch(value.strip()) or \
            isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        number = float(value.strip().replace("_", ""))
        if not math.isfinite(number):  # e.g. 1e999
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        if annotation is float:
            return number
        if number.is_integer() and re.search(r"[eE]", value):  # 1e6 for an integer setting
            return int(number)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    return float(value)


def _convert(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return from_dict(annotation, value, prefix=key + ".")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation in (int, float):
        return _convert_number(value, annotation, key)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported setting type {annotation!r}")  # pragma: no cover


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a (possibly partial) mapping, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown setting (known in {prefix.rstrip('.') or 'the top level'}: "
            f"{', '.join(sorted(names))})"
        )
    kwargs = {name: _convert(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


# Keys that moved, old dotted name -> new. Files and overrides that use an old name still load: the
# value is read under the new name, with a ConfigRenamedWarning naming both.
RENAMED: dict[str, str] = {
    **{f"data.{key}": f"data.scenes.{key}"
       for key in ("train_size", "val_size", "test_size", "image_size", "min_objects", "max_objects", "seed")},
    "estimator.proposal_source": "research.proposal_source",
    "estimator.prior_control_variate": "research.prior_control_variate",
    "estimator.prior_update": "research.prior_update",
    "estimator.layout": "research.layout",
    "train.attention_kernel": "research.attention_kernel",
}


def migrate(data: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """A copy of the nested mapping `data` with every key of RENAMED moved to its new place; a
    ConfigRenamedWarning names each one. ConfigError when an old and a new name are both given."""
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for old, new in RENAMED.items():
        old_section, old_key = old.split(".")
        section = data.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        *parents, leaf = new.split(".")
        target = data
        for name in parents:
            child = target.get(name)
            if child is None:
                child = target[name] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{name}: expected a mapping of settings, got {child!r}")
            else:
                child = target[name] = dict(child)
            target = child
        if leaf in target:
            raise ConfigError(f"{old}: renamed to {new}, and {source} gives both; keep {new}")
        target[leaf] = value
        warnings.warn(f"{source}: {old} is now {new} (read as {new}={value!r}); rename it to keep this "
                      "working", ConfigRenamedWarning, stacklevel=3)
    return data


def experiment_from_dict(data: dict[str, Any], source: str = "config") -> "ExperimentConfig":
    """An ExperimentConfig from a full or partial mapping, old key names included (see RENAMED)."""
    return from_dict(ExperimentConfig, migrate(data, source))


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """`train.epochs=3` -> {"train": {"epochs": 3}}; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{dotted.strip()}: the value {raw!r} is not valid YAML ({problem}); quote it, "
                          f"e.g. --set '{dotted.strip()}=\"...\"'") from None
    for part in reversed(parts):
        value = {part: value}
    return value


def read_yaml_mapping(path: str | Path, kind: str = "config") -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty file: {}); ConfigError naming the file otherwise."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: {kind} file not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Defaults <- `base` <- YAML file <- overrides, then validated."""
    data: dict[str, Any] = migrate(dict(base or {}), "base settings")
    if path is not None:
        data = _merge(data, migrate(read_yaml_mapping(path, "config"), str(path)))
    for override in overrides or []:
        data = _merge(data, migrate(parse_override(override), f"--set {override}"))
    section = data.get("data")
    dataset = section.get("dataset", DataConfig.dataset) if isinstance(section, dict) else DataConfig.dataset
    if dataset in DATASET_DEFAULTS:
        data = _merge({"data": DATASET_DEFAULTS[dataset]}, data)
    config = from_dict(ExperimentConfig, data)
    validate(config)
    return config


def validate(config: ExperimentConfig) -> None:
    """Check values and their combinations; raise ConfigError naming the key."""

    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")

    def non_negative(key: str, value: float) -> None:
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")

    def probability(key: str, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}: must lie in [0, 1], got {value}")

    d, m, e, t, dec = config.data, config.model, config.estimator, config.train, config.decode
    r, scenes = config.research, config.data.scenes
    for key in ("train_size", "val_size", "test_size", "image_size"):
        positive(f"data.scenes.{key}", getattr(scenes, key))
    for key in ("max_caption_length", "min_word_count"):
        positive(f"data.{key}", getattr(d, key))
    non_negative("data.limit_images", d.limit_images)
    non_negative("data.preload_limit_gib", d.preload_limit_gib)
    if d.dataset in ("flickr8k", "karpathy", "coco") and not d.root:
        raise ConfigError(f"data.root: the folder of the {d.dataset} data set is needed (see data/README.md)")
    if d.dataset == "karpathy" and not d.annotations:
        raise ConfigError("data.annotations: the Karpathy split JSON (dataset_coco.json, dataset_flickr8k.json, ...) is needed")
    if d.dataset == "huggingface" and not d.hf_name:
        raise ConfigError("data.hf_name: the Hugging Face data set (hub name or local parquet folder) is needed")
    pretrained_encoder = m.encoder.name != "small_cnn"
    if d.dataset == "scenes" and pretrained_encoder:
        raise ConfigError(f"model.encoder.name: the built-in scenes data trains 'small_cnn', got {m.encoder.name!r}")
    if d.dataset != "scenes" and not pretrained_encoder:
        raise ConfigError(f"model.encoder.name: {d.dataset} needs a pretrained encoder (efficientnet-lite0, resnet50, ...), "
                          "got 'small_cnn'")
    if pretrained_encoder and not m.encoder.fine_tune and not d.features:
        raise ConfigError("data.features: training a frozen pretrained encoder reads a feature cache; make one with "
                          "`captioner extract` and give its folder (or set model.encoder.fine_tune=true)")
    if not d.check_image_files:
        if d.dataset != "karpathy":
            raise ConfigError(f"data.check_image_files: false is for the karpathy reader only, got data.dataset="
                              f"{d.dataset!r}")
        if m.encoder.fine_tune or not d.features:
            raise ConfigError("data.check_image_files: false needs a feature cache to read (data.features) and a "
                              "frozen encoder (model.encoder.fine_tune=false): otherwise training reads the image files")
    if m.encoder.name == "hf" and not m.encoder.hf_model:
        raise ConfigError("model.encoder.hf_model: name the Hugging Face vision backbone (hub name or local folder)")
    if m.encoder.tune_to:
        _check_tune_to(m.encoder)
    positive("model.encoder.image_size", m.encoder.image_size)
    positive("model.encoder.fine_tune_lr_scale", m.encoder.fine_tune_lr_scale)
    non_negative("model.encoder.glimpse_context", m.encoder.glimpse_context)
    positive("data.scenes.min_objects", scenes.min_objects)
    if scenes.max_objects < scenes.min_objects:
        raise ConfigError(f"data.scenes.max_objects: must be >= data.scenes.min_objects ({scenes.min_objects}), "
                          f"got {scenes.max_objects}")
    for key in ("feature_dim", "grid"):
        positive(f"model.encoder.{key}", getattr(m.encoder, key))
    for key in ("embedding_dim", "hidden_dim", "attention_dim", "proposal_hidden_dim", "glimpses_per_word"):
        positive(f"model.{key}", getattr(m, key))
    if m.attention == "soft" and m.glimpses_per_word != 1:
        raise ConfigError(f"model.glimpses_per_word: soft attention's glimpse is already the expectation over all "
                          f"locations; several hard glimpses are for model.attention: hard, got {m.glimpses_per_word}")
    for key, value in (("model.dropout", m.dropout), ("model.embedding_dropout", m.embedding_dropout),
                       ("model.encoder.feature_dropout", m.encoder.feature_dropout)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key}: must lie in [0, 1), got {value}")
    probability("model.initial_state_dropout", m.initial_state_dropout)  # 1: never the mean feature
    positive("estimator.samples", e.samples)
    if e.name == "vimco" and e.samples < 2:
        raise ConfigError(f"estimator.samples: VIMCO's baselines leave one of the K samples out, so K >= 2, got {e.samples}")
    probability("estimator.defensive_weight", e.defensive_weight)
    probability("estimator.expected_glimpse_probability", e.expected_glimpse_probability)
    probability("estimator.baseline_decay", e.baseline_decay)
    for key in ("sleep_weight", "reinforce_weight", "entropy_weight", "doubly_stochastic_weight"):
        non_negative(f"estimator.{key}", getattr(e, key))
    if (e.name == "soft") != (m.attention == "soft"):
        raise ConfigError(
            f"estimator.name: {e.name!r} does not fit model.attention={m.attention!r} "
            "(the soft estimator trains soft attention; wsram and var train hard attention)"
        )
    if e.name == "wsram" and m.proposal == "none" and r.proposal_source == "model":
        raise ConfigError("model.proposal: wsram needs a proposal network ('factorised' or 'sequential'), got 'none'"
                          " (or set research.proposal_source: prior)")
    if e.name == "wsram" and r.proposal_source == "prior" and r.prior_update == "expected":
        raise ConfigError("research.prior_update: 'expected' takes the expectation under the proposal network; "
                          "with research.proposal_source: prior it would be zero (use 'wake')")
    if e.name == "wsram" and r.proposal_source == "prior" and e.sleep_update:
        raise ConfigError("estimator.sleep_update trains a proposal network; with research.proposal_source: prior "
                          "there is none to train")
    for key in ("epochs", "batch_size", "validation_samples", "validation_beam_size", "log_every"):
        positive(f"train.{key}", getattr(t, key))
    non_negative("train.max_steps", t.max_steps)
    non_negative("train.checkpoint_every", t.checkpoint_every)
    non_negative("train.max_skipped_updates_in_a_row", t.max_skipped_updates_in_a_row)
    non_negative("train.loss_warning_factor", t.loss_warning_factor)
    non_negative("train.captions_per_image", t.captions_per_image)
    positive("train.learning_rate", t.learning_rate)
    non_negative("train.weight_decay", t.weight_decay)
    probability("train.final_lr_fraction", t.final_lr_fraction)
    probability("train.initial_state_dropout_decay", t.initial_state_dropout_decay)
    positive("train.grad_clip", t.grad_clip)
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: must lie in [0, 1) (0: no averaging), got {t.ema_decay}")
    if not t.ema_warmup > 1.0:
        raise ConfigError(f"train.ema_warmup: must exceed 1 (10: the average spans the last ninth of the updates), "
                          f"got {t.ema_warmup}")
    if t.device != "cpu" and not t.device.startswith("cuda"):
        raise ConfigError(f"train.device: must be 'cpu', 'cuda' or 'cuda:N', got {t.device!r}")
    probability("data.flip_probability", config.data.flip_probability)
    if config.data.flip_probability > 0:
        if config.data.dataset == "scenes":
            raise ConfigError("data.flip_probability: the built-in scenes data has no mirrored features (its "
                              "captions name where objects are); flip augmentation is for cached features of a "
                              "data set on disk")
        if m.encoder.fine_tune:
            raise ConfigError("data.flip_probability: flip augmentation reads a mirrored feature cache; a "
                              "fine-tuned encoder reads image files (set model.encoder.fine_tune: false)")
        if not config.data.mirrored_features:
            raise ConfigError("data.mirrored_features: data.flip_probability > 0 needs the cache of mirrored images "
                              "(make it with `captioner extract --mirror --out FOLDER`)")
    positive("decode.beam_size", dec.beam_size)
    positive("decode.max_length", dec.max_length)
    non_negative("decode.length_penalty", dec.length_penalty)


# The MBConv blocks of each EfficientNet-Lite (captioner.models.backbones builds them; a test checks
# that the two agree): what model.encoder.layer and tune_to may name.
EFFNET_BLOCK_COUNTS = {"efficientnet-lite0": 16, "efficientnet-lite1": 21, "efficientnet-lite2": 21}


def _check_tune_to(encoder: EncoderConfig) -> None:
    """model.encoder.tune_to: an EfficientNet-Lite block after `layer`, on a cached (frozen) backbone."""
    key = "model.encoder.tune_to"
    if encoder.name not in EFFNET_BLOCK_COUNTS:
        raise ConfigError(f"{key}: trains an EfficientNet-Lite backbone's blocks after its cached tap; "
                          f"model.encoder.name is {encoder.name!r}")
    if encoder.fine_tune:
        raise ConfigError(f"{key}: is the cached alternative to model.encoder.fine_tune (which trains the whole "
                          f"backbone from images); set one of them")
    blocks = EFFNET_BLOCK_COUNTS[encoder.name]
    layer = encoder.layer or f"block{blocks - 1}"  # the backbones' default tap: their last block
    if layer == "head" or not layer.startswith("block") or not layer[len("block"):].isdigit():
        raise ConfigError(f"{key}: model.encoder.layer must be an MBConv block (block0..block{blocks - 1}) for "
                          f"tune_to, got {layer!r}")
    after = [f"block{i}" for i in range(int(layer[len("block"):]) + 1, blocks)]
    if encoder.tune_to not in after:
        raise ConfigError(f"{key}: must be a block after model.encoder.layer {layer!r} ({', '.join(after) or 'none is'}"
                          f"), got {encoder.tune_to!r}")


def config_for_estimator(name: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings that make a model fit estimator `name` (attention kind, proposal)."""
    data = dict(base or {})
    model = dict(data.get("model", {}))
    if name == "soft":
        model.setdefault("attention", "soft")
        model.setdefault("proposal", "none")
    elif name in ("var", "vimco"):
        model.setdefault("proposal", "none")
    data["model"] = model
    data["estimator"] = {**data.get("estimator", {}), "name": name}
    return data
