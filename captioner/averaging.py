"""Polyak averaging: an exponential moving average of a model's trainable parameters (train.ema_decay).

The average is a second copy of the parameters, in their own dtype, updated in place after every
update and never read by training. Validation, the choice of best.pt, the exported model and the
test scores use it instead of the live parameters, by copying it into the parameters' own storage
and back (`swapped_in`): the storage never moves, so CUDA graphs captured on the parameters stay
valid, and the live values come back bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def average_decay(ema_decay: float, updates: int, warmup: float = 10.0) -> float:
    """The decay of the average after `updates` updates: min(ema_decay, (1 + n) / (warmup + n)), so that
    the first updates' averages are not pinned to the initial weights. Until the cap ema_decay is
    reached the average spans about the last 1 / (warmup - 1) of the updates: with the default 10 the
    last ninth (with ema_decay 0.999 the cap is reached only after about 9,000 updates); with 4 the
    last third; with 2 nearly all of them alike."""
    return min(ema_decay, (1.0 + updates) / (warmup + updates))


class ParameterAverage:
    """The moving average of `model`'s parameters that require gradients (named as in
    model.named_parameters())."""

    def __init__(self, model: nn.Module, ema_decay: float, warmup: float = 10.0):
        if not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {ema_decay}")
        if not warmup > 1.0:
            raise ValueError(f"the average's warm-up constant must exceed 1, got {warmup}")
        self.ema_decay = ema_decay
        self.warmup = warmup
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.parameters = [p for _, p in named]
        with torch.no_grad():
            self.average = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """Move the average towards the parameters after update number `updates` (counted from 1):
        average += (1 - decay) * (parameters - average). An update that was skipped for a non-finite
        loss left the parameters as they were; the average then moves towards those same values."""
        weight = 1.0 - average_decay(self.ema_decay, updates, self.warmup)
        torch._foreach_lerp_(self.average, self.parameters, weight)

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        """Overwrite the parameters with the average (their storage is kept)."""
        for parameter, average in zip(self.parameters, self.average):
            parameter.copy_(average)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The parameters hold the average inside the block and their own values again after it."""
        with torch.no_grad():
            live = [p.detach().clone() for p in self.parameters]
        self.copy_to_parameters()
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, value in zip(self.parameters, live):
                    parameter.copy_(value)

    def named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        return list(zip(self.names, self.average))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.named_tensors())

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
        if list(state) != self.names:
            missing = sorted(set(self.names) - set(state))
            extra = sorted(set(state) - set(self.names))
            raise ValueError(f"{source}: its parameter average does not fit the model (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
        for average, name in zip(self.average, self.names):
            average.copy_(state[name])
