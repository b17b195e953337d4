"""What every benchmark needs to time GPU work: wait for the device before reading the clock."""

from __future__ import annotations

import platform

import torch


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (a GPU runs behind the host); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def card(device: torch.device) -> dict:
    """The machine a number was measured on: the card's name and memory, torch, CUDA, Python."""
    on_cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if on_cuda else platform.processor() or "cpu",
        "device_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30 if on_cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
    }
