"""The memory-heavy tensor pieces of a training step, written so that `torch.compile` can fuse them.

Two parts of a step touch tensors far larger than their inputs and outputs:
- additive attention scores s[n, t, l] = w . tanh(P[row(n), l] + Q[n, t]) + b, whose eager form
  materialises an (N, T, L, A) tensor (at COCO-like sizes, 1,600 x 16 x 196 x 512 = 2.6 G values);
- the target words' log-probabilities, whose eager form materialises log_softmax over (N, T, V).

Each is one small function of tensors. Eagerly it runs as plain PyTorch; after
`use_compiled_kernels(True)` (the trainer does this on a GPU when `train.compile` is on) the
attention scores run as two hand-written Triton kernels (`attention_kernels`, the default; or, with
`attention="inductor"`, as separate `torch.compile`d reductions that recompute the tanh), neither of
which stores the (N, T, L, A) tensor, and the word scores run through `torch.compile` as a
log-sum-exp and a gather. All forms compute the same function; tests/test_fast_path.py and
tests/test_attention_kernels.py check them against each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.nn import functional as F

from captioner.models import attention_kernels

_compiled: dict[str, Callable] = {}
_enabled = False
_attention = "triton"
ATTENTION_KERNELS = ("triton", "inductor")


def use_compiled_kernels(enabled: bool, attention: str = "triton") -> None:
    """Route `additive_scores` and `target_log_probs` through compiled kernels (True) or eager
    PyTorch. `attention`: "triton" (the hand-written kernels, where Triton can run: CUDA) or
    "inductor" (torch.compile'd reductions)."""
    global _enabled, _attention
    if attention not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {ATTENTION_KERNELS}, got {attention!r}")
    _enabled, _attention = enabled, attention


@contextlib.contextmanager
def compiled_kernels(enabled: bool = True, attention: str = "triton") -> Iterator[None]:
    """`use_compiled_kernels(enabled, attention)` inside the block, the previous setting after it."""
    previous = (_enabled, _attention)
    use_compiled_kernels(enabled, attention)
    try:
        yield
    finally:
        use_compiled_kernels(*previous)


def _dispatch(name: str, function: Callable) -> Callable:
    if not _enabled:
        return function
    if name not in _compiled:
        # dynamic: batch size and caption length change from batch to batch (length bucketing).
        _compiled[name] = torch.compile(function, dynamic=True)
    return _compiled[name]


def _additive_scores(projected, query, weight, bias, rows):
    keys = projected if rows is None else projected.index_select(0, rows)
    hidden = torch.tanh(keys.unsqueeze(1) + query.unsqueeze(2))  # (N, T, L, A): fused away when compiled
    return (hidden * weight).sum(-1) + bias


def _scores_forward(projected, query, weight, rows):
    return (torch.tanh(projected.index_select(0, rows).unsqueeze(1) + query.unsqueeze(2)) * weight).sum(-1)


def _scores_grad_query(projected, query, weight, rows, grad):
    hidden = torch.tanh(projected.index_select(0, rows).unsqueeze(1) + query.unsqueeze(2))
    return (grad.unsqueeze(-1) * (1 - hidden * hidden)).sum(2) * weight  # (N, T, A)


def _scores_grad_keys(projected, query, weight, rows, grad):
    hidden = torch.tanh(projected.index_select(0, rows).unsqueeze(1) + query.unsqueeze(2))
    return (grad.unsqueeze(-1) * (1 - hidden * hidden)).sum(1) * weight  # (N, L, A)


def _scores_grad_weight(projected, query, weight, rows, grad):
    hidden = torch.tanh(projected.index_select(0, rows).unsqueeze(1) + query.unsqueeze(2))
    return (grad.unsqueeze(-1) * hidden).sum((0, 1, 2))  # (A,)


class _CompiledAdditiveScores(torch.autograd.Function):
    """Additive scores whose forward and backward are separate compiled reductions, each
    recomputing the tanh: none of them stores an (N, T, L, A) tensor. (Compiling the plain
    function lets inductor write the (N, T, L, A) gradient to memory in the backward, which on an
    H200 at COCO-like sizes took two thirds of a WS-RAM update: eval/bench/README.md.)"""

    @staticmethod
    def forward(ctx, projected, query, weight, bias, rows):
        ctx.save_for_backward(projected, query, weight, rows)
        return _compiled_function("scores_forward", _scores_forward)(projected, query, weight, rows) + bias

    @staticmethod
    def backward(ctx, grad):
        projected, query, weight, rows = ctx.saved_tensors
        grad = grad.contiguous()
        arguments = (projected, query, weight, rows, grad)
        d_query = _compiled_function("grad_query", _scores_grad_query)(*arguments)
        d_keys = _compiled_function("grad_keys", _scores_grad_keys)(*arguments)
        d_weight = _compiled_function("grad_weight", _scores_grad_weight)(*arguments)
        d_projected = torch.zeros_like(projected).index_add_(0, rows, d_keys.to(projected.dtype))
        return d_projected, d_query.to(query.dtype), d_weight.to(weight.dtype), grad.sum().to(weight.dtype), None


def _compiled_function(name: str, function: Callable) -> Callable:
    if name not in _compiled:
        _compiled[name] = torch.compile(function, dynamic=True)
    return _compiled[name]


def additive_scores(projected: torch.Tensor, query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    rows: torch.Tensor | None = None) -> torch.Tensor:
    """Attention scores for every step: projected (M, L, A) keys, one set per image; query (N, T, A);
    rows (N,) the image of each sequence (None: M = N, sequence n reads image n); weight (A,),
    bias () -> (N, T, L)."""
    # Under autocast the eager form would run the big product in bf16: match what Linear would do.
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled() and query.is_cuda else query.dtype
    projected, query, weight, bias = projected.to(dtype), query.to(dtype), weight.to(dtype), bias.to(dtype)
    if not _enabled:
        return _additive_scores(projected, query, weight, bias, rows)
    if rows is None:
        rows = torch.arange(query.shape[0], device=query.device)
    if _attention == "triton" and attention_kernels.available(query.device):
        return attention_kernels.TritonAdditiveScores.apply(projected.contiguous(), query.contiguous(), weight,
                                                            bias, rows)
    return _CompiledAdditiveScores.apply(projected.contiguous(), query.contiguous(), weight, bias, rows)


def _target_log_probs(logits, targets):
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return -F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


def target_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target], in float32 at least: (..., V), (...) -> (...)."""
    return _dispatch("target_log_probs", _target_log_probs)(logits, targets)
