"""One training update, shared by the Trainer and benchmarks/bench_train.py.

The update is written for a GPU: inputs, captions and parameters already on the device, bf16
autocast, a fused optimiser, gradient clipping by foreach kernels, and no value read back to the
host, so the CPU can queue the next update while the GPU runs this one.
"""

from __future__ import annotations

import contextlib

import torch

from captioner.config import EstimatorConfig, ResearchConfig
from captioner.data.batching import CaptionText
from captioner.estimators import ReinforceBaseline, compute_loss


def autocast_context(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; nothing on the CPU (where it would only slow things down)."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(parameter_groups: list[dict], learning_rate: float, weight_decay: float,
                   device: torch.device, capturable: bool = False) -> torch.optim.Optimizer:
    """AdamW; one fused kernel for all parameters on CUDA. `capturable` (CUDA only): the step counts
    and every group's learning rate live in device tensors (fill them with `set_learning_rate`), so
    that the step can be captured in a CUDA graph (captioner.graphs)."""
    if device.type != "cuda":
        return torch.optim.AdamW(parameter_groups, lr=learning_rate, weight_decay=weight_decay)
    if capturable:
        parameter_groups = [{**group, "lr": torch.tensor(float(group.get("lr", learning_rate)), device=device)}
                            for group in parameter_groups]
        return torch.optim.AdamW(parameter_groups, lr=torch.tensor(learning_rate, device=device),
                                 weight_decay=weight_decay, fused=True, capturable=True)
    return torch.optim.AdamW(parameter_groups, lr=learning_rate, weight_decay=weight_decay, fused=True)


def set_learning_rate(group: dict, value: float) -> None:
    """Set a parameter group's learning rate: in place where it is a device tensor (a capturable
    optimiser, whose CUDA graphs read it from there), else as a number."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


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
    research: ResearchConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Encode the M images of `inputs` once, score the N captions of `text` (rows[n] = the image of
    caption n), backpropagate, clip and step. Returns detached scalar tensors (loss, grad_norm,
    `skipped` and the estimator's diagnostics), left on the device: reading them is the caller's choice.

    A non-finite loss or gradient never reaches the parameters: the step is skipped (parameters,
    moments and step counts unchanged) and `skipped` is 1. On CUDA the fused optimiser skips it on the
    device (its found_inf input, as under a GradScaler), so no value is read back to the host.

    `loss_module`, when given, is called as loss_module(inputs, input_kind, rows, text, generator)
    instead (a DistributedDataParallel wrapper, which must see the forward pass)."""
    device = inputs.device
    # Batch statistics that this forward pass moves (batch norm's running averages): kept, to be put
    # back if the update turns out non-finite.
    running = [buffer for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
               for buffer in module.buffers()] if model.training else []
    saved = [buffer.clone() for buffer in running]
    with autocast_context(device, bf16):
        if loss_module is not None:
            result = loss_module(inputs, input_kind, rows, text, generator)
        else:
            features = model.encode_inputs(inputs, input_kind)
            result = compute_loss(model, features, text, estimator, baseline, generator, rows, research)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip, foreach=device.type == "cuda")
    bad = ~(torch.isfinite(grad_norm) & torch.isfinite(result.loss.detach()))
    skipped = bad.to(torch.float32)
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = skipped  # the fused kernels leave every tensor as it was when it is 1
        optimizer.step()
    elif not bool(bad):
        optimizer.step()
    for buffer, kept in zip(running, saved):
        buffer.copy_(torch.where(bad, kept, buffer))
    return {"loss": result.loss.detach(), "grad_norm": grad_norm.detach(), "skipped": skipped, **result.diagnostics}
