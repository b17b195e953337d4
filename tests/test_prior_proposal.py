"""WS-RAM with the prior as its proposal (research.proposal_source: prior), the ablation without a
caption-conditioned network."""

from __future__ import annotations


import pytest
import torch

from captioner.config import ConfigError, EstimatorConfig, ResearchConfig, load_config
from captioner.estimators import draw_locations, wsram_loss
from tests.test_diagnostics import _batch, _model
from tests.test_training import tiny_config
from captioner.train import Trainer


def test_config_needs_a_proposal_network_unless_the_prior_proposes():
    with pytest.raises(ConfigError, match="proposal_source"):
        load_config(overrides=["model.proposal=none"])
    config = load_config(overrides=["model.proposal=none", "research.proposal_source=prior"])
    assert config.estimator.name == "wsram" and config.model.proposal == "none"
    with pytest.raises(ConfigError, match="sleep_update"):
        load_config(overrides=["model.proposal=none", "research.proposal_source=prior", "estimator.sleep_update=true"])


def test_prior_proposal_weights_are_the_word_likelihoods_and_only_the_model_trains():
    model = _model(proposal="none", dropout=0.0)
    features, rows, text = _batch(model)
    config = EstimatorConfig(samples=4)
    result = wsram_loss(model, features, text, config, torch.Generator().manual_seed(3), rows,
                        ResearchConfig(proposal_source="prior"))
    assert torch.isfinite(result.loss)
    assert result.diagnostics["log_q_minus_log_prior"].abs().item() == 0.0
    drawn = draw_locations(model, features, text, 4, "prior", generator=torch.Generator().manual_seed(3), rows=rows)
    # self-normalised weights over the K prior samples are softmax_k log p(y | a_k, x)
    expected_max = torch.softmax(drawn.log_p_words.detach(), -1).max(-1).values.mean()
    assert torch.allclose(result.diagnostics["max_weight"], expected_max)
    result.loss.backward()
    prior = [model.decoder.attend_hidden.weight, model.decoder.attend_score.weight]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prior)


def test_a_prior_proposal_run_trains(tmp_path):
    config = tiny_config("var", "train.max_steps=3", "estimator.name=wsram", "research.proposal_source=prior")
    assert config.model.proposal == "none"
    trainer = Trainer(config, tmp_path / "run")
    summary = trainer.train()
    assert summary["step"] == 3
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
