"""Turning captions into padded tensors, and batches of images with their captions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from captioner.data.vocabulary import Vocabulary


@dataclass
class CaptionText:
    """Teacher-forcing tensors for N captions of at most T tokens (the last one <eos>).

    inputs (N, T) = y_0..y_{T-1} with y_0 = <bos>; targets (N, T) = y_1..y_T; mask (N, T) is True
    on real tokens; lengths (N,) counts them; word_cells (N, T) is the ground-truth location of
    each target word's object, or -1 (only for data that records it)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    word_cells: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "CaptionText":
        return CaptionText(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                              for f in fields(self)})

    def repeat(self, times: int) -> "CaptionText":
        """Each caption `times` times in a row (caption-major): row n*times + k is caption n."""
        return CaptionText(**{f.name: None if getattr(self, f.name) is None
                              else getattr(self, f.name).repeat_interleave(times, 0) for f in fields(self)})

    def rows(self, start: int, stop: int) -> "CaptionText":
        """Captions start..stop - 1 (views, no copy)."""
        return CaptionText(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[start:stop]
                              for f in fields(self)})

    def __len__(self) -> int:
        return self.inputs.shape[0]


def encode_captions(
    captions: Sequence[str],
    vocabulary: Vocabulary,
    max_length: int | None = None,
    word_cells: Sequence[Sequence[int]] | None = None,
) -> CaptionText:
    """Pad token ids of `captions` (each cut to `max_length` words, then <eos>)."""
    encoded = [vocabulary.encode(c, max_length) for c in captions]
    n, steps = len(encoded), max(len(e) for e in encoded)
    targets = torch.full((n, steps), vocabulary.pad_id, dtype=torch.long)
    cells = torch.full((n, steps), -1, dtype=torch.long) if word_cells is not None else None
    for i, ids in enumerate(encoded):
        targets[i, : len(ids)] = torch.tensor(ids)
        if cells is not None:
            kept = list(word_cells[i])[: len(ids) - 1]
            if kept:
                cells[i, : len(kept)] = torch.tensor(kept)
    return teacher_forcing(targets, vocabulary, word_cells=cells)


def teacher_forcing(targets: torch.Tensor, vocabulary: Vocabulary, lengths: torch.Tensor | None = None,
                    word_cells: torch.Tensor | None = None) -> CaptionText:
    """CaptionText of padded target ids (N, T) (each caption's ids, <eos>, then <pad>), on their device:
    inputs are <bos> and the targets shifted right. `lengths` (N,), when known, saves counting them."""
    bos = torch.full((targets.shape[0], 1), vocabulary.bos_id, dtype=targets.dtype, device=targets.device)
    inputs = torch.cat([bos, targets[:, :-1]], 1)
    inputs = inputs.masked_fill(inputs == vocabulary.eos_id, vocabulary.pad_id)
    mask = targets != vocabulary.pad_id
    return CaptionText(inputs, targets, mask, mask.sum(1) if lengths is None else lengths, word_cells)


@dataclass
class CaptionBatch:
    """Model inputs of B images and the captions that go with them: caption n belongs to
    inputs[image_index[n]]. input_kind: "images" (B, 3, S, S) or "features" (B, L, C) backbone grids."""

    inputs: torch.Tensor
    image_index: torch.Tensor  # (N,)
    text: CaptionText
    image_ids: list
    input_kind: str = "images"

    def to(self, device: torch.device | str) -> "CaptionBatch":
        return CaptionBatch(self.inputs.to(device, non_blocking=True), self.image_index.to(device),
                            self.text.to(device), self.image_ids, self.input_kind)
