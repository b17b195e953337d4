"""What every benchmark needs to time GPU work: wait for the device before reading the clock."""

from __future__ import annotations

import torch


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (a GPU runs behind the host); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
