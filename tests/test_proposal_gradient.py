"""estimator.proposal_encoder_gradient: whether the proposal's wake term also trains the encoder.

With it off, q reads sg(F): the loss is the same number, the proposal's own parameters get the same
gradient, and the features get exactly the gradient of the model's two terms (the surrogate with
log q held constant), in every proposal layout."""

from __future__ import annotations

import pytest
import torch

from captioner.config import EstimatorConfig, ModelConfig, ResearchConfig
from captioner.data.batching import encode_captions
from captioner.data.vocabulary import Vocabulary
from captioner.estimators import draw_locations, wsram_surrogate, wsram_loss
from captioner.models.captioner import CaptionModel

VOCABULARY = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", "a", "red", "blue", "circle", "square", "and"])
CAPTIONS = ["a red circle and a blue square", "a blue square", "a red square and a red circle"]


def _model(proposal: str) -> CaptionModel:
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=5, hidden_dim=7, attention_dim=4, proposal=proposal, proposal_hidden_dim=3)
    config.encoder.feature_dim = 6
    config.encoder.grid = 2
    model = CaptionModel(config, VOCABULARY, image_size=16).double().train()
    with torch.no_grad():  # a trained-looking q (a uniform one, as at the start, passes no gradient to F)
        for p in model.proposal.attend_score.parameters():
            p.normal_(0.0, 0.5)
    return model


def _gradients(model, features, estimator: EstimatorConfig, layout: str, q_constant: bool = False):
    """(loss, d loss / d features, d loss / d proposal parameters) on fixed draws."""
    text = encode_captions(CAPTIONS, VOCABULARY)
    features = features.clone().requires_grad_(True)
    model.zero_grad()
    torch.manual_seed(3)  # the h_0 dropout (model.initial_state_dropout) draws from the global generator
    if q_constant:  # the reference: the surrogate with log q held constant (no proposal term at all)
        drawn = draw_locations(model, features, text, estimator.samples, generator=torch.Generator().manual_seed(2),
                               layout=layout)
        research = ResearchConfig()
        loss = wsram_surrogate(drawn.log_p_words, drawn.log_p_locations, drawn.log_q.detach(), estimator.control_variates,
                               research.prior_control_variate).loss.mean()
    else:
        loss = wsram_loss(model, features, text, estimator, generator=torch.Generator().manual_seed(2),
                          research=ResearchConfig(layout=layout)).loss
    loss.backward()
    proposal = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.proposal.parameters()]
    return loss.detach(), features.grad.clone(), proposal


@pytest.mark.parametrize("proposal, layout", [("factorised", "fused"), ("factorised", "stepwise"),
                                              ("sequential", "fused")])
def test_off_the_proposal_term_trains_the_proposal_only(proposal, layout):
    model = _model(proposal)
    features = torch.randn(3, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    shared = EstimatorConfig(samples=4)
    own = EstimatorConfig(samples=4, proposal_encoder_gradient=False)
    loss_on, features_on, proposal_on = _gradients(model, features, shared, layout)
    loss_off, features_off, proposal_off = _gradients(model, features, own, layout)
    _, features_model_terms, _ = _gradients(model, features, shared, layout, q_constant=True)
    torch.testing.assert_close(loss_off, loss_on, rtol=0, atol=0)
    for a, b in zip(proposal_off, proposal_on):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert any(float(g.abs().sum()) > 0 for g in proposal_off)  # q still learns
    torch.testing.assert_close(features_off, features_model_terms, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(features_on, features_off, rtol=0, atol=1e-9)  # on: q's term does reach F
