"""Data sets as splits of images with reference captions, ready for batching."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from captioner.config import DataConfig
from captioner.data.batching import CaptionBatch, encode_captions
from captioner.data.images import normalize_images
from captioner.data.scenes import ScenesSpec, make_scene_splits
from captioner.data.vocabulary import Vocabulary


@dataclass
class CaptionSplit:
    """One split held in memory: images (N, 3, S, S) normalised, and their reference captions."""

    name: str
    images: torch.Tensor
    captions: list[list[str]]
    image_ids: list[int]
    word_cells: list[list[list[int]]] | None = None  # per image, per caption, per token (scenes only)
    raw_images: np.ndarray | None = None  # uint8 (N, S, S, 3), for pictures and demos

    def __len__(self) -> int:
        return len(self.image_ids)

    def batch(self, indices: Sequence[int], vocabulary: Vocabulary, max_length: int | None,
              generator: torch.Generator | None = None, captions_per_image: int = 0) -> CaptionBatch:
        """Images `indices` with their captions (training captions cut to `max_length` words): all of
        them, or `captions_per_image` of each drawn without replacement with `generator`."""
        indices = [int(i) for i in indices]
        captions, cells, owner = [], [], []
        for position, i in enumerate(indices):
            chosen = range(len(self.captions[i]))
            if 0 < captions_per_image < len(self.captions[i]):
                chosen = torch.randperm(len(self.captions[i]), generator=generator)[:captions_per_image].tolist()
            captions.extend(self.captions[i][c] for c in chosen)
            owner.extend([position] * len(chosen))
            if self.word_cells is not None:
                cells.extend(self.word_cells[i][c] for c in chosen)
        text = encode_captions(captions, vocabulary, max_length, cells if self.word_cells is not None else None)
        return CaptionBatch(self.images[indices], torch.tensor(owner), text, [self.image_ids[i] for i in indices])


def load_dataset(config: DataConfig) -> dict[str, CaptionSplit]:
    """The train / val / test splits named by `config.dataset`."""
    if config.dataset != "scenes":
        raise ValueError(f"data.dataset: unknown data set {config.dataset!r}")
    spec = ScenesSpec(
        train=config.train_size, val=config.val_size, test=config.test_size, image_size=config.image_size,
        min_objects=config.min_objects, max_objects=config.max_objects, seed=config.seed,
    )
    splits = {}
    for name, examples in make_scene_splits(spec).items():
        raw = np.stack([e.image for e in examples])
        splits[name] = CaptionSplit(
            name=name,
            images=normalize_images(raw),
            captions=[list(e.captions) for e in examples],
            image_ids=[e.image_id for e in examples],
            word_cells=[[list(c) for c in e.word_cells] for e in examples],
            raw_images=raw,
        )
    return splits
