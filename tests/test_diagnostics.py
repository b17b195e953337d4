"""Gradient variance from the attention samples alone (captioner/diagnostics.py), on a tiny model."""

from __future__ import annotations

import pytest
import torch

from captioner.config import EstimatorConfig, ModelConfig
from captioner.data.batching import CaptionText
from captioner.data.vocabulary import SPECIAL_TOKENS, Vocabulary
from research.diagnostics import gradient_variance, parameter_groups
from captioner.models.captioner import CaptionModel


def _model(attention: str = "hard", proposal: str = "factorised", dropout: float = 0.3) -> CaptionModel:
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=6, hidden_dim=8, attention_dim=5, proposal_hidden_dim=4, dropout=dropout,
                         attention=attention, proposal=proposal, uniform_attention_init=False,
                         initial_state_dropout=dropout)
    vocabulary = Vocabulary(list(SPECIAL_TOKENS) + [f"w{i}" for i in range(7)])
    return CaptionModel(config, vocabulary, 24).double().train()


def _batch(model):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, 9, model.config.encoder.feature_dim,
                           generator=generator, dtype=torch.float64)
    lengths = [3, 5, 4, 2]
    steps = max(lengths) + 1
    targets = torch.randint(4, 11, (4, steps), generator=generator)
    position = torch.arange(steps)
    words = torch.tensor(lengths).unsqueeze(1)
    targets[position == words] = 2
    targets[position > words] = 0
    inputs = torch.cat([torch.ones(4, 1, dtype=torch.long), targets[:, :-1]], 1)
    inputs[inputs == 2] = 0
    mask = targets != 0
    return features, torch.tensor([0, 1, 2, 0]), CaptionText(inputs, targets, mask, mask.sum(1))


def test_groups_split_prior_decoder_proposal():
    model = _model()
    groups = parameter_groups(model)
    assert set(groups) >= {"prior", "decoder", "proposal"}
    names = {g: {n for n, _ in members} for g, members in groups.items()}
    assert "decoder.attend_hidden.weight" in names["prior"] and "decoder.lstm.weight_hh_l0" in names["decoder"]
    every = [n for members in names.values() for n in members]
    assert len(every) == len(set(every)) == sum(1 for p in model.parameters() if p.requires_grad)


def test_soft_attention_has_no_sampling_variance_even_with_dropout():
    model = _model("soft", "none")
    features, rows, text = _batch(model)
    report = gradient_variance(model, features, None, rows, text, EstimatorConfig(name="soft"), draws=4)
    assert report["decoder"]["mean_squared_norm"] > 0
    assert report["decoder"]["variance"] == 0.0 and report["prior"]["variance"] == 0.0


@pytest.mark.parametrize("name", ["wsram", "var"])
def test_sampling_estimators_have_variance_and_leave_the_model_unchanged(name):
    model = _model(proposal="factorised" if name == "wsram" else "none")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = torch.random.get_rng_state()
    features, rows, text = _batch(model)
    config = EstimatorConfig(name=name, samples=3)
    report = gradient_variance(model, features, None, rows, text, config, draws=5, seed=7)
    assert report["prior"]["variance"] > 0 and report["decoder"]["variance"] > 0
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert torch.equal(state, torch.random.get_rng_state())
    again = gradient_variance(model, features, None, rows, text, config, draws=5, seed=7)
    assert again == report  # a pure function of (parameters, batch, seed)


def test_at_least_two_draws():
    model = _model()
    features, rows, text = _batch(model)
    with pytest.raises(ValueError, match="at least 2"):
        gradient_variance(model, features, None, rows, text, EstimatorConfig(), draws=1)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_var_with_the_expected_glimpse_trick_is_probed_on_the_models_device(device):
    # The probe hands the estimator a plain generator on the model's device; VAR's whole-batch coin
    # (expected glimpse or sampled location) must draw from it there (a CUDA generator cannot draw
    # a CPU tensor: this arm once failed on the GPU only), and the coin is part of each draw.
    model = _model(proposal="none").to(device)
    features, rows, text = _batch(model)
    text = CaptionText(text.inputs.to(device), text.targets.to(device), text.mask.to(device), text.lengths.to(device))
    config = EstimatorConfig(name="var", expected_glimpse_probability=0.5)
    report = gradient_variance(model, features.to(device), None, rows.to(device), text, config, draws=12, seed=3)
    assert report["prior"]["variance"] > 0
    assert report == gradient_variance(model, features.to(device), None, rows.to(device), text, config,
                                       draws=12, seed=3)
    always = gradient_variance(model, features.to(device), None, rows.to(device), text,
                               EstimatorConfig(name="var", expected_glimpse_probability=1.0), draws=3, seed=3)
    assert always["prior"]["variance"] < 1e-20  # the expected glimpse is deterministic
