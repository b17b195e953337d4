"""Beam search: exact on a tiny case, greedy is beam size 1, batching changes nothing."""

from __future__ import annotations

import itertools

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
