"""Caption generation with the prior: one batched beam search (greedy is beam size 1).

At each step every hypothesis picks its glimpse from the prior pi_t (argmax location by
default, or a sample, or the expected glimpse; soft models use their soft glimpse), then the
beam is extended over words. Every generated word comes with its location, that location's
prior probability and the word's probability.

attention_mode "marginal" does not pick a glimpse before the word: it scores every word by its
probability under the hard-attention model with this step's location summed out,
p(w | y_<t, l_<t) = sum_l pi_t(l) p(w | l, y_<t, l_<t) (all L locations are run through the LSTM
step), extends the beam with those scores, and then carries on from the location that is most
probable given the word it chose, argmax_l pi_t(l) p(w | l, ...). The score of a finished caption
is then the exact log-probability of its words given the locations chosen before each word, where
argmax and expected glimpses score the words under one location or the mean feature, neither of
which is what the model was trained to predict from. It costs L LSTM steps per hypothesis and
word; images are decoded in chunks that keep the (hypotheses, L, V) word table near 2^26 numbers.

With several glimpses per word (the decoder's `glimpses` G > 1: G independent draws from pi_t, their
features averaged), "argmax" takes the mode of the G draws (G times argmax pi_t, the same glimpse as
one), "sample" draws G locations, and "marginal" sums over every G-tuple of locations (the glimpse
is their mean, so each multiset of G locations is run once, weighted by the number of its orderings:
L(L+1)/2 LSTM rows per hypothesis for G = 2; at most MARGINAL_TUPLES multisets). Each word then still
reports one location: the most probable under pi_t of those it looked at; all G are in
`GeneratedCaption.glimpses` ("expected": argmax pi_t, G times).
"""

from __future__ import annotations

from dataclasses import dataclass

import itertools
import math

import torch

from captioner.config import DecodeConfig
from captioner.models.decoder import log_softmax


@dataclass
class GeneratedCaption:
    tokens: list[int]  # word ids, without <eos>
    words: list[str]
    locations: list[int]  # attended location per word (argmax of pi_t for expected/soft glimpses)
    location_probs: list[float]  # pi_t(location) per word
    word_probs: list[float]  # p(word | ...) per word
    log_prob: float  # total log-probability of the words (with <eos>)
    glimpses: list[list[int]] | None = None  # with several glimpses per word: all G locations of each word

    @property
    def text(self) -> str:
        return " ".join(self.words)


ATTENTION_MODES = ("argmax", "sample", "expected", "marginal")
MARGINAL_TABLE_NUMBERS = 1 << 26
MARGINAL_TUPLES = 1 << 14  # most multisets of G glimpse locations that marginal decoding sums over


def glimpse_multisets(num_locations: int, glimpses: int,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Every multiset of G locations, as sorted tuples (C, G) with C = (L + G - 1 choose G), and the log
    of its number of orderings, G! / prod_l (count of l)! (C,): the ordered G-tuples that share it."""
    if glimpses == 1:
        return (torch.arange(num_locations, device=device).unsqueeze(1),
                torch.zeros(num_locations, dtype=torch.float64, device=device))
    tuples = torch.tensor(list(itertools.combinations_with_replacement(range(num_locations), glimpses)),
                          device=device)
    counts = torch.zeros(len(tuples), num_locations, dtype=torch.float64, device=device).scatter_add_(
        1, tuples, torch.ones(tuples.shape, dtype=torch.float64, device=device))
    return tuples, math.lgamma(glimpses + 1) - torch.lgamma(counts + 1).sum(-1)


def _repeated_trigram_words(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(M, t) histories -> (M, V) True where word w would make (y_{t-1}, y_t, w) a trigram already seen."""
    match = (tokens[:, :-2] == tokens[:, -2:-1]) & (tokens[:, 1:-1] == tokens[:, -1:])  # (M, t-2)
    counts = torch.zeros(tokens.shape[0], vocab_size, device=tokens.device)
    counts.scatter_add_(1, tokens[:, 2:], match.to(counts.dtype))
    return counts > 0


@torch.no_grad()
def beam_search(model, features: torch.Tensor, decode: DecodeConfig | None = None,
                generator: torch.Generator | None = None) -> list[GeneratedCaption]:
    """Best caption for each of N feature grids (N, L, D), all images decoded together, with the
    settings of `decode` (DecodeConfig(), beam 3, when None): the one generation path of the
    package, used by `CaptionModel.caption`, `captioner caption`, `captioner evaluate` and
    validation.

    Hypotheses are ranked by log-probability / length**decode.length_penalty once finished. With
    decode.block_trigrams, a word that would repeat a trigram already in its hypothesis is not
    allowed. `generator` draws the glimpses of attention_mode "sample"."""
    decode = decode or DecodeConfig()
    max_length, length_penalty, attention_mode = decode.max_length, decode.length_penalty, decode.attention_mode
    block_trigrams = decode.block_trigrams
    if attention_mode not in ATTENTION_MODES:
        raise ValueError(f"attention_mode: must be one of {', '.join(ATTENTION_MODES)}, got {attention_mode!r}")
    if decode.beam_size < 1 or max_length < 1:
        raise ValueError(f"beam_size and max_length must be >= 1, got {decode.beam_size} and {max_length}")
    decoder, vocabulary = model.decoder, model.vocabulary
    n, num_locations, _ = features.shape
    marginal = attention_mode == "marginal" and not decoder.soft
    glimpses = 1 if decoder.soft else decoder.glimpses
    if marginal:
        multisets = math.comb(num_locations + glimpses - 1, glimpses)
        if multisets > MARGINAL_TUPLES:
            raise ValueError(f"attention_mode 'marginal' sums over every choice of this model's {glimpses} glimpses "
                             f"per word among {num_locations} locations, {multisets:,} of them (at most "
                             f"{MARGINAL_TUPLES:,}); decode with 'argmax', 'sample' or 'expected'")
        tuples, log_orderings = glimpse_multisets(num_locations, glimpses, features.device)  # (C, G), (C,)
        per_image = decode.beam_size * len(tuples) * len(vocabulary)
        chunk = max(1, MARGINAL_TABLE_NUMBERS // per_image)
        if n > chunk:
            return [caption for start in range(0, n, chunk)
                    for caption in beam_search(model, features[start:start + chunk], decode, generator)]
    w = decode.beam_size
    device = features.device
    features_w = features.repeat_interleave(w, 0)  # (N*W, L, D)
    projected = decoder.project_features(features_w)
    state = decoder.initial_state(features_w)
    tokens = torch.full((n * w,), vocabulary.bos_id, dtype=torch.long, device=device)
    score_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    scores = torch.full((n, w), float("-inf"), device=device, dtype=score_dtype)
    scores[:, 0] = 0.0  # all beams start identical: keep one
    finished = torch.zeros(n * w, dtype=torch.bool, device=device)
    lengths = torch.zeros(n * w, device=device, dtype=score_dtype)
    history = {key: torch.zeros(n * w, 0, dtype=dtype, device=device) for key, dtype in
               (("tokens", torch.long), ("locations", torch.long), ("location_probs", score_dtype),
                ("word_probs", score_dtype))}
    if glimpses > 1:
        history["glimpses"] = torch.zeros(n * w, 0, glimpses, dtype=torch.long, device=device)
    vocab_size = len(vocabulary)
    for _ in range(max_length):
        logits = decoder.attention_logits(projected, state[0])
        log_pi = log_softmax(logits)
        probs = log_pi.exp()
        if marginal:
            # every location (multiset of G) at once: row (m, c) is hypothesis m looking at tuple c
            m, count = n * w, len(tuples)
            repeat = (lambda x: x.repeat_interleave(count, 0))
            if glimpses == 1:
                every_glimpse, log_prior = features_w, log_pi
            else:
                every_glimpse = features_w[:, tuples].mean(2)  # (M, C, D)
                # (M, C): the probability of drawing that multiset, in any order
                log_prior = log_pi[:, tuples].sum(-1) + log_orderings.to(log_pi.dtype)
            word_logits, all_states = decoder.advance(
                repeat(tokens), every_glimpse.reshape(m * count, -1), (repeat(state[0]), repeat(state[1])))
            joint = log_prior.to(score_dtype).unsqueeze(-1) + log_softmax(word_logits).to(score_dtype).view(
                m, count, -1)  # (M, C, V): log pi_t(c) + log p(w | c)
            log_p = torch.logsumexp(joint, 1)
        elif decoder.soft or attention_mode == "expected":
            location = looked = probs.argmax(-1)
            glimpse = decoder.soft_glimpse(features_w, logits, state[0])
        else:
            # argmax: the mode of the G draws is G times argmax pi_t, whose mean is that one feature
            looked = probs.argmax(-1) if attention_mode == "argmax" else decoder.draw(logits, generator)
            glimpse = decoder.hard_glimpse(features_w, looked)
            location = looked if looked.dim() == 1 else _most_probable(probs, looked)
        if not marginal:
            word_logits, new_state = decoder.advance(tokens, glimpse, state)
            log_p = log_softmax(word_logits).to(score_dtype)
        # A finished hypothesis only extends with <pad> at no cost, so it keeps its score.
        log_p = torch.where(finished.unsqueeze(1), torch.full_like(log_p, float("-inf")), log_p)
        log_p[:, vocabulary.pad_id] = torch.where(finished, 0.0, float("-inf"))
        log_p[:, vocabulary.bos_id] = float("-inf")
        if block_trigrams and history["tokens"].shape[1] >= 3:
            # a finished hypothesis only repeats <pad>: never blocked (it would drop out of the beam)
            blocked = _repeated_trigram_words(history["tokens"], vocab_size) & ~finished.unsqueeze(1)
            log_p = log_p.masked_fill(blocked, float("-inf"))
        candidates = (scores.view(n * w, 1) + log_p).view(n, w * vocab_size)
        scores, flat = candidates.topk(w, -1)
        parent = (flat // vocab_size) + torch.arange(n, device=device).unsqueeze(1) * w
        parent = parent.view(-1)
        word = (flat % vocab_size).view(-1)
        if marginal:
            # carry on from the location (tuple) most probable given the chosen word (its posterior mode)
            chosen_tuple = joint[parent, :, word].argmax(-1)
            pick = parent * count + chosen_tuple
            state = (all_states[0][pick], all_states[1][pick])
            looked_at = tuples[chosen_tuple]  # (M, G)
            chosen_location = looked_at[:, 0] if glimpses == 1 else _most_probable(probs[parent], looked_at)
        else:
            chosen_location = location[parent]
            state = (new_state[0][parent], new_state[1][parent])
            if glimpses > 1:
                looked_at = (looked.unsqueeze(-1).expand(-1, glimpses) if looked.dim() == 1 else looked)[parent]
        was_finished = finished[parent]
        history = {key: value[parent] for key, value in history.items()}
        history["tokens"] = torch.cat([history["tokens"], word.unsqueeze(1)], 1)
        if glimpses > 1:
            history["glimpses"] = torch.cat([history["glimpses"], looked_at.unsqueeze(1)], 1)
        history["locations"] = torch.cat([history["locations"], chosen_location.unsqueeze(1)], 1)
        history["location_probs"] = torch.cat(
            [history["location_probs"], probs[parent].gather(1, chosen_location.unsqueeze(1)).to(score_dtype)], 1)
        history["word_probs"] = torch.cat(
            [history["word_probs"], log_p[parent].gather(1, word.unsqueeze(1)).exp()], 1)
        lengths = torch.where(was_finished, lengths[parent], lengths[parent] + 1)
        finished = was_finished | (word == vocabulary.eos_id)
        tokens = word
        if bool(finished.all()):
            break
    normalised = scores.view(-1) / lengths.clamp_min(1).pow(length_penalty)
    # Unfinished hypotheses (hit max_length) still compete, ranked the same way.
    best = normalised.view(n, w).argmax(-1) + torch.arange(n, device=device) * w
    results = []
    for index in best.tolist():
        ids = history["tokens"][index].tolist()
        keep = len(ids)
        for position, token in enumerate(ids):
            if token in (vocabulary.eos_id, vocabulary.pad_id):
                keep = position
                break
        results.append(GeneratedCaption(
            tokens=ids[:keep],
            words=[vocabulary.words[i] for i in ids[:keep]],
            locations=history["locations"][index, :keep].tolist(),
            location_probs=history["location_probs"][index, :keep].tolist(),
            word_probs=history["word_probs"][index, :keep].tolist(),
            log_prob=float(scores.view(-1)[index]),
            glimpses=history["glimpses"][index, :keep].tolist() if glimpses > 1 else None,
        ))
    return results


def _most_probable(probs: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """Of each row's G locations (M, G), the one most probable under probs (M, L): (M,)."""
    return locations.gather(1, probs.gather(1, locations).argmax(1, keepdim=True)).squeeze(1)
