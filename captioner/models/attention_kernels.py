"""Additive attention scores as two Triton kernels (forward, and one backward for all gradients).

    s[n, t, l] = sum_a w[a] * tanh(P[row(n), l, a] + Q[n, t, a]) + b

P (M, L, A) holds the projected grid of each of M images, Q (N, T, A) the projected decoder (or
caption-reader) state of each of N sequences at each of T steps, rows (N,) the image each sequence
reads. The eager form materialises an (N, T, L, A) tensor; at COCO-like sizes (N = 1,600
caption-samples, T = 16, L = 196, A = 512) that is 2.6 G values, and the compiled reductions that
replaced it (`fused._CompiledAdditiveScores`) still spent about 37 ms of a 55 ms WS-RAM update on an
H200 re-reading it in three passes (eval/bench/README.md). Here:

- forward: one program per (sequence, block of steps) keeps the image's key tile for a block of
  attention channels in registers, adds the queries of the block of steps, takes tanh and reduces
  over the channels; nothing of size (N, T, L, A) is written.
- backward: one program per (image, block of attention channels) loops over every step of every
  sequence that reads that image (sequences grouped by image with an on-device argsort, no host
  synchronisation), recomputes tanh once, writes the query gradient of its channels and
  accumulates the key and weight gradients in registers: each input is read once, nothing is
  written twice, no atomics, so the result does not depend on scheduling.

Arithmetic in float32 whatever the input dtype; tanh(x) is computed as 2 / (1 + exp(-2x)) - 1.
Runs on CUDA, and on the CPU under Triton's interpreter (TRITON_INTERPRET=1), which is how
tests/test_attention_kernels.py checks both kernels against the eager function on a machine
without a GPU.
"""

from __future__ import annotations

import os

import torch

try:  # Triton ships with PyTorch's CUDA wheels on Linux; without it the compiled reductions are used.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device) -> bool:
    """Whether the kernels can run on `device` (CUDA with Triton, or anywhere under the interpreter)."""
    return triton is not None and (device.type == "cuda" or INTERPRET)


if triton is not None:

    @triton.jit
    def _tanh(x):
        return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0

    def _configs(kind: str):
        if INTERPRET:
            return [triton.Config({"BLOCK_T": 2, "BLOCK_A": 8}, num_warps=4)]
        blocks = [(1, 32), (2, 16), (4, 16), (2, 32), (4, 32), (8, 16)]
        return [triton.Config({"BLOCK_T": t, "BLOCK_A": a}, num_warps=w, num_stages=s)
                for t, a in blocks for w in (4, 8) for s in ((2,) if kind == "forward" else (2, 3))]

    def _prune(configs, named_args, **kwargs):
        # Keep the (BLOCK_T x BLOCK_L x BLOCK_A) tile within 16 Ki values, and at least the smallest.
        block_l = kwargs.get("BLOCK_L", named_args.get("BLOCK_L"))
        kept = [c for c in configs if c.kwargs["BLOCK_T"] * c.kwargs["BLOCK_A"] * block_l <= 16384]
        return kept or configs[:1]

    @triton.autotune(configs=_configs("forward"), key=["L", "A", "BLOCK_L"],
                     prune_configs_by={"early_config_prune": _prune})
    @triton.jit
    def _forward_kernel(keys, query, weight, bias, rows, out, T, L, A,
                        BLOCK_T: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_A: tl.constexpr):
        n = tl.program_id(0)
        t0 = tl.program_id(1) * BLOCK_T
        image = tl.load(rows + n).to(tl.int64)
        offs_t = t0 + tl.arange(0, BLOCK_T)
        offs_l = tl.arange(0, BLOCK_L)
        mask_t = offs_t < T
        mask_l = offs_l < L
        row = n.to(tl.int64) * T + offs_t  # (BLOCK_T,) flat (n, t) index
        acc = tl.zeros((BLOCK_T, BLOCK_L), dtype=tl.float32)
        for a0 in range(0, A, BLOCK_A):
            offs_a = a0 + tl.arange(0, BLOCK_A)
            mask_a = offs_a < A
            k = tl.load(keys + image * L * A + offs_l[:, None] * A + offs_a[None, :],
                        mask=mask_l[:, None] & mask_a[None, :], other=0.0).to(tl.float32)
            q = tl.load(query + row[:, None] * A + offs_a[None, :],
                        mask=mask_t[:, None] & mask_a[None, :], other=0.0).to(tl.float32)
            w = tl.load(weight + offs_a, mask=mask_a, other=0.0).to(tl.float32)
            h = _tanh(k[None, :, :] + q[:, None, :])  # (BLOCK_T, BLOCK_L, BLOCK_A)
            acc += tl.sum(h * w[None, None, :], axis=2)
        acc += tl.load(bias).to(tl.float32)
        tl.store(out + row[:, None] * L + offs_l[None, :], acc, mask=mask_t[:, None] & mask_l[None, :])

    @triton.autotune(configs=_configs("backward"), key=["L", "A", "BLOCK_L"],
                     prune_configs_by={"early_config_prune": _prune})
    @triton.jit
    def _backward_kernel(keys, query, weight, grad, order, offsets, d_query, d_keys, d_weight, T, L, A,
                         BLOCK_T: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_A: tl.constexpr):
        image = tl.program_id(0).to(tl.int64)
        offs_a = tl.program_id(1) * BLOCK_A + tl.arange(0, BLOCK_A)
        offs_l = tl.arange(0, BLOCK_L)
        mask_a = offs_a < A
        mask_l = offs_l < L
        k = tl.load(keys + image * L * A + offs_l[:, None] * A + offs_a[None, :],
                    mask=mask_l[:, None] & mask_a[None, :], other=0.0).to(tl.float32)
        w = tl.load(weight + offs_a, mask=mask_a, other=0.0).to(tl.float32)
        acc_k = tl.zeros((BLOCK_L, BLOCK_A), dtype=tl.float32)
        acc_w = tl.zeros((BLOCK_A,), dtype=tl.float32)
        start = tl.load(offsets + image)
        end = tl.load(offsets + image + 1)
        for i in range(start, end):
            n = tl.load(order + i).to(tl.int64)
            for t0 in range(0, T, BLOCK_T):
                offs_t = t0 + tl.arange(0, BLOCK_T)
                mask_t = offs_t < T
                row = n * T + offs_t
                q = tl.load(query + row[:, None] * A + offs_a[None, :],
                            mask=mask_t[:, None] & mask_a[None, :], other=0.0).to(tl.float32)
                g = tl.load(grad + row[:, None] * L + offs_l[None, :],
                            mask=mask_t[:, None] & mask_l[None, :], other=0.0)
                h = _tanh(k[None, :, :] + q[:, None, :])  # (BLOCK_T, BLOCK_L, BLOCK_A)
                gg = g[:, :, None]
                d = gg * (1.0 - h * h)
                tl.store(d_query + row[:, None] * A + offs_a[None, :], tl.sum(d, axis=1) * w[None, :],
                         mask=mask_t[:, None] & mask_a[None, :])
                acc_k += tl.sum(d, axis=0)
                acc_w += tl.sum(tl.sum(gg * h, axis=1), axis=0)
        tl.store(d_keys + image * L * A + offs_l[:, None] * A + offs_a[None, :], acc_k * w[None, :],
                 mask=mask_l[:, None] & mask_a[None, :])
        tl.store(d_weight + image * A + offs_a, acc_w, mask=mask_a)


def _block_l(locations: int) -> int:
    return max(16, triton.next_power_of_2(locations))


def scores_forward(keys: torch.Tensor, query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   rows: torch.Tensor) -> torch.Tensor:
    """(M, L, A), (N, T, A), (A,), (), (N,) -> float32 (N, T, L). Inputs contiguous, any float dtype."""
    images, locations, channels = keys.shape
    sequences, steps, _ = query.shape
    out = torch.empty(sequences, steps, locations, device=query.device, dtype=torch.float32)
    bias = bias.reshape(1).float()

    def grid(meta):
        return (sequences, triton.cdiv(steps, meta["BLOCK_T"]))

    _forward_kernel[grid](keys, query, weight, bias, rows, out, steps, locations, channels,
                          BLOCK_L=_block_l(locations))
    return out


def scores_backward(keys: torch.Tensor, query: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor,
                    grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of sum(grad * s) for the keys (M, L, A), the query (N, T, A) and the weight (A,),
    all float32. The sequences are grouped by image on the device (stable argsort, counts by
    index_add_): no value goes to the host."""
    images, locations, channels = keys.shape
    sequences, steps, _ = query.shape
    grad = grad.float().contiguous()
    order = torch.argsort(rows, stable=True)
    counts = torch.zeros(images + 1, device=rows.device, dtype=torch.int64)
    counts.index_add_(0, rows + 1, torch.ones_like(rows, dtype=torch.int64))
    offsets = counts.cumsum(0)
    d_query = torch.empty(sequences, steps, channels, device=query.device, dtype=torch.float32)
    d_keys = torch.empty(images, locations, channels, device=keys.device, dtype=torch.float32)
    d_weight = torch.empty(images, channels, device=keys.device, dtype=torch.float32)

    def grid(meta):
        return (images, triton.cdiv(channels, meta["BLOCK_A"]))

    _backward_kernel[grid](keys, query, weight, grad, order, offsets, d_query, d_keys, d_weight,
                           steps, locations, channels, BLOCK_L=_block_l(locations))
    return d_keys, d_query, d_weight.sum(0)


class TritonAdditiveScores(torch.autograd.Function):
    """Autograd wrapper of the two kernels; the output has the dtype of the query."""

    @staticmethod
    def forward(ctx, keys, query, weight, bias, rows):
        ctx.save_for_backward(keys, query, weight, rows)
        return scores_forward(keys, query, weight, bias, rows).to(query.dtype)

    @staticmethod
    def backward(ctx, grad):
        keys, query, weight, rows = ctx.saved_tensors
        d_keys, d_query, d_weight = scores_backward(keys, query, weight, rows, grad)
        return (d_keys.to(keys.dtype), d_query.to(query.dtype), d_weight.to(weight.dtype),
                grad.sum().to(weight.dtype), None)
