"""Training objectives: WS-RAM, VAR (REINFORCE), VIMCO and soft attention (shared/design/wsram.md).

Each estimator maps (model, per-caption feature grids, caption text) to a scalar loss (mean over
captions) and a dict of diagnostics. The math lives in small pure functions on (B, K) tensors so
that it can be checked on tiny cases by exact enumeration.

Shapes: B captions, K attention samples per caption, T steps, L locations, D feature size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from captioner.config import EstimatorConfig, ResearchConfig
from captioner.data.batching import CaptionText
from captioner.models.decoder import (DecoderOutput, draw_glimpses, location_log_probs, log_probs_at, log_softmax,
                                      word_log_probs)
from captioner.models.noise import batch_uniform


# ---- pure math ------------------------------------------------------------------------------
def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim of `values` where `mask` is True; padded steps add exactly 0."""
    return torch.where(mask, values, torch.zeros_like(values)).sum(-1)


def normalized_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """Self-normalised importance weights w~_k = softmax_k(log w_k); (B, K) -> (B, K)."""
    return torch.softmax(log_weights, -1)


def likelihood_bound_from_log_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """L_K = logsumexp_k(log w_k) - log K <= log p(y|x); (B, K) -> (B,)."""
    return torch.logsumexp(log_weights, -1) - math.log(log_weights.shape[-1])


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """(sum w)^2 / sum w^2 of normalised weights (B, K) -> (B,), between 1 and K."""
    return weights.sum(-1).square() / weights.square().sum(-1)


@dataclass
class SurrogateTerms:
    loss: torch.Tensor  # (B,) surrogate whose gradient is the estimator
    bound: torch.Tensor  # (B,) L_K (detached)
    weights: torch.Tensor  # (B, K) w~ (detached)
    coefficients: dict[str, torch.Tensor]  # name -> (B, K): loss = -sum_k coefficient * log-term


def wsram_surrogate(
    log_p_words: torch.Tensor,
    log_p_locations: torch.Tensor,
    log_q: torch.Tensor,
    control_variates: bool = True,
    prior_control_variate: bool = True,
    prior_term: torch.Tensor | None = None,
) -> SurrogateTerms:
    """The WS-RAM surrogate for K samples per caption, each argument (B, K):
    log p(y | a^k, x), log p(a^k | x) and log q(a^k | y, x) of the distribution sampled from.

        loss = - sum_k sg(w~_k) log p(y|a^k,x) - sum_k sg(w~_k - c^p_k) log p(a^k|x)
               - sum_k sg(w~_k - c^q_k) log q(a^k|y,x)

    with c^q_k = 1/K and c^p_k = softmax_k(log p(a^k|x) - log q(a^k|y,x)) when `control_variates`,
    else c = 0 (c^p alone is dropped with `prior_control_variate=False`). `prior_term` (B, K), when
    given, is what the prior's coefficient multiplies instead of log p(a^k|x) (the weights still use
    log p(a^k|x))."""
    log_weights = log_p_words + log_p_locations - log_q
    weights = normalized_weights(log_weights.detach())
    k = log_weights.shape[-1]
    if control_variates:
        c_q = torch.full_like(weights, 1.0 / k)
        c_p = (torch.softmax((log_p_locations - log_q).detach(), -1) if prior_control_variate
               else torch.zeros_like(weights))
    else:
        c_q = c_p = torch.zeros_like(weights)
    coefficients = {"words": weights, "locations": weights - c_p, "proposal": weights - c_q}
    loss = -(coefficients["words"] * log_p_words).sum(-1)
    loss = loss - (coefficients["locations"] * (log_p_locations if prior_term is None else prior_term)).sum(-1)
    loss = loss - (coefficients["proposal"] * log_q).sum(-1)
    return SurrogateTerms(loss, likelihood_bound_from_log_weights(log_weights.detach()), weights, coefficients)


def vimco_surrogate(log_p_words: torch.Tensor, log_p_locations: torch.Tensor) -> SurrogateTerms:
    """VIMCO (Mnih and Rezende 2016) for K >= 2 samples per caption drawn from the prior itself, each
    argument (B, K): log p(y | a^k, x) and log p(a^k | x). The weights are w_k = p(y | a^k, x) and

        loss = - sum_k sg(w~_k) log p(y|a^k,x) - sum_k sg(L_K - L_K^{-k}) log p(a^k|x)

    where L_K^{-k} is L_K with log w_k replaced by the mean of the other K - 1 log-weights: a baseline
    for sample k that does not depend on a^k, so the gradient is an unbiased estimate of grad E[L_K]."""
    k = log_p_words.shape[-1]
    if k < 2:
        raise ValueError(f"VIMCO needs K >= 2 samples per caption (its baselines leave one out), got {k}")
    log_w = log_p_words.detach()
    bound = likelihood_bound_from_log_weights(log_w)
    mean_of_others = (log_w.sum(-1, keepdim=True) - log_w) / (k - 1)  # (B, K)
    eye = torch.eye(k, dtype=torch.bool, device=log_w.device)
    # row k of (B, K, K): the K log-weights with the k-th replaced by the mean of the others
    replaced = torch.where(eye, mean_of_others.unsqueeze(-1), log_w.unsqueeze(-2))
    signal = bound.unsqueeze(-1) - likelihood_bound_from_log_weights(replaced)
    weights = normalized_weights(log_w)
    loss = -(weights * log_p_words).sum(-1) - (signal * log_p_locations).sum(-1)
    return SurrogateTerms(loss, bound, weights, {"words": weights, "locations": signal})


def step_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) along the last dim."""
    log_p = log_softmax(logits)
    return -(log_p.exp() * log_p).sum(-1)


# ---- drawing locations ------------------------------------------------------------------------
@dataclass
class LocationSamples:
    """K location sequences per caption and their log terms, each (B, K) unless said."""

    log_p_words: torch.Tensor
    log_p_locations: torch.Tensor
    log_q: torch.Tensor
    locations: torch.Tensor  # (B, K, T), or (B, K, T, G) with G glimpses per word
    prior_entropy: torch.Tensor  # (B, K): mean over real steps of H(pi_t)
    proposal_entropy: torch.Tensor  # (B, K): mean over real steps of H(q_t)
    # (B, K): sum over real steps of sum_i sg(q_t(i)) log pi_t(i | h_{t-1}) along each sampled path: log pi
    # of the sampled location replaced by its expectation under the distribution it was drawn from
    # (only when asked for: draw_locations(..., expected_prior=True))
    expected_log_p_locations: torch.Tensor | None = None


def _mix_defensive(log_q: torch.Tensor, log_prior: torch.Tensor, weight: float, component: str) -> torch.Tensor:
    """log of (1 - delta) q + delta * component, component the (detached) prior or uniform."""
    if weight <= 0.0:
        return log_q
    if component == "uniform":
        other = torch.full_like(log_q, -math.log(log_q.shape[-1]))
    else:
        other = log_prior.detach()
    if weight >= 1.0:
        return other
    return torch.logaddexp(log_q + math.log1p(-weight), other + math.log(weight))


def score_sequences(output: DecoderOutput, text: CaptionText, log_q_steps: torch.Tensor | None):
    """Per-sequence log p(y|a,x), log p(a|x), log q(a|y,x) and mean step entropies, each (N,)."""
    locations = output.locations
    log_p_words = masked_sum(word_log_probs(output.word_logits, text.targets), text.mask)
    log_p_locations = masked_sum(location_log_probs(output.attention_logits, locations), text.mask)
    steps = text.lengths.clamp_min(1).to(log_p_words.dtype)
    prior_entropy = masked_sum(step_entropy(output.attention_logits), text.mask) / steps
    if log_q_steps is None:
        return log_p_words, log_p_locations, log_p_locations, prior_entropy, prior_entropy
    log_q = masked_sum(log_probs_at(log_q_steps, locations), text.mask)
    proposal_entropy = masked_sum(-(log_q_steps.exp() * log_q_steps).sum(-1), text.mask) / steps
    return log_p_words, log_p_locations, log_q, prior_entropy, proposal_entropy


def draw_locations(
    model,
    features: torch.Tensor,
    text: CaptionText,
    samples: int,
    proposal: str = "model",
    defensive_weight: float = 0.0,
    defensive_component: str = "uniform",
    generator: torch.Generator | None = None,
    rows: torch.Tensor | None = None,
    layout: str = "fused",
    expected_prior: bool = False,
    detach_proposal_features: bool = False,
) -> LocationSamples:
    """Draw `samples` location sequences per caption and score them.

    proposal='model' draws from q_phi (mixed defensively if asked); proposal='prior' draws from
    the model's own prior pi (then log q = log p(a|x) and L_K is plain importance sampling).
    features (B, L, D) for the B captions of `text`; or, with rows (B,), features (M, L, D) of M
    images and rows[n] the image of caption n (the fused layout then never copies a grid per caption).
    layout='stepwise' runs the decoder word by word even where the fused layout applies.
    expected_prior=True also returns sum_t E_{a_t ~ q_t}[log pi_t(a_t)] along each path (q_t the
    sampling distribution, held constant). detach_proposal_features=True: q reads sg(features), so
    that log q's gradient reaches the proposal's own parameters only, not the encoder it shares
    with the model (estimator.proposal_encoder_gradient)."""
    b = len(text)
    decoder = model.decoder
    repeated = text.repeat(samples)
    if rows is None:
        rows = torch.arange(b, device=features.device)
    rows_k = rows.repeat_interleave(samples, 0)
    q_network = model.proposal if proposal == "model" else None
    if proposal == "model" and q_network is None:
        raise ValueError("this model has no proposal network; draw from proposal='prior'")

    if q_network is not None and not q_network.sequential and layout == "fused" and (
            defensive_weight <= 0.0 or defensive_component == "uniform"):
        # Fused layout: every location is drawn before the decoder runs.
        q_features = features.detach() if detach_proposal_features else features
        log_q_steps = q_network.log_probs(q_features, text.targets, text.lengths, rows).repeat_interleave(samples, 0)
        log_q_steps = _mix_defensive(log_q_steps, log_q_steps, defensive_weight, "uniform")
        locations = draw_glimpses(log_q_steps, decoder.glimpses, generator)
        output = decoder.forward_given_locations(features, repeated.inputs, locations, rows_k, group=samples)
    elif q_network is None:
        features_k = features.index_select(0, rows_k)
        output = decoder.forward_stepwise(features_k, repeated.inputs, "prior", generator=generator, group=samples)
        log_q_steps = None
    else:
        features_k = features.index_select(0, rows_k)
        context = q_network.read_caption(text.targets, text.lengths).repeat_interleave(samples, 0)
        projected = q_network.attend_feature(features_k.detach() if detach_proposal_features else features_k)
        factorised = None if q_network.sequential else log_softmax(q_network.scores(projected, context))

        def proposal_step(t: int, hidden: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
            if factorised is not None:
                log_q_t = factorised[:, t]
            else:
                # q reads h_{t-1} as an input only: its loss must not train the decoder.
                log_q_t = q_network.step_log_probs(projected, context[:, t], hidden.detach())
            return _mix_defensive(log_q_t, log_prior, defensive_weight, defensive_component)

        output = decoder.forward_stepwise(features_k, repeated.inputs, "proposal", proposal=proposal_step,
                                          generator=generator, group=samples)
        log_q_steps = output.proposal_log_probs

    terms = score_sequences(output, repeated, log_q_steps)
    log_p_words, log_p_locations, log_q, prior_entropy, proposal_entropy = (x.view(b, samples) for x in terms)
    expected = None
    if expected_prior:
        if log_q_steps is None:
            raise ValueError("the expected prior term needs a proposal to draw from (proposal='model')")
        # G glimpses per word: G independent draws from q_t, so G times one draw's expectation
        per_step = decoder.glimpses * (log_q_steps.detach().exp() * log_softmax(output.attention_logits)).sum(-1)
        expected = masked_sum(per_step, repeated.mask).view(b, samples)
    return LocationSamples(log_p_words, log_p_locations, log_q,
                           output.locations.view(b, samples, *output.locations.shape[1:]),
                           prior_entropy, proposal_entropy, expected)


# ---- estimators -------------------------------------------------------------------------------
@dataclass
class EstimatorResult:
    loss: torch.Tensor  # scalar: mean over captions
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)  # scalars, detached


@dataclass
class ReinforceBaseline:
    """Moving average b <- decay * b + (1 - decay) * reward, started at the first batch's mean."""

    value: torch.Tensor | None = None

    def update(self, reward: torch.Tensor, decay: float) -> None:
        """A batch with a non-finite reward leaves the average as it was (on the device, no sync)."""
        reward = reward.detach().mean()
        if self.value is None:
            self.value = reward.clone()
            return
        moved = decay * self.value + (1.0 - decay) * reward
        # in place: a CUDA graph of the update (captioner.graphs) reads and writes this very tensor
        self.value.copy_(torch.where(torch.isfinite(moved), moved, self.value))

    def state_dict(self) -> dict:
        return {"value": None if self.value is None else self.value.detach().cpu()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.value = None if state["value"] is None else state["value"].to(device)


def _per_caption(features: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The grid of every caption: features (M, L, D) of images indexed by rows (N,) -> (N, L, D)."""
    return features if rows is None else features.index_select(0, rows)


def _sample_diagnostics(terms: SurrogateTerms, drawn: LocationSamples, **extra: torch.Tensor) -> dict:
    """The logged diagnostics of a multi-sample estimator (scalars): L_K, ESS/K, the largest weight, the
    prior's entropy, any `extra`, and the weighted word NLL."""
    weights = terms.weights
    return {
        "bound": terms.bound.mean(),
        "ess_per_k": (effective_sample_size(weights) / weights.shape[-1]).mean(),
        "max_weight": weights.max(-1).values.mean(),
        "prior_entropy": drawn.prior_entropy.mean().detach(),
        **extra,
        "nll_words": -(weights * drawn.log_p_words.detach()).sum(-1).mean(),
    }


def wsram_loss(model, features, text: CaptionText, config: EstimatorConfig,
               generator: torch.Generator | None = None, rows: torch.Tensor | None = None,
               research: ResearchConfig | None = None) -> EstimatorResult:
    """WS-RAM with K samples from q_phi(a | y, x) (plus the sleep update if configured); with
    research.proposal_source 'prior', from the prior pi(a | x) instead: then log q is log pi held
    constant (no proposal term to train), the weights are proportional to p(y | a, x) and the prior
    learns from its own samples. `research` holds the ablation switches (defaults: the method)."""
    research = research or ResearchConfig()
    source = research.proposal_source
    expected = research.prior_update == "expected"
    drawn = draw_locations(model, features, text, config.samples, source, config.defensive_weight,
                           config.defensive_component, generator, rows, research.layout, expected_prior=expected,
                           detach_proposal_features=not config.proposal_encoder_gradient)
    log_q = drawn.log_q if source == "model" else drawn.log_q.detach()
    # prior_update "expected": the prior's wake term with each sampled location's log pi_t replaced by
    # its expectation under q_t (same weights w~), which is exactly zero while q = pi whatever the
    # samples; the weights still score the sampled locations.
    terms = wsram_surrogate(drawn.log_p_words, drawn.log_p_locations, log_q, config.control_variates,
                            research.prior_control_variate and not expected,
                            prior_term=drawn.expected_log_p_locations if expected else None)
    loss = terms.loss.mean()
    diagnostics = _sample_diagnostics(terms, drawn, proposal_entropy=drawn.proposal_entropy.mean().detach(),
                                      log_q_minus_log_prior=(drawn.log_q - drawn.log_p_locations).mean().detach())
    if config.sleep_update:
        sleep = sleep_loss(model, _per_caption(features, rows), generator)
        loss = loss + config.sleep_weight * sleep
        diagnostics["sleep_loss"] = sleep.detach()
    return EstimatorResult(loss, diagnostics)


def sleep_loss(model, features: torch.Tensor, generator: torch.Generator | None = None,
               max_length: int = 24) -> torch.Tensor:
    """Sleep update: draw (y, a) from p_theta and return -mean log q(a | y, x) (trains q only)."""
    vocabulary = model.vocabulary
    decoder = model.decoder
    features = features.detach()
    inputs, targets, locations = decoder.sample_captions(
        features, max_length, vocabulary.bos_id, vocabulary.eos_id, vocabulary.pad_id, generator)
    mask = targets != vocabulary.pad_id
    lengths = mask.sum(1)
    q_network = model.proposal
    if q_network.sequential:
        with torch.no_grad():
            output = decoder.forward_given_locations(features, inputs, locations)
            h0, _ = decoder.initial_state(features)
            previous = torch.cat([h0.unsqueeze(1), output.hidden[:, :-1]], 1)
        context = q_network.read_caption(targets, lengths)
        projected = q_network.attend_feature(features)
        log_q_steps = torch.stack([q_network.step_log_probs(projected, context[:, t], previous[:, t])
                                   for t in range(targets.shape[1])], 1)
    else:
        log_q_steps = q_network.log_probs(features, targets, lengths)
    log_q = masked_sum(log_probs_at(log_q_steps, locations), mask)
    return -log_q.mean()


def var_loss(model, features, text: CaptionText, config: EstimatorConfig, baseline: ReinforceBaseline,
             generator: torch.Generator | None = None, rows: torch.Tensor | None = None) -> EstimatorResult:
    """Show-Attend-Tell's hard attention (VAR): a ~ pi step by step, REINFORCE with a moving-average
    baseline on the per-word log-likelihood, plus an entropy bonus. With probability
    `expected_glimpse_probability` a minibatch uses the expected glimpse instead."""
    decoder = model.decoder
    features = _per_caption(features, rows)
    p = config.expected_glimpse_probability
    if p > 0.0 and batch_uniform(generator) < p:
        output = decoder.forward_stepwise(features, text.inputs, "expected")
        log_p_words = masked_sum(word_log_probs(output.word_logits, text.targets), text.mask)
        return EstimatorResult(-log_p_words.mean(), {"nll_words": -log_p_words.mean().detach(),
                                                     "expected_glimpse": torch.ones((), device=features.device)})
    output = decoder.forward_stepwise(features, text.inputs, "prior", generator=generator)
    log_p_words, log_p_locations, _, _, _ = score_sequences(output, text, None)
    entropy = masked_sum(step_entropy(output.attention_logits), text.mask)
    reward = log_p_words.detach() / text.lengths.clamp_min(1)
    if baseline.value is None:
        baseline.update(reward, 0.0)
    advantage = reward - baseline.value
    loss = -log_p_words - config.reinforce_weight * advantage * log_p_locations - config.entropy_weight * entropy
    diagnostics = {
        "nll_words": -log_p_words.mean().detach(),
        "baseline": baseline.value.detach(),
        "prior_entropy": (entropy / text.lengths.clamp_min(1)).mean().detach(),
        "expected_glimpse": torch.zeros((), device=features.device),
    }
    baseline.update(reward, config.baseline_decay)
    return EstimatorResult(loss.mean(), diagnostics)


def vimco_loss(model, features, text: CaptionText, config: EstimatorConfig,
               generator: torch.Generator | None = None, rows: torch.Tensor | None = None) -> EstimatorResult:
    """VIMCO: K location sequences per caption drawn from the prior step by step (one dropout mask per
    caption, as for WS-RAM), the words trained by the self-normalised weights and the prior by
    REINFORCE with leave-one-out baselines (`vimco_surrogate`); no proposal network."""
    drawn = draw_locations(model, features, text, config.samples, "prior", generator=generator, rows=rows)
    terms = vimco_surrogate(drawn.log_p_words, drawn.log_p_locations)
    return EstimatorResult(terms.loss.mean(), _sample_diagnostics(terms, drawn))


def soft_loss(model, features, text: CaptionText, config: EstimatorConfig,
              rows: torch.Tensor | None = None) -> EstimatorResult:
    """Soft attention: NLL + lambda * sum_i (1 - sum_t pi_t(i))^2."""
    output = model.decoder.forward_stepwise(_per_caption(features, rows), text.inputs, "soft")
    log_p_words = masked_sum(word_log_probs(output.word_logits, text.targets), text.mask)
    attention = torch.where(text.mask.unsqueeze(-1), log_softmax(output.attention_logits).exp(), 0.0)
    penalty = (1.0 - attention.sum(1)).square().sum(-1)
    loss = -log_p_words + config.doubly_stochastic_weight * penalty
    diagnostics = {"nll_words": -log_p_words.mean().detach(), "attention_penalty": penalty.mean().detach(),
                   "prior_entropy": (masked_sum(step_entropy(output.attention_logits), text.mask)
                                     / text.lengths.clamp_min(1)).mean().detach()}
    return EstimatorResult(loss.mean(), diagnostics)


def compute_loss(model, features, text: CaptionText, config: EstimatorConfig, baseline: ReinforceBaseline,
                 generator: torch.Generator | None = None, rows: torch.Tensor | None = None,
                 research: ResearchConfig | None = None) -> EstimatorResult:
    """Dispatch on config.name: 'wsram', 'var', 'vimco' or 'soft'. features (N, L, D), one grid per caption;
    or (M, L, D), one per image, with rows (N,) naming each caption's image."""
    if config.name == "wsram":
        return wsram_loss(model, features, text, config, generator, rows, research)
    if config.name == "var":
        return var_loss(model, features, text, config, baseline, generator, rows)
    if config.name == "vimco":
        return vimco_loss(model, features, text, config, generator, rows)
    if config.name == "soft":
        return soft_loss(model, features, text, config, rows)
    raise ValueError(f"estimator.name: unknown estimator {config.name!r}")


# ---- evaluation ---------------------------------------------------------------------------------
@torch.no_grad()
def likelihood_bound(model, features, text: CaptionText, samples: int, proposal: str = "prior",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-caption L_K <= log p(y | x), (B,). Hard attention: importance sampling from the prior
    (proposal='prior', the same yardstick for every hard model) or from q_phi ('model').
    Soft attention: the exact log-likelihood (there are no locations to integrate out)."""
    if model.decoder.soft:
        output = model.decoder.forward_stepwise(features, text.inputs, "soft")
        return masked_sum(word_log_probs(output.word_logits, text.targets), text.mask)
    drawn = draw_locations(model, features, text, samples, proposal, generator=generator)
    return likelihood_bound_from_log_weights(drawn.log_p_words + drawn.log_p_locations - drawn.log_q)
