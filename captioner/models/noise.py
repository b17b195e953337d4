"""Random draws for one process's share of a batch, the same however the batch is split.

A batch split across processes (multi-GPU training) must draw the same attention samples as one
process would: `BatchShare` draws the noise of every row of the whole batch and keeps this
process's rows. Every process seeds its generators alike and draws the same shapes, so their
generators stay in step with each other and with a single-process run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchShare:
    """Rows [start, stop) of a batch of `total` rows, with the generators of this update.

    `generator` (on the training device) gives the noise of sampled locations and words; `host` (a
    CPU generator) gives decisions about the whole batch (VAR's coin for an expected-glimpse
    minibatch), which then need no device-to-host wait."""

    generator: torch.Generator
    host: torch.Generator
    start: int
    stop: int
    total: int

    def uniform(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """U(0, 1) float64 noise of `shape` (rows, ...) for this share: rows = m x (stop - start) for m
        consecutive rows per batch row (K samples per caption, caption-major), cut from one draw for
        all m x total rows."""
        per_row, extra = divmod(shape[0], self.stop - self.start)
        if extra:
            raise ValueError(f"{shape[0]} rows are not a whole number of rows for each of this share's "
                             f"{self.stop - self.start}")
        noise = torch.rand((self.total * per_row, *shape[1:]), generator=self.generator, device=device,
                           dtype=torch.float64)
        return noise[self.start * per_row:self.stop * per_row]


def host_generator(generator: torch.Generator | BatchShare | None) -> torch.Generator | None:
    """The CPU generator for a decision about a whole batch: a BatchShare's `host`, else `generator`."""
    return generator.host if isinstance(generator, BatchShare) else generator


def batch_uniform(generator: torch.Generator | BatchShare | None) -> float:
    """One U(0, 1) draw for a decision about a whole batch, from `host_generator(generator)`, made on
    that generator's own device (a plain CUDA generator, as the gradient-variance probe passes, cannot
    draw a CPU tensor)."""
    host = host_generator(generator)
    return float(torch.rand((), generator=host, device=host.device if host is not None else None))
