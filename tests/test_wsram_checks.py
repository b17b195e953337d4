"""The six checks of shared/design/wsram.md, on tiny float64 models with exact enumeration."""

from __future__ import annotations

import math

import pytest
import torch

from captioner.config import EstimatorConfig
from captioner.data.batching import encode_captions
from captioner.estimators import (
    draw_locations,
    likelihood_bound_from_log_weights,
    masked_sum,
    normalized_weights,
    score_sequences,
    wsram_loss,
    wsram_surrogate,
)
from captioner.models.decoder import location_log_probs, word_log_probs
from tests.conftest import TinyCase


def _expected_bound(log_w: torch.Tensor, log_q: torch.Tensor, k: int) -> float:
    """E_q[L_K] exactly: sum over all K-tuples of paths."""
    n = len(log_w)
    index = torch.arange(n).unsqueeze(1) if k == 1 else torch.cartesian_prod(*[torch.arange(n)] * k)
    probability = log_q[index].sum(-1).exp()
    assert float(probability.sum()) == pytest.approx(1.0, abs=1e-9)
    return float((probability * (torch.logsumexp(log_w[index], -1) - math.log(k))).sum())


# ---- check 1 -------------------------------------------------------------------------------
def test_check1_bound_is_below_log_likelihood_and_rises_with_k(tiny):
    with torch.no_grad():
        log_py, log_pa, log_q = tiny.exact_terms()
    assert float(torch.logsumexp(log_pa, 0)) == pytest.approx(0.0, abs=1e-10)  # prior sums to 1
    assert float(torch.logsumexp(log_q, 0)) == pytest.approx(0.0, abs=1e-10)  # q sums to 1
    log_marginal = float(torch.logsumexp(log_py + log_pa, 0))
    log_w = log_py + log_pa - log_q
    bounds = [_expected_bound(log_w, log_q, k) for k in (1, 2, 3)]
    assert bounds[0] < bounds[1] < bounds[2] < log_marginal
    assert log_marginal - bounds[2] < 0.6 * (log_marginal - bounds[0])  # the gap closes as K grows
    # ... and approaches log p(y|x) for large K, drawn through the real sampling code.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        drawn = draw_locations(tiny.model, tiny.features, tiny.text, 50000, "model", generator=generator)
    large_k = float(likelihood_bound_from_log_weights(drawn.log_p_words + drawn.log_p_locations - drawn.log_q))
    assert large_k == pytest.approx(log_marginal, abs=0.02)


def test_check1_sampled_bound_matches_enumeration(tiny):
    """Mean of L_1 over many draws from q equals the exact E_q[L_1]."""
    with torch.no_grad():
        log_py, log_pa, log_q = tiny.exact_terms()
        exact = _expected_bound(log_py + log_pa - log_q, log_q, 1)
        n = 20000
        drawn = draw_locations(tiny.model, tiny.features.expand(n, -1, -1), tiny.text.repeat(n), 1, "model",
                               generator=torch.Generator().manual_seed(1))
    values = (drawn.log_p_words + drawn.log_p_locations - drawn.log_q)[:, 0]
    assert abs(float(values.mean()) - exact) < 4 * float(values.std()) / math.sqrt(n)


def test_check1_prior_proposal_gives_the_var_objective(tiny):
    """With q = prior, E[L_1] = sum_a p(a|x) log p(y|a,x), and every sampled path is scored as
    the exact enumeration scores it."""
    with torch.no_grad():
        log_py, log_pa, _ = tiny.exact_terms()
        var_objective = float((log_pa.exp() * log_py).sum())
        n = 20000
        drawn = draw_locations(tiny.model, tiny.features.expand(n, -1, -1), tiny.text.repeat(n), 1, "prior",
                               generator=torch.Generator().manual_seed(2))
    assert torch.equal(drawn.log_q, drawn.log_p_locations)
    values = likelihood_bound_from_log_weights(drawn.log_p_words + drawn.log_p_locations - drawn.log_q)
    assert abs(float(values.mean()) - var_objective) < 4 * float(values.std()) / math.sqrt(n)
    paths = drawn.locations[:, 0]  # (n, T)
    index = (paths * torch.tensor([16, 4, 1])).sum(-1)
    torch.testing.assert_close(drawn.log_p_words[:, 0], log_py[index], atol=1e-10, rtol=0)
    torch.testing.assert_close(drawn.log_p_locations[:, 0], log_pa[index], atol=1e-10, rtol=0)


# ---- check 2 -------------------------------------------------------------------------------
@pytest.mark.parametrize("control_variates,prior_control_variate", [(True, True), (True, False), (False, True)])
def test_check2_surrogate_gradient_is_the_sum_of_coefficient_times_grad_log_terms(tiny, control_variates,
                                                                                  prior_control_variate):
    model = tiny.model
    features = torch.randn(2, 4, 5, dtype=torch.float64)
    text = encode_captions(["red circle", "circle"], tiny.vocabulary)
    drawn = draw_locations(model, features, text, 3, "model", generator=torch.Generator().manual_seed(3))
    terms = wsram_surrogate(drawn.log_p_words, drawn.log_p_locations, drawn.log_q, control_variates,
                            prior_control_variate)
    if control_variates:
        torch.testing.assert_close(terms.coefficients["proposal"], terms.weights - 1.0 / 3)
        if not prior_control_variate:
            assert torch.equal(terms.coefficients["locations"], terms.weights)
    else:
        assert torch.equal(terms.coefficients["locations"], terms.weights)
        assert torch.equal(terms.coefficients["proposal"], terms.weights)
    params = [p for p in model.parameters()]
    surrogate = torch.autograd.grad(terms.loss.sum(), params, retain_graph=True, allow_unused=True)
    assembled = [torch.zeros_like(p) for p in params]
    for name, log_term in (("words", drawn.log_p_words), ("locations", drawn.log_p_locations),
                           ("proposal", drawn.log_q)):
        coefficient = terms.coefficients[name]
        for b in range(2):
            for k in range(3):
                grads = torch.autograd.grad(log_term[b, k], params, retain_graph=True, allow_unused=True)
                for total, g in zip(assembled, grads):
                    if g is not None:
                        total -= coefficient[b, k] * g
    checked = 0
    for s, a in zip(surrogate, assembled):
        s = torch.zeros_like(a) if s is None else s
        torch.testing.assert_close(s, a, atol=1e-12, rtol=1e-9)
        checked += int(a.abs().sum() > 0)
    assert checked > 10


def test_check2_wake_terms_are_the_gradient_of_the_bound(tiny):
    """Without control variates the decoder's gradient is exactly -grad L_K (samples fixed)."""
    model = tiny.model
    drawn = draw_locations(model, tiny.features, tiny.text, 4, "model", generator=torch.Generator().manual_seed(4))
    terms = wsram_surrogate(drawn.log_p_words, drawn.log_p_locations, drawn.log_q, control_variates=False)
    bound = likelihood_bound_from_log_weights(drawn.log_p_words + drawn.log_p_locations - drawn.log_q.detach())
    params = list(model.decoder.parameters())
    from_surrogate = torch.autograd.grad(terms.loss.sum(), params, retain_graph=True, allow_unused=True)
    from_bound = torch.autograd.grad(-bound.sum(), params, allow_unused=True)
    for a, b in zip(from_surrogate, from_bound):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


# ---- check 3 -------------------------------------------------------------------------------
def test_check3_score_of_q_has_zero_mean(tiny):
    _, _, log_q = tiny.exact_terms()
    expectation = (log_q.detach().exp() * log_q).sum()  # = sum_a q(a) grad log q(a) after autograd
    grads = torch.autograd.grad(expectation, list(tiny.model.proposal.parameters()), allow_unused=True,
                                retain_graph=True)
    nonzero = [g for g in grads if g is not None]
    assert nonzero
    for g in nonzero:
        assert float(g.abs().max()) < 1e-12
    # but a single sample's score is not zero: the check could fail
    single = torch.autograd.grad(log_q[0], list(tiny.model.proposal.parameters()), allow_unused=True)
    assert max(float(g.abs().max()) for g in single if g is not None) > 1e-3


def _exact_kl(case: TinyCase) -> float:
    with torch.no_grad():
        log_py, log_pa, log_q = case.exact_terms()
        log_posterior = torch.log_softmax(log_py + log_pa, 0)
        return float((log_posterior.exp() * (log_posterior - log_q)).sum())


def test_check3_proposal_update_lowers_the_exact_kl():
    case = TinyCase(seed=5)
    before = _exact_kl(case)
    optimizer = torch.optim.SGD(case.model.proposal.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(6)
    config = EstimatorConfig(samples=5)
    for _ in range(300):
        result = wsram_loss(case.model, case.features, case.text, config, generator)
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
    after = _exact_kl(case)
    assert before > 0.1  # the check starts from a proposal far from the posterior
    assert after < 0.5 * before


# ---- check 4 -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_check4_fused_and_stepwise_decoders_agree(dtype, tolerance):
    case = TinyCase(seed=7)
    decoder = case.model.decoder.to(dtype)
    features = torch.randn(6, 4, 5, dtype=dtype)
    text = encode_captions(["red circle", "circle red red circle", "red", "circle circle", "red red", "circle"],
                           case.vocabulary)
    locations = torch.randint(0, 4, text.inputs.shape)
    fused = decoder.forward_given_locations(features, text.inputs, locations)
    stepwise = decoder.forward_stepwise(features, text.inputs, "given", locations=locations)
    torch.testing.assert_close(fused.word_logits, stepwise.word_logits, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(fused.attention_logits, stepwise.attention_logits, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(fused.hidden, stepwise.hidden, atol=tolerance, rtol=tolerance)


def test_check4_fused_and_stepwise_draws_score_alike():
    """The same sampled locations give the same log terms through either layout."""
    case = TinyCase(seed=8)
    drawn = draw_locations(case.model, case.features, case.text, 5, "prior",
                           generator=torch.Generator().manual_seed(9))
    text = case.text.repeat(5)
    fused = case.model.decoder.forward_given_locations(case.features.expand(5, -1, -1), text.inputs,
                                                       drawn.locations[0])
    log_py, log_pa, _, _, _ = score_sequences(fused, text, None)
    torch.testing.assert_close(log_py, drawn.log_p_words[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(log_pa, drawn.log_p_locations[0], atol=1e-12, rtol=0)


# ---- check 5 -------------------------------------------------------------------------------
def test_check5_extreme_log_weights_stay_finite():
    log_w = torch.tensor([[500.0, -500.0, 499.0, 0.0], [-500.0, -499.5, -500.0, -498.0]], dtype=torch.float64)
    weights = normalized_weights(log_w)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, dtype=torch.float64))
    zeros = torch.zeros_like(log_w)
    terms = wsram_surrogate(log_w, zeros, zeros)
    assert torch.isfinite(terms.loss).all() and torch.isfinite(terms.bound).all()
    assert float(terms.bound[0]) == pytest.approx(500.0 + math.log1p(math.exp(-1.0)) - math.log(4), abs=1e-9)


def test_check5_padded_steps_add_exactly_zero():
    values = torch.tensor([[1.0, 2.0, float("-inf"), float("nan")], [3.0, float("inf"), 1e300, -1e300]])
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    assert torch.equal(masked_sum(values, mask), torch.tensor([3.0, 3.0]))
    # a caption scored alone and padded beside a longer one, with junk locations on the padding
    case = TinyCase(seed=10)
    alone = encode_captions(["red circle"], case.vocabulary)
    padded = encode_captions(["red circle", "red circle circle red red circle"], case.vocabulary)
    features = case.features.expand(2, -1, -1)
    locations = torch.randint(0, 4, padded.inputs.shape)
    out_alone = case.model.decoder.forward_given_locations(case.features, alone.inputs, locations[:1, :3])
    out_padded = case.model.decoder.forward_given_locations(features, padded.inputs, locations)
    a = score_sequences(out_alone, alone, None)
    p = score_sequences(out_padded, padded, None)
    for x, y in zip(a[:2], p[:2]):
        torch.testing.assert_close(x[0], y[0], atol=1e-12, rtol=0)
    # changing locations and tokens on padded steps changes nothing
    locations2 = locations.clone()
    locations2[0, 3:] = (locations2[0, 3:] + 1) % 4
    out2 = case.model.decoder.forward_given_locations(features, padded.inputs, locations2)
    p2 = score_sequences(out2, padded, None)
    assert torch.equal(p[0][0], p2[0][0]) and torch.equal(p[1][0], p2[1][0])


# ---- check 6 -------------------------------------------------------------------------------
# 0.999 quantile of the chi-square distribution with 3 degrees of freedom (L = 4 locations).
CHI_SQUARE_3_DF_999 = 16.266


def _chi_square(counts: torch.Tensor, probabilities: torch.Tensor) -> float:
    expected = probabilities * counts.sum()
    return float(((counts - expected).square() / expected).sum())


def test_check6_samples_follow_q():
    case = TinyCase(seed=11)
    with torch.no_grad():
        drawn = draw_locations(case.model, case.features, case.text, 20000, "model",
                               generator=torch.Generator().manual_seed(12))
        q = case.model.proposal.log_probs(case.features, case.text.targets, case.text.lengths).exp()[0]
    for t in range(case.steps):
        counts = torch.bincount(drawn.locations[0, :, t], minlength=4).double()
        assert _chi_square(counts, q[t]) < CHI_SQUARE_3_DF_999
    # and a wrong distribution is rejected (the test has power)
    counts = torch.bincount(drawn.locations[0, :, 0], minlength=4).double()
    assert _chi_square(counts, torch.full((4,), 0.25, dtype=torch.float64)) > CHI_SQUARE_3_DF_999 or \
        float((q[0] - 0.25).abs().max()) < 0.02


def test_check6_samples_follow_the_prior():
    case = TinyCase(seed=13)
    n = 20000
    with torch.no_grad():
        drawn = draw_locations(case.model, case.features, case.text, n, "prior",
                               generator=torch.Generator().manual_seed(14))
        decoder = case.model.decoder
        h0, _ = decoder.initial_state(case.features)
        pi0 = decoder.attention_logits(decoder.project_features(case.features), h0).softmax(-1)[0]
    paths = drawn.locations[0]
    assert _chi_square(torch.bincount(paths[:, 0], minlength=4).double(), pi0) < CHI_SQUARE_3_DF_999
    # step 1 given a_0 = j follows pi_1(. | a_0 = j)
    j = int(torch.bincount(paths[:, 0]).argmax())
    chosen = paths[paths[:, 0] == j]
    with torch.no_grad():
        out = decoder.forward_given_locations(case.features, case.text.inputs, torch.tensor([[j, 0, 0]]))
        pi1 = out.attention_logits[0, 1].softmax(-1)
    assert _chi_square(torch.bincount(chosen[:, 1], minlength=4).double(), pi1) < CHI_SQUARE_3_DF_999


def glimpses_fed_to_the_lstm(case: TinyCase, source: str, samples: int = 6):
    """Draw `samples` paths for the case's caption; return the glimpses the decoder's LSTM read,
    (K, T, D), and the draw."""
    inputs_seen = []
    handle = case.model.decoder.lstm.register_forward_hook(lambda m, args, out: inputs_seen.append(args[0]))
    try:
        drawn = draw_locations(case.model, case.features, case.text, samples, source,
                               generator=torch.Generator().manual_seed(16))
    finally:
        handle.remove()
    return torch.cat(inputs_seen, 1)[..., case.model.config.embedding_dim:], drawn


@pytest.mark.parametrize("proposal,source", [("factorised", "model"), ("factorised", "prior"),
                                             ("sequential", "model")])
def test_check6_glimpse_is_features_at_the_location_in_the_weights(proposal, source):
    case = TinyCase(proposal=proposal, seed=15)
    glimpses, drawn = glimpses_fed_to_the_lstm(case, source)
    locations = drawn.locations[0]  # (K, T)
    torch.testing.assert_close(glimpses, case.features[0][locations], atol=0, rtol=0)
    # and those same locations are the ones scored in log p(a|x)
    text = case.text.repeat(6)
    out = case.model.decoder.forward_given_locations(case.features.expand(6, -1, -1), text.inputs, locations)
    log_pa = masked_sum(location_log_probs(out.attention_logits, locations), text.mask)
    log_py = masked_sum(word_log_probs(out.word_logits, text.targets), text.mask)
    torch.testing.assert_close(log_pa, drawn.log_p_locations[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(log_py, drawn.log_p_words[0], atol=1e-12, rtol=0)
