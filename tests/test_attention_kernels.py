"""The Triton attention kernels (captioner/models/attention_kernels.py) against the eager function.

No GPU here: the kernels run under Triton's interpreter (TRITON_INTERPRET=1, which must be set
before triton is imported, hence a fresh Python process). Float32 kernels against a float64
reference, on shapes that exercise every mask: L and A not multiples of the blocks, an odd number
of steps, images that no sequence reads, sequences not grouped by image, and bf16 inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

CHECK = r'''
import sys
import torch
from captioner.models import attention_kernels, fused

device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
assert attention_kernels.available(device)


def eager(keys, query, weight, bias, rows):
    return (torch.tanh(keys.index_select(0, rows).unsqueeze(1) + query.unsqueeze(2)) * weight).sum(-1) + bias


def leaves(*tensors, dtype):
    return [t.detach().to(dtype).requires_grad_() for t in tensors]


generator = torch.Generator().manual_seed(0)
shapes = [(3, 5, 12, 7, 3), (4, 49, 20, 6, 5), (1, 3, 8, 2, 1)]
if device.type == "cuda":  # the real sizes too: Flickr8k (L = 49) and COCO-like (L = 196) grids
    shapes += [(32, 49, 512, 800, 17), (64, 196, 512, 320, 16)]
for images, locations, channels, sequences, steps in shapes:
    keys = torch.randn(images, locations, channels, generator=generator, dtype=torch.float64)
    query = torch.randn(sequences, steps, channels, generator=generator, dtype=torch.float64)
    weight = torch.randn(channels, generator=generator, dtype=torch.float64)
    bias = torch.randn((), generator=generator, dtype=torch.float64)
    rows = torch.randint(images, (sequences,), generator=generator)
    if images > 2:
        rows[rows == 1] = 0  # image 1 is read by no sequence: its key gradient must be exactly 0
    grad = torch.randn(sequences, steps, locations, generator=generator, dtype=torch.float64)
    keys, query, weight, bias, rows, grad = [t.to(device) for t in (keys, query, weight, bias, rows, grad)]

    reference = leaves(keys, query, weight, bias, dtype=torch.float64)
    expected = eager(*reference, rows)
    expected.backward(grad)

    mine = leaves(keys, query, weight, bias, dtype=torch.float32)
    got = attention_kernels.TritonAdditiveScores.apply(*mine, rows)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    scale = max(1.0, expected.abs().max().item())
    assert torch.allclose(got.double(), expected, atol=2e-5 * scale, rtol=1e-5), (got.double() - expected).abs().max()
    got.backward(grad.float())
    for name, a, b in zip(["keys", "query", "weight", "bias"], mine, reference):
        error = (a.grad.double() - b.grad).abs().max().item()
        assert error < 1e-4 * max(1.0, b.grad.abs().max().item()), (name, error)
    if images > 2:
        assert mine[0].grad[1].abs().max().item() == 0.0

    # Through fused.additive_scores with the compiled kernels on: the Triton path, same numbers.
    routed = leaves(keys, query, weight, bias, dtype=torch.float32)
    with fused.compiled_kernels(True, "triton"):
        out = fused.additive_scores(*routed, rows)
    out.backward(grad.float())
    assert torch.allclose(out.double(), expected, atol=2e-5 * scale, rtol=1e-5)
    assert torch.allclose(routed[1].grad.double(), reference[1].grad, atol=1e-4 * max(1.0, reference[1].grad.abs().max().item()))

    # bf16 inputs (as under autocast): output in bf16, arithmetic in float32.
    half = leaves(keys, query, weight, bias, dtype=torch.bfloat16)
    out = attention_kernels.TritonAdditiveScores.apply(*half, rows)
    assert out.dtype == torch.bfloat16
    rounded = eager(*[t.detach().to(torch.bfloat16).double() for t in (keys, query, weight, bias)], rows)
    assert torch.allclose(out.double(), rounded, atol=0.05 * rounded.abs().max().item())
print("ok")
'''


def run_check(device: str, interpret: bool) -> subprocess.CompletedProcess:
    environment = dict(os.environ)
    if interpret:
        environment["TRITON_INTERPRET"] = "1"
    root = Path(__file__).resolve().parents[1]
    environment["PYTHONPATH"] = os.pathsep.join([str(root), environment.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", CHECK, device], env=environment, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_triton_kernels_match_eager_under_interpreter():
    result = run_check("cpu", interpret=True)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_kernels_match_eager_on_gpu():
    result = run_check("cuda", interpret=False)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr


if __name__ == "__main__":  # python tests/test_attention_kernels.py cuda   (on a GPU machine, without pytest)
    outcome = run_check(sys.argv[1] if len(sys.argv) > 1 else "cpu", interpret=len(sys.argv) < 2)
    print(outcome.stdout + outcome.stderr)
    sys.exit(outcome.returncode)


def test_unknown_attention_kernel_is_refused():
    from captioner.models import fused

    with pytest.raises(ValueError, match="attention kernel"):
        fused.use_compiled_kernels(True, "cuda-magic")
