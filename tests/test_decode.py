"""Beam search: exact on a tiny case, greedy is beam size 1, batching changes nothing."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from captioner.config import DecodeConfig
from captioner.models.decode import beam_search
from captioner.models.decoder import word_log_probs
from tests.conftest import TinyCase

ALLOWED = (2, 3, 4, 5)  # <eos>, <unk>, red, circle: beam search never emits <pad> or <bos>


def _sequence_log_prob(case: TinyCase, features: torch.Tensor, tokens: list[int]) -> float:
    inputs = torch.tensor([[1] + tokens[:-1]])
    targets = torch.tensor([tokens])
    output = case.model.decoder.forward_stepwise(features, inputs, "argmax")
    return float(word_log_probs(output.word_logits, targets).sum().detach())


def _all_sequences(max_length: int):
    for length in range(1, max_length + 1):
        for body in itertools.product([t for t in ALLOWED if t != 2], repeat=length - 1):
            yield list(body) + [2]
    yield from (list(s) for s in itertools.product([t for t in ALLOWED if t != 2], repeat=max_length))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_finds_the_exact_best_caption(seed):
    case = TinyCase(seed=seed, scale=3.0)
    features = torch.randn(1, 4, 5, dtype=torch.float64) * 2
    with torch.no_grad():
        best = max(_all_sequences(3), key=lambda s: _sequence_log_prob(case, features, s))
        best_score = _sequence_log_prob(case, features, best)
        result = beam_search(case.model, features, DecodeConfig(beam_size=64, max_length=3))[0]
    expected_tokens = [t for t in best if t != 2]
    assert result.tokens == expected_tokens
    assert result.log_prob == pytest.approx(best_score, abs=1e-9)


def test_greedy_is_beam_size_one_and_reports_its_choices():
    case = TinyCase(seed=3, scale=3.0)
    features = torch.randn(1, 4, 5, dtype=torch.float64)
    decoder = case.model.decoder
    with torch.no_grad():
        result = beam_search(case.model, features, DecodeConfig(beam_size=1, max_length=6))[0]
        # follow the same path by hand
        state = decoder.initial_state(features)
        projected = decoder.project_features(features)
        token = torch.tensor([1])
        for t in range(len(result.tokens) + 1):
            pi = decoder.attention_logits(projected, state[0]).softmax(-1)[0]
            location = int(pi.argmax())
            logits, state = decoder.advance(token, features[:, location], state)
            probs = logits.softmax(-1)[0]
            probs[[0, 1]] = 0
            word = int(probs.argmax())
            if t < len(result.tokens):
                assert word == result.tokens[t]
                assert result.locations[t] == location
                assert result.location_probs[t] == pytest.approx(float(pi[location]))
                assert result.word_probs[t] == pytest.approx(float(logits.log_softmax(-1)[0, word].exp()))
            elif len(result.tokens) < 6:
                assert word == 2  # then <eos>, unless the caption was cut at max_length
            token = torch.tensor([word])


@pytest.mark.parametrize("mode", ["argmax", "expected"])
def test_batched_decoding_equals_one_image_at_a_time(mode):
    case = TinyCase(seed=4, scale=3.0)
    features = torch.randn(5, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        together = beam_search(case.model, features, DecodeConfig(beam_size=3, max_length=5, attention_mode=mode))
        alone = [beam_search(case.model, features[i:i + 1], DecodeConfig(beam_size=3, max_length=5, attention_mode=mode))[0]
                 for i in range(5)]
    for a, b in zip(together, alone):
        assert a.tokens == b.tokens and a.locations == b.locations
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-9)


def test_sampled_attention_is_reproducible_with_a_generator():
    case = TinyCase(seed=5, scale=3.0)
    features = torch.randn(3, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        runs = [beam_search(case.model, features, DecodeConfig(beam_size=2, max_length=5, attention_mode="sample"),
                            generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    assert [r.tokens for r in runs[0]] == [r.tokens for r in runs[1]]
    with pytest.raises(ValueError, match="attention_mode"):
        beam_search(case.model, features, DecodeConfig(attention_mode="nearest"))


def _repeats_a_trigram(tokens: list[int]) -> bool:
    trigrams = list(zip(tokens, tokens[1:], tokens[2:]))
    return len(trigrams) != len(set(trigrams))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_trigram_blocking_finds_the_best_caption_without_a_repeated_trigram(seed):
    """Exact with a beam wider than every prefix: the best caption among those that never repeat a
    trigram. (A finished hypothesis, which only appends <pad>, must not be blocked for repeating
    <pad> <pad> <pad>: it then fell out of the beam and captions grew longer, issue 18's re-run.)"""
    case = TinyCase(seed=seed, scale=3.0)
    features = torch.randn(1, 4, 5, dtype=torch.float64) * 2
    with torch.no_grad():
        allowed = [s for s in _all_sequences(6) if not _repeats_a_trigram(s)]
        best = max(allowed, key=lambda s: _sequence_log_prob(case, features, s))
        result = beam_search(case.model, features, DecodeConfig(beam_size=800, max_length=6, block_trigrams=True))[0]
    assert result.tokens == [t for t in best if t != 2]
    assert result.log_prob == pytest.approx(_sequence_log_prob(case, features, best), abs=1e-9)


def _marginal_log_prob(case: TinyCase, features: torch.Tensor, tokens: list[int]) -> tuple[float, list[int]]:
    """By hand, one location at a time: log sum_l pi_t(l) p(w_t | l) per word, then carry on from
    argmax_l pi_t(l) p(w_t | l). Returns the caption's score and the locations carried."""
    decoder = case.model.decoder
    state = decoder.initial_state(features)
    projected = decoder.project_features(features)
    token, total, locations = torch.tensor([1]), 0.0, []
    for word in tokens:
        log_pi = decoder.attention_logits(projected, state[0]).log_softmax(-1)[0]
        joint, states = [], []
        for location in range(features.shape[1]):
            logits, new_state = decoder.advance(token, features[:, location], state)
            joint.append(float(log_pi[location] + logits.log_softmax(-1)[0, word]))
            states.append(new_state)
        total += float(torch.tensor(joint, dtype=torch.float64).logsumexp(0))
        best = max(range(len(joint)), key=joint.__getitem__)
        locations.append(best)
        state, token = states[best], torch.tensor([word])
    return total, locations


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_marginal_glimpse_beam_finds_the_caption_of_highest_marginal_probability(seed):
    """attention_mode "marginal": with a beam wider than every prefix, the best caption by the
    word probabilities with each step's location summed out, exactly, and the locations it
    reports are the posterior modes given the words."""
    case = TinyCase(seed=seed, scale=3.0)
    features = torch.randn(1, 4, 5, dtype=torch.float64) * 2
    with torch.no_grad():
        scored = {tuple(s): _marginal_log_prob(case, features, s) for s in _all_sequences(3)}
        best = max(scored, key=lambda s: scored[s][0])
        result = beam_search(case.model, features, DecodeConfig(beam_size=64, max_length=3,
                                                                attention_mode="marginal"))[0]
        argmax = beam_search(case.model, features, DecodeConfig(beam_size=64, max_length=3))[0]
    assert result.tokens == [t for t in best if t != 2]
    assert result.log_prob == pytest.approx(scored[best][0], abs=1e-9)
    assert result.locations == scored[best][1][:len(result.tokens)]
    # the reported word probabilities are the marginal ones: with <eos>'s they make up the score
    assert sum(map(math.log, result.word_probs)) >= result.log_prob - 1e-9
    assert all(0.0 < p <= 1.0 for p in result.word_probs)
    # summing the location out is not the same as looking at its argmax
    assert (result.tokens, result.log_prob) != (argmax.tokens, pytest.approx(argmax.log_prob))


def test_marginal_glimpse_with_one_location_is_the_argmax_glimpse():
    case = TinyCase(seed=6, scale=3.0)
    features = torch.randn(3, 1, 5, dtype=torch.float64)
    with torch.no_grad():
        marginal = beam_search(case.model, features, DecodeConfig(beam_size=3, max_length=5, attention_mode="marginal"))
        argmax = beam_search(case.model, features, DecodeConfig(beam_size=3, max_length=5))
    for a, b in zip(marginal, argmax):
        assert a.tokens == b.tokens and a.locations == b.locations
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-12)
        assert a.word_probs == pytest.approx(b.word_probs, abs=1e-12)


def test_marginal_glimpse_decodes_in_chunks_exactly(monkeypatch):
    """Images are decoded in chunks that bound the (hypotheses, L, V) table: the same captions."""
    import captioner.models.decode as decode_module

    case = TinyCase(seed=7, scale=3.0)
    features = torch.randn(5, 4, 5, dtype=torch.float64)
    config = DecodeConfig(beam_size=3, max_length=5, attention_mode="marginal")
    with torch.no_grad():
        together = beam_search(case.model, features, config)
        monkeypatch.setattr(decode_module, "MARGINAL_TABLE_NUMBERS", 2 * 3 * 4 * 6)  # two images a chunk
        chunked = beam_search(case.model, features, config)
        alone = [beam_search(case.model, features[i:i + 1], config)[0] for i in range(5)]
    for a, b, c in zip(together, chunked, alone):
        assert a.tokens == b.tokens == c.tokens and a.locations == b.locations == c.locations
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-12)
        assert a.log_prob == pytest.approx(c.log_prob, abs=1e-9)
