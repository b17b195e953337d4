"""One training update, shared by the Trainer and benchmarks/bench_train.py.

The update is written for a GPU: inputs, captions and parameters already on the device, bf16
autocast, a fused optimiser, gradient clipping by foreach kernels, and no value read back to the
host, so the CPU can queue the next update while the GPU runs this one.
"""

from __future__ import annotations

import contextlib

import torch

from captioner.config import EstimatorConfig
from captioner.data.batching import CaptionText
from captioner.estimators import ReinforceBaseline, compute_loss


def autocast_context(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; nothing on the CPU (where it would only slow things down)."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(parameter_groups: list[dict], learning_rate: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW; one fused kernel for all parameters on CUDA."""
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(parameter_groups, lr=learning_rate, weight_decay=weight_decay, **fused)


def training_update(
    model,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    input_kind: str,
    rows: torch.Tensor,
    text: CaptionText,
    estimator: EstimatorConfig,
    baseline: ReinforceBaseline,
    grad_clip: float,
    bf16: bool = True,
    generator: torch.Generator | None = None,
    loss_module=None,
) -> dict[str, torch.Tensor]:
    """Encode the M images of `inputs` once, score the N captions of `text` (rows[n] = the image of
    caption n), backpropagate, clip and step. Returns detached scalar tensors (loss, grad_norm and
    the estimator's diagnostics), left on the device: reading them is the caller's choice.

    `loss_module`, when given, is called as loss_module(inputs, input_kind, rows, text, generator)
    instead (a DistributedDataParallel wrapper, which must see the forward pass)."""
    device = inputs.device
    with autocast_context(device, bf16):
        if loss_module is not None:
            result = loss_module(inputs, input_kind, rows, text, generator)
        else:
            features = model.encode_inputs(inputs, input_kind)
            result = compute_loss(model, features, text, estimator, baseline, generator, rows)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip, foreach=device.type == "cuda")
    optimizer.step()
    return {"loss": result.loss.detach(), "grad_norm": grad_norm.detach(), **result.diagnostics}
