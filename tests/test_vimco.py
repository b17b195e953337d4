"""VIMCO (estimator.name = vimco): K samples from the prior, leave-one-out baselines. Its gradient is
an unbiased estimate of grad E[L_K]; checked exactly by enumerating every K-tuple of paths of a tiny
float64 case (L = 4, T = 3: 64 paths, 4,096 pairs for K = 2)."""

from __future__ import annotations

import math

import pytest
import torch

from captioner.config import ConfigError, EstimatorConfig, load_config
from captioner.estimators import (
    ReinforceBaseline,
    compute_loss,
    draw_locations,
    likelihood_bound_from_log_weights,
    vimco_surrogate,
)
from tests.conftest import TinyCase


def test_leave_one_out_baselines_by_hand():
    log_w = torch.tensor([[0.0, -1.0, -3.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    terms = vimco_surrogate(log_w.clone().requires_grad_(), torch.zeros_like(log_w))
    for b in range(2):
        bound = math.log(sum(math.exp(x) for x in log_w[b].tolist()) / 3)
        assert float(terms.bound[b]) == pytest.approx(bound, abs=1e-12)
        for k in range(3):
            others = [x for j, x in enumerate(log_w[b].tolist()) if j != k]
            replaced = others + [sum(others) / 2]
            leave_one_out = math.log(sum(math.exp(x) for x in replaced) / 3)
            assert float(terms.coefficients["locations"][b, k]) == pytest.approx(bound - leave_one_out, abs=1e-12)
    # equal weights: every sample's signal is exactly zero
    assert torch.equal(terms.coefficients["locations"][1], torch.zeros(3, dtype=torch.float64))


def _pairs(case: TinyCase):
    """Every ordered pair of paths (i, j): log p(y|a, x) and log p(a|x) of both, (P, 2) each, with gradients."""
    log_py, log_pa, _ = case.exact_terms()
    n = len(log_py)
    first, second = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)
    return (torch.stack([log_py[first], log_py[second]], -1), torch.stack([log_pa[first], log_pa[second]], -1))


def _decoder_gradient(value: torch.Tensor, case: TinyCase) -> list[torch.Tensor]:
    params = list(case.model.decoder.parameters())
    grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def test_the_expected_vimco_gradient_is_the_gradient_of_the_expected_bound():
    case = TinyCase(seed=30)  # its proposal network goes unused
    log_py, log_pa = _pairs(case)
    probability = log_pa.sum(-1).exp()  # the pair's probability under the prior, with its gradient
    assert float(probability.detach().sum()) == pytest.approx(1.0, abs=1e-10)
    exact = _decoder_gradient(-(probability * likelihood_bound_from_log_weights(log_py)).sum(), case)
    loss = vimco_surrogate(log_py, log_pa).loss
    expected = _decoder_gradient((probability.detach() * loss).sum(), case)
    checked = 0
    for a, b in zip(expected, exact):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)
        checked += int(b.abs().sum() > 1e-6)
    assert checked > 5
    # The control: a baseline that depends on the sample itself (here its own log-weight) is biased,
    # and the same comparison catches it.
    weights = torch.softmax(log_py.detach(), -1)
    bound = likelihood_bound_from_log_weights(log_py.detach()).unsqueeze(-1)
    biased = -(weights * log_py).sum(-1) - ((bound - log_py.detach()) * log_pa).sum(-1)
    wrong = _decoder_gradient((probability.detach() * biased).sum(), case)
    assert max(float((a - b).abs().max()) for a, b in zip(wrong, exact)) > 1e-3


def test_vimco_draws_from_the_prior_with_one_mask_per_caption_and_trains():
    """Through compute_loss: a finite loss whose gradient reaches the prior and the words, and the
    K samples of a caption differ (they are K draws)."""
    case = TinyCase(seed=31)
    config = EstimatorConfig(name="vimco", samples=4)
    generator = torch.Generator().manual_seed(0)
    result = compute_loss(case.model, case.features, case.text, config, ReinforceBaseline(), generator)
    assert torch.isfinite(result.loss)
    assert {"bound", "ess_per_k", "max_weight", "prior_entropy", "nll_words"} <= set(result.diagnostics)
    result.loss.backward()
    decoder = case.model.decoder
    assert float(decoder.attend_score.weight.grad.abs().sum()) > 0  # the prior learns
    assert float(decoder.out_word.weight.grad.abs().sum()) > 0  # the words learn
    drawn = draw_locations(case.model, case.features, case.text, 4, "prior", generator=torch.Generator().manual_seed(0))
    assert len({tuple(path.tolist()) for path in drawn.locations[0]}) > 1


@pytest.mark.parametrize("overrides,message", [
    (["estimator.name=vimco", "model.proposal=none", "estimator.samples=1"], "K >= 2, got 1"),
])
def test_vimco_needs_two_samples(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)
    with pytest.raises(ValueError, match="K >= 2"):
        vimco_surrogate(torch.zeros(2, 1), torch.zeros(2, 1))
