"""Several hard glimpses per word (model.glimpses_per_word = G): a_t is G locations drawn
independently from pi_t (q_t while training), z_t the mean of their features, and log pi_t(a_t) the
sum of their log-probabilities. shared/design/wsram.md's checks, by exact enumeration over all
(L^G)^T paths of a tiny float64 case (L = 4, T = 3, G = 2: 4,096 paths), and the decoding modes."""

from __future__ import annotations

import math

import pytest
import torch

from captioner.config import ConfigError, DecodeConfig, EstimatorConfig, load_config
from captioner.data.batching import encode_captions
from captioner.estimators import (
    draw_locations,
    likelihood_bound_from_log_weights,
    masked_sum,
    score_sequences,
    wsram_loss,
    wsram_surrogate,
)
from captioner.models.decode import beam_search, glimpse_multisets
from captioner.models.decoder import location_log_probs, log_softmax, word_log_probs
from tests.conftest import TinyCase
from tests.test_wsram_checks import _chi_square, _expected_bound, glimpses_fed_to_the_lstm

G = 2
# 0.999 quantile of the chi-square distribution with 15 degrees of freedom (4 x 4 location pairs).
CHI_SQUARE_15_DF_999 = 37.697


def _case(seed: int = 0, proposal: str = "factorised") -> TinyCase:
    return TinyCase(proposal=proposal, seed=seed, glimpses=G)


# ---- check 1: the bound, by enumeration ---------------------------------------------------------
def test_bound_is_below_the_exact_log_likelihood_and_approaches_it():
    case = _case()
    with torch.no_grad():
        log_py, log_pa, log_q = case.exact_terms()
    assert len(log_py) == 4 ** (3 * G)
    assert float(torch.logsumexp(log_pa, 0)) == pytest.approx(0.0, abs=1e-10)  # p(a|x) sums to 1 over G-tuples
    assert float(torch.logsumexp(log_q, 0)) == pytest.approx(0.0, abs=1e-10)
    log_marginal = float(torch.logsumexp(log_py + log_pa, 0))
    log_w = log_py + log_pa - log_q
    bounds = [_expected_bound(log_w, log_q, k) for k in (1, 2)]
    assert bounds[0] < bounds[1] < log_marginal
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        drawn = draw_locations(case.model, case.features, case.text, 50000, "model", generator=generator)
    assert drawn.locations.shape == (1, 50000, 3, G)
    large_k = float(likelihood_bound_from_log_weights(drawn.log_p_words + drawn.log_p_locations - drawn.log_q))
    assert large_k == pytest.approx(log_marginal, abs=0.03)


def test_sampled_paths_are_scored_as_the_enumeration_scores_them():
    """Each path drawn (from q and from the prior, fused and step by step) carries the exact log terms
    of that G-tuple path; with q = prior, E[L_1] is the VAR objective sum_a p(a|x) log p(y|a,x)."""
    case = _case(seed=1)
    with torch.no_grad():
        log_py, log_pa, log_q = case.exact_terms()
        n = 20000
        for source in ("model", "prior"):
            drawn = draw_locations(case.model, case.features.expand(n, -1, -1), case.text.repeat(n), 1, source,
                                   generator=torch.Generator().manual_seed(2))
            index = case.path_index(drawn.locations[:, 0])
            torch.testing.assert_close(drawn.log_p_words[:, 0], log_py[index], atol=1e-10, rtol=0)
            torch.testing.assert_close(drawn.log_p_locations[:, 0], log_pa[index], atol=1e-10, rtol=0)
            torch.testing.assert_close(drawn.log_q[:, 0], (log_q if source == "model" else log_pa)[index],
                                       atol=1e-10, rtol=0)
        values = (drawn.log_p_words + drawn.log_p_locations - drawn.log_q)[:, 0]
    var_objective = float((log_pa.exp() * log_py).sum())
    assert abs(float(values.mean()) - var_objective) < 4 * float(values.std()) / math.sqrt(n)


# ---- check 2: the surrogate's gradient ----------------------------------------------------------
def test_surrogate_gradient_is_the_sum_of_coefficient_times_grad_log_terms():
    case = _case(seed=3)
    model = case.model
    features = torch.randn(2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    text = encode_captions(["red circle", "circle"], case.vocabulary)
    drawn = draw_locations(model, features, text, 3, "model", generator=torch.Generator().manual_seed(4))
    terms = wsram_surrogate(drawn.log_p_words, drawn.log_p_locations, drawn.log_q)
    params = list(model.parameters())
    surrogate = torch.autograd.grad(terms.loss.sum(), params, retain_graph=True, allow_unused=True)
    assembled = [torch.zeros_like(p) for p in params]
    for name, log_term in (("words", drawn.log_p_words), ("locations", drawn.log_p_locations),
                           ("proposal", drawn.log_q)):
        for b in range(2):
            for k in range(3):
                grads = torch.autograd.grad(log_term[b, k], params, retain_graph=True, allow_unused=True)
                for total, g in zip(assembled, grads):
                    if g is not None:
                        total -= terms.coefficients[name][b, k] * g
    checked = 0
    for s, a in zip(surrogate, assembled):
        torch.testing.assert_close(torch.zeros_like(a) if s is None else s, a, atol=1e-12, rtol=1e-9)
        checked += int(a.abs().sum() > 0)
    assert checked > 10


# ---- check 3: the proposal's update -------------------------------------------------------------
def test_score_of_q_has_zero_mean_over_g_tuple_paths():
    case = _case(seed=5)
    _, _, log_q = case.exact_terms()
    expectation = (log_q.detach().exp() * log_q).sum()
    grads = [g for g in torch.autograd.grad(expectation, list(case.model.proposal.parameters()), allow_unused=True)
             if g is not None]
    assert grads and max(float(g.abs().max()) for g in grads) < 1e-12


def test_proposal_update_lowers_the_exact_kl():
    case = _case(seed=5)

    def kl() -> float:
        with torch.no_grad():
            log_py, log_pa, log_q = case.exact_terms()
            log_posterior = torch.log_softmax(log_py + log_pa, 0)
            return float((log_posterior.exp() * (log_posterior - log_q)).sum())

    before = kl()
    optimizer = torch.optim.SGD(case.model.proposal.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(6)
    for _ in range(200):
        result = wsram_loss(case.model, case.features, case.text, EstimatorConfig(samples=5), generator)
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
    assert before > 0.1
    assert kl() < 0.6 * before


# ---- check 4: the two decoder layouts ------------------------------------------------------------
def test_fused_and_stepwise_decoders_agree_on_g_tuples():
    case = _case(seed=7)
    decoder = case.model.decoder
    features = torch.randn(4, 4, 5, dtype=torch.float64)
    text = encode_captions(["red circle", "circle red red circle", "red", "circle circle"], case.vocabulary)
    locations = torch.randint(0, 4, (*text.inputs.shape, G))
    fused = decoder.forward_given_locations(features, text.inputs, locations)
    stepwise = decoder.forward_stepwise(features, text.inputs, "given", locations=locations)
    for a, b in ((fused.word_logits, stepwise.word_logits), (fused.attention_logits, stepwise.attention_logits),
                 (fused.hidden, stepwise.hidden)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    # one grid per image (rows) reads the same glimpses as one grid per caption
    rows = torch.tensor([1, 0, 1, 0])
    by_rows = decoder.forward_given_locations(features[:2], text.inputs, locations, rows)
    by_caption = decoder.forward_given_locations(features[rows], text.inputs, locations)
    torch.testing.assert_close(by_rows.word_logits, by_caption.word_logits, atol=1e-12, rtol=0)


# ---- check 5: padding ---------------------------------------------------------------------------
def test_padded_steps_add_exactly_zero_with_g_tuples():
    case = _case(seed=10)
    padded = encode_captions(["red circle", "red circle circle red red circle"], case.vocabulary)
    features = case.features.expand(2, -1, -1)
    locations = torch.randint(0, 4, (*padded.inputs.shape, G))
    changed = locations.clone()
    changed[0, 3:] = (changed[0, 3:] + 1) % 4
    first = score_sequences(case.model.decoder.forward_given_locations(features, padded.inputs, locations), padded, None)
    second = score_sequences(case.model.decoder.forward_given_locations(features, padded.inputs, changed), padded, None)
    assert torch.equal(first[0][0], second[0][0]) and torch.equal(first[1][0], second[1][0])
    assert not torch.equal(first[1][1], first[1][1] + 1)  # (the second caption's terms are real numbers)


# ---- check 6: what is drawn is what is scored ---------------------------------------------------
def test_pairs_follow_q_and_the_prior():
    """The G locations of a step are independent draws: the pair at step t follows q_t(i) q_t(j)
    (from q) and pi_0(i) pi_0(j) (from the prior)."""
    case = _case(seed=11)
    with torch.no_grad():
        drawn = draw_locations(case.model, case.features, case.text, 20000, "model",
                               generator=torch.Generator().manual_seed(12))
        q = case.model.proposal.log_probs(case.features, case.text.targets, case.text.lengths).exp()[0]
        prior = draw_locations(case.model, case.features, case.text, 20000, "prior",
                               generator=torch.Generator().manual_seed(13))
        decoder = case.model.decoder
        h0, _ = decoder.initial_state(case.features)
        pi0 = decoder.attention_logits(decoder.project_features(case.features), h0).softmax(-1)[0]
    for t in range(case.steps):
        pairs = drawn.locations[0, :, t]  # (K, G)
        counts = torch.bincount(pairs[:, 0] * 4 + pairs[:, 1], minlength=16).double()
        assert _chi_square(counts, torch.outer(q[t], q[t]).flatten()) < CHI_SQUARE_15_DF_999
    pairs = prior.locations[0, :, 0]
    counts = torch.bincount(pairs[:, 0] * 4 + pairs[:, 1], minlength=16).double()
    assert _chi_square(counts, torch.outer(pi0, pi0).flatten()) < CHI_SQUARE_15_DF_999
    # the test has power: one location repeated G times (not independent) is rejected
    same = torch.bincount(pairs[:, 0] * 5, minlength=16).double()
    assert _chi_square(same, torch.outer(pi0, pi0).flatten()) > CHI_SQUARE_15_DF_999


@pytest.mark.parametrize("proposal,source", [("factorised", "model"), ("factorised", "prior"),
                                             ("sequential", "model")])
def test_glimpse_is_the_mean_feature_of_the_locations_in_the_weights(proposal, source):
    case = _case(seed=15, proposal=proposal)
    glimpses, drawn = glimpses_fed_to_the_lstm(case, source)  # (K, T, D)
    locations = drawn.locations[0]  # (K, T, G)
    assert locations.shape == (6, 3, G) and bool((locations[..., 0] != locations[..., 1]).any())
    torch.testing.assert_close(glimpses, case.features[0][locations].mean(2), atol=1e-15, rtol=0)
    text = case.text.repeat(6)
    out = case.model.decoder.forward_given_locations(case.features.expand(6, -1, -1), text.inputs, locations)
    log_pa = masked_sum(location_log_probs(out.attention_logits, locations), text.mask)
    log_py = masked_sum(word_log_probs(out.word_logits, text.targets), text.mask)
    pi = log_softmax(out.attention_logits)
    by_hand = masked_sum(pi.gather(-1, locations[..., :1]).squeeze(-1) + pi.gather(-1, locations[..., 1:]).squeeze(-1),
                         text.mask)
    torch.testing.assert_close(log_pa, by_hand, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_pa, drawn.log_p_locations[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(log_py, drawn.log_p_words[0], atol=1e-12, rtol=0)


def test_a_g_tuple_is_the_same_as_one_location_holding_their_mean():
    """z_t of a G-tuple equals that of one extra location whose feature is the tuple's mean."""
    case = _case(seed=17)
    decoder = case.model.decoder
    text = encode_captions(["red circle circle"], case.vocabulary)
    locations = torch.tensor([[[0, 3], [2, 2], [1, 0], [3, 1]]])
    tuples = decoder.forward_given_locations(case.features, text.inputs, locations)
    means = case.features[0][locations[0]].mean(1)  # (T, D)
    extended = torch.cat([case.features, means.unsqueeze(0)], 1)  # locations 4.. hold the means
    decoder.glimpses = 1
    single = decoder.forward_given_locations(extended, text.inputs, 4 + torch.arange(4).unsqueeze(0))
    torch.testing.assert_close(tuples.word_logits, single.word_logits, atol=1e-12, rtol=0)


# ---- decoding --------------------------------------------------------------------------------------
def test_marginal_decoding_sums_over_every_g_tuple():
    """The first word's probability under marginal decoding is sum_{i,j} pi(i) pi(j) p(w | (F_i + F_j) / 2)."""
    case = _case(seed=19)
    model, decoder = case.model.eval(), case.model.decoder
    (caption,) = beam_search(model, case.features, DecodeConfig(beam_size=1, max_length=4, attention_mode="marginal"))
    assert caption.words and caption.glimpses[0][0] != caption.glimpses[0][1]  # a pair of two cells to check
    assert len(caption.glimpses) == len(caption.words) and all(len(g) == G for g in caption.glimpses)
    with torch.no_grad():
        state = decoder.initial_state(case.features)
        pi = decoder.attention_logits(decoder.project_features(case.features), state[0]).softmax(-1)[0]
        token = torch.tensor([case.vocabulary.bos_id])
        total = 0.0
        for i in range(4):
            for j in range(4):
                glimpse = case.features[0, [i, j]].mean(0, keepdim=True)
                logits, _ = decoder.advance(token, glimpse, state)
                total += float(pi[i] * pi[j] * logits.softmax(-1)[0, caption.tokens[0]])
    assert caption.word_probs[0] == pytest.approx(total, rel=1e-9)
    # the word's reported location is the likelier (under pi) of the pair it carried on from
    i, j = caption.glimpses[0]
    assert caption.locations[0] == (i if pi[i] >= pi[j] else j)


def test_argmax_decoding_takes_the_mode_which_is_one_glimpse():
    """The mode of G independent draws is argmax pi_t G times: the same captions as G = 1."""
    case = _case(seed=25)
    model = case.model.eval()
    features = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(25))
    decode = DecodeConfig(beam_size=2, max_length=5, attention_mode="argmax")
    several = beam_search(model, features, decode)
    model.decoder.glimpses = 1
    one = beam_search(model, features, decode)
    for a, b in zip(several, one):
        assert a.tokens == b.tokens and a.locations == b.locations and a.word_probs == b.word_probs
        assert a.glimpses == [[location] * G for location in a.locations] and b.glimpses is None


def test_sampled_glimpses_are_reported_and_reproducible():
    case = _case(seed=20)
    model = case.model.eval()
    features = torch.randn(2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(20))
    decode = DecodeConfig(beam_size=1, max_length=6, attention_mode="sample")
    a = beam_search(model, features, decode, torch.Generator().manual_seed(1))
    b = beam_search(model, features, decode, torch.Generator().manual_seed(1))
    assert [c.glimpses for c in a] == [c.glimpses for c in b] and [c.tokens for c in a] == [c.tokens for c in b]
    for caption in a:
        assert all(location in pair for location, pair in zip(caption.locations, caption.glimpses))


def test_multisets_and_their_orderings_cover_every_ordered_tuple():
    for locations, glimpses in ((4, 2), (5, 3), (3, 1)):
        tuples, log_orderings = glimpse_multisets(locations, glimpses)
        assert len(tuples) == math.comb(locations + glimpses - 1, glimpses)
        assert float(torch.logsumexp(log_orderings, 0).exp()) == pytest.approx(locations ** glimpses)
        ordered = torch.cartesian_prod(*[torch.arange(locations)] * glimpses).view(-1, glimpses)
        counted = {}
        for row in ordered.sort(-1).values.tolist():
            counted[tuple(row)] = counted.get(tuple(row), 0) + 1
        assert {tuple(t): round(float(c.exp())) for t, c in zip(tuples.tolist(), log_orderings)} == counted


def test_marginal_decoding_refuses_too_many_tuples():
    case = TinyCase(seed=21, glimpses=20)  # (4 + 19 choose 20) = 1,771 multisets: allowed
    (caption,) = beam_search(case.model.eval(), case.features, DecodeConfig(beam_size=1, max_length=2,
                                                                             attention_mode="marginal"))
    case = TinyCase(seed=21, glimpses=60)  # 39,711
    with pytest.raises(ValueError, match="among 4 locations, 39,711 of them"):
        beam_search(case.model.eval(), case.features, DecodeConfig(attention_mode="marginal"))


# ---- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    (["model.glimpses_per_word=0"], "model.glimpses_per_word: must be positive"),
    (["estimator.name=soft", "model.attention=soft", "model.glimpses_per_word=2"], "soft attention's glimpse"),
])
def test_bad_glimpse_counts_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_captioning_files_reports_every_glimpse_of_each_word(tmp_path):
    """`captioner caption`'s records: each word's "location" and, with several glimpses, all of them."""
    from PIL import Image

    from captioner.config import ModelConfig
    from captioner.inference import caption_files
    from captioner.models.captioner import CaptionModel

    case = _case(seed=22)
    torch.manual_seed(22)
    model = CaptionModel(ModelConfig(glimpses_per_word=G, uniform_attention_init=False, initial_state_dropout=0.0),
                         case.vocabulary, image_size=24)
    with torch.no_grad():
        model.decoder.out_word.bias[case.vocabulary.eos_id] = -20.0  # an untrained model: words, not <eos>
    path = tmp_path / "scene.png"
    Image.fromarray((torch.rand(24, 24, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()).save(path)
    (record,) = caption_files(model, [path], DecodeConfig(beam_size=2, max_length=4, attention_mode="marginal"),
                              attention_dir=tmp_path / "attention")
    assert record.words and all(len(word["glimpses"]) == G and word["location"] in word["glimpses"]
                                for word in record.words)
    assert (tmp_path / "attention" / "scene.png.attention.png").is_file()
