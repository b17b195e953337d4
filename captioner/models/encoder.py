"""Image encoders: each turns a batch of images into a grid of feature vectors."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from captioner.config import EncoderConfig


class GlimpseContext(nn.Module):
    """A wider glimpse (model.encoder.glimpse_context = r): F_i + W m_i, where m_i is the mean of the
    grid's cells within r rows and r columns of cell i (those inside the grid: corner cells average
    fewer). W starts at zero, so a new model begins with each location holding its cell alone; what
    the neighbourhood adds is learned. features (N, L, D), L = grid * grid in row-major order."""

    def __init__(self, dim: int, grid: int, radius: int):
        super().__init__()
        if radius < 1:
            raise ValueError(f"glimpse_context: the radius must be >= 1, got {radius}")
        self.grid, self.radius = grid, radius
        self.mix = nn.Linear(dim, dim)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def neighbourhood_mean(self, features: torch.Tensor) -> torch.Tensor:
        """(N, L, D) -> (N, L, D): each cell's mean over its (2r + 1) x (2r + 1) window within the grid."""
        n, cells, dim = features.shape
        g = self.grid
        if cells != g * g:
            raise ValueError(f"glimpse_context: expected {g * g} locations ({g} x {g}), got {cells}")
        maps = features.transpose(1, 2).reshape(n, dim, g, g)
        # a window wider than the grid is the whole grid: clip the kernel (avg_pool2d's padding limit)
        r = min(self.radius, g - 1)
        pooled = F.avg_pool2d(maps, 2 * r + 1, stride=1, padding=r, count_include_pad=False)
        return pooled.flatten(2).transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.mix(self.neighbourhood_mean(features))


class SmallConvEncoder(nn.Module):
    """A small CNN trained jointly with the captioner, applied to each cell of a grid x grid layout.

    images (N, 3, S, S) -> features (N, L, D), L = grid * grid, location index = row * grid + col.
    An optional learned embedding per location lets a single glimpse tell where it was taken.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        d = config.feature_dim
        self.grid = config.grid
        self.feature_dim = d

        def conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

        # Small on purpose: the built-in data set trains on a laptop CPU in minutes.
        self.body = nn.Sequential(
            *conv(3, config.channels, stride=2),
            *conv(config.channels, 4 * config.channels // 3), nn.MaxPool2d(2),
            *conv(4 * config.channels // 3, d), nn.MaxPool2d(2),
        )
        # Each cell of the layout is encoded on its own and averaged into one location, so a glimpse
        # holds exactly what is in its cell (with a whole-image CNN, receptive fields spill into the
        # neighbouring cells and the learned attention need not land on the object it names).
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = nn.Conv2d(d, d, 1)
        self.norm = nn.LayerNorm(d) if config.normalize_features else None
        # built only when on, so that models without it draw the same initial weights as before
        self.context = GlimpseContext(d, config.grid, config.glimpse_context) if config.glimpse_context else None
        num_locations = config.grid * config.grid
        self.position = nn.Parameter(torch.zeros(1, num_locations, d)) if config.position_embedding else None
        if self.position is not None:
            nn.init.normal_(self.position, std=config.position_embedding_scale)

    @property
    def num_locations(self) -> int:
        return self.grid * self.grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, c, height, width = images.shape
        g = self.grid
        if height % g or width % g:
            raise ValueError(f"image size {height}x{width} is not divisible by the grid {g}")
        # (N, C, g*h, g*w) -> (N*g*g, C, h, w), cells in row-major order
        cells = images.view(n, c, g, height // g, g, width // g).permute(0, 2, 4, 1, 3, 5)
        cells = cells.reshape(n * g * g, c, height // g, width // g)
        pooled = self.project(self.pool(self.body(cells)))  # (N*L, D, 1, 1)
        features = pooled.view(n, g * g, self.feature_dim)  # (N, L, D)
        if self.norm is not None:
            features = self.norm(features)
        if self.context is not None:
            features = self.context(features)
        if self.position is not None:
            features = features + self.position
        return features


def backbone_name(config: EncoderConfig) -> str:
    """The name captioner.models.backbones knows the configured backbone by."""
    return f"hf:{config.hf_model}" if config.name == "hf" else config.name


class PretrainedGridEncoder(nn.Module):
    """A pretrained backbone's feature grid, adapted for the decoder.

    images (N, 3, S, S) uint8 RGB -> backbone grid (N, L, C) -> adapter -> (N, L, D). Training from
    a feature cache skips the backbone and feeds the cached grid to `adapt`. The adapter (LayerNorm
    over C, a linear map to D = feature_dim, the glimpse context when on, learned position codes) is
    what the captioner learns on top of a frozen backbone; LayerNorm puts grids of any backbone on
    one scale. With `tune_to` (EfficientNet-Lite), the adapter starts with copies of the backbone's
    blocks after the tap, up to `tune_to`, trained with the rest: the cache holds the tap's grid, the
    decoder reads the grid of `tune_to`."""

    def __init__(self, config: EncoderConfig, pretrained: bool | None = None):
        super().__init__()
        from captioner.models.backbones import build_backbone

        self.fine_tune = config.fine_tune
        self.backbone = build_backbone(backbone_name(config), config.layer or None, config.image_size,
                                       pretrained=config.pretrained if pretrained is None else pretrained)
        spec = self.backbone.spec
        # model.encoder.tune_to: the backbone's blocks after the (cached) tap, up to tune_to, run in
        # the adapter and are trained; the decoder sees their output grid.
        self.tuned = None
        self.tuned_spec = spec
        if config.tune_to:
            self.tuned, self.tuned_spec = self.backbone.blocks_after(config.tune_to)
        out = self.tuned_spec
        self.grid = out.grid
        self.feature_dim = config.feature_dim
        self.norm = nn.LayerNorm(out.channels)
        self.project = nn.Linear(out.channels, config.feature_dim)
        self.dropout = nn.Dropout(config.feature_dropout)
        self.context = (GlimpseContext(config.feature_dim, out.grid, config.glimpse_context)
                        if config.glimpse_context else None)
        self.position = None
        if config.position_embedding:
            self.position = nn.Parameter(torch.zeros(1, out.grid * out.grid, config.feature_dim))
            nn.init.normal_(self.position, std=config.position_embedding_scale)
        if not self.fine_tune:
            self.backbone.requires_grad_(False)

    @property
    def num_locations(self) -> int:
        return self.grid * self.grid

    @property
    def spec(self):
        """The backbone's tap: what a feature cache for this encoder holds (with tune_to, the grid
        the decoder reads is `tuned_spec`'s)."""
        return self.backbone.spec

    def train(self, mode: bool = True) -> "PretrainedGridEncoder":
        """Set training mode; the tuned blocks' BatchNorm layers, like the backbone's, stay in eval mode
        (normalising with the ImageNet statistics, which small caption batches would only corrupt)."""
        from captioner.models.backbones import keep_batch_norm_frozen

        super().train(mode)
        if self.tuned is not None:
            keep_batch_norm_frozen(self.tuned)
        return self

    def adapt(self, grid: torch.Tensor) -> torch.Tensor:
        """Backbone grid (N, L, C), e.g. from a feature cache -> decoder features (N, L', D): through the
        tuned blocks first when model.encoder.tune_to is set (L' = their output grid's cells)."""
        grid = grid.to(self.project.weight.dtype)
        if self.tuned is not None:
            n, cells, channels = grid.shape
            side = self.backbone.spec.grid
            if cells != side * side or channels != self.backbone.spec.channels:
                raise ValueError(f"adapt: expected backbone grids (N, {side * side}, {self.backbone.spec.channels}) "
                                 f"of {self.backbone.spec.layer}, got {tuple(grid.shape)}")
            maps = self.tuned(grid.transpose(1, 2).reshape(n, channels, side, side))
            grid = maps.flatten(2).transpose(1, 2)
        features = self.project(self.norm(grid))
        if self.context is not None:
            features = self.context(features)
        features = self.dropout(features)
        if self.position is not None:
            features = features + self.position
        return features

    def backbone_grid(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0-255 float) RGB images (N, 3, S, S) -> backbone grid (N, L, C)."""
        inputs = self.backbone.preprocess(images)
        if self.fine_tune and self.training:
            return self.backbone(inputs)
        with torch.no_grad():
            return self.backbone(inputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.adapt(self.backbone_grid(images))


def build_encoder(config: EncoderConfig, pretrained: bool | None = None) -> nn.Module:
    if config.name == "small_cnn":
        return SmallConvEncoder(config)
    return PretrainedGridEncoder(config, pretrained)
