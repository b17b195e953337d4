"""Image encoders: each turns a batch of images into a grid of feature vectors."""

from __future__ import annotations

import torch
from torch import nn

from captioner.config import EncoderConfig

# Per-channel statistics the encoders expect images to be normalised with.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.25, 0.25, 0.25)


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
        if self.position is not None:
            features = features + self.position
        return features


def build_encoder(config: EncoderConfig) -> SmallConvEncoder:
    if config.name == "small_cnn":
        return SmallConvEncoder(config)
    raise ValueError(f"model.encoder.name: unknown encoder {config.name!r}")  # pragma: no cover
