"""The initial-state options (issue 16): h_0, c_0 from a learned constant, the mean-feature dropout
that keeps the decoder from relying on the initial state for what it could see by looking, its
schedule, and the 'expected' prior update."""

from __future__ import annotations

import pytest
import torch

from captioner.config import ConfigError, EncoderConfig, EstimatorConfig, ModelConfig, ResearchConfig, load_config
from captioner.data.batching import encode_captions
from captioner.data.vocabulary import Vocabulary
from captioner.estimators import draw_locations, wsram_loss
from captioner.models.captioner import CaptionModel
from captioner.models.decoder import log_softmax
from captioner.train import Trainer
from tests.test_training import TINY

VOCABULARY = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", "a", "red", "blue", "circle", "square", "and"])


def _model(**settings) -> CaptionModel:
    torch.manual_seed(0)
    config = ModelConfig(encoder=EncoderConfig(feature_dim=6, grid=2), embedding_dim=5, hidden_dim=7, attention_dim=4,
                         proposal_hidden_dim=3, **settings)
    return CaptionModel(config, VOCABULARY, image_size=16).double()


def _features(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_learned_initial_state_ignores_the_image():
    decoder = _model(initial_state="learned").decoder
    h, c = decoder.initial_state(_features())
    assert torch.equal(h, h[:1].expand_as(h)) and torch.equal(c, c[:1].expand_as(c))
    torch.testing.assert_close(h[0], torch.tanh(decoder.init_hidden.bias))
    default = _model().decoder
    h, _ = default.initial_state(_features())
    assert not torch.allclose(h[0], h[1])  # the default reads the mean feature


def test_initial_state_dropout_replaces_the_mean_feature_while_training_only():
    decoder = _model(initial_state_dropout=1.0).decoder
    features = _features()
    decoder.eval()
    h_eval, _ = decoder.initial_state(features)
    decoder.train()
    h_train, _ = decoder.initial_state(features)
    torch.testing.assert_close(h_train, torch.tanh(decoder.init_hidden.bias).expand_as(h_train))
    assert not torch.allclose(h_eval, h_train)  # at test time the mean feature is always there
    decoder.initial_state_dropout = 0.5
    torch.manual_seed(3)
    h_half, _ = decoder.initial_state(_features(400))
    dropped = (h_half - torch.tanh(decoder.init_hidden.bias)).abs().sum(-1) < 1e-12
    assert 0.4 < float(dropped.double().mean()) < 0.6


def test_initial_state_dropout_draws_one_decision_per_caption_for_its_k_samples():
    decoder = _model(initial_state_dropout=0.5).decoder.train()
    features = _features(6).repeat_interleave(5, 0)  # 6 captions x K = 5 rows, caption-major
    torch.manual_seed(4)
    h, _ = decoder.initial_state(features, group=5)
    blank = torch.tanh(decoder.init_hidden.bias)
    dropped = ((h - blank).abs().sum(-1) < 1e-12).view(6, 5)
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    assert 0 < int(dropped[:, 0].sum()) < 6
    with pytest.raises(ValueError, match="groups of 4"):
        decoder.initial_state(features, group=4)


def test_the_rate_in_a_tensor_draws_what_the_rate_as_a_number_draws():
    # the Trainer's graphed path fills decoder.initial_state_dropout_rate before each update: same masks
    decoder = _model(initial_state_dropout=0.5).decoder.train()
    features = _features(8).repeat_interleave(3, 0)
    for rate in (0.5, 0.2, 0.0):
        decoder.initial_state_dropout, decoder.initial_state_dropout_rate = max(rate, 1e-9), None
        torch.manual_seed(7)
        as_number = decoder.initial_state(features, group=3)
        decoder.initial_state_dropout_rate = torch.tensor(rate)
        torch.manual_seed(7)
        as_tensor = decoder.initial_state(features, group=3)
        for a, b in zip(as_number, as_tensor):
            assert torch.equal(a, b)
    hidden = []
    for rate in (0.9, 0.1):  # the tensor's value, not the number, sets the share dropped
        decoder.initial_state_dropout, decoder.initial_state_dropout_rate = 0.5, torch.tensor(rate)
        torch.manual_seed(7)
        hidden.append(decoder.initial_state(features, group=3)[0])
    assert not torch.equal(*hidden)


def test_the_dropout_schedule_falls_linearly_to_zero_and_resumes_exactly(tmp_path):
    config = load_config(overrides=TINY + ["model.initial_state_dropout=0.8", "train.initial_state_dropout_decay=0.5"])
    trainer = Trainer(config, tmp_path / "run")
    total = config.train.epochs * trainer.sampler.batches_per_epoch  # 2 epochs x 3 batches
    values = [trainer.initial_state_dropout(step) for step in range(total)]
    assert values[0] == pytest.approx(0.8)
    assert values[1] == pytest.approx(0.8 * (1 - 1 / 3))
    assert all(v == 0.0 for v in values[3:])
    trainer.train()
    assert trainer.model.decoder.initial_state_dropout == pytest.approx(values[-1])
    constant = Trainer(load_config(overrides=TINY + ["model.initial_state_dropout=0.3"]), tmp_path / "constant")
    assert {constant.initial_state_dropout(s) for s in range(6)} == {0.3}


def test_initial_state_settings_are_checked_and_saved(tmp_path):
    with pytest.raises(ConfigError, match="model.initial_state_dropout"):
        load_config(overrides=["model.initial_state_dropout=1.5"])
    with pytest.raises(ConfigError, match="model.initial_state"):
        load_config(overrides=["model.initial_state=zeros"])
    with pytest.raises(ConfigError, match="train.initial_state_dropout_decay"):
        load_config(overrides=["train.initial_state_dropout_decay=2"])
    model = _model(initial_state="learned", initial_state_dropout=0.25)
    model.save_pretrained(tmp_path / "model")
    loaded = CaptionModel.from_pretrained(tmp_path / "model")
    assert loaded.config.initial_state == "learned" and loaded.decoder.initial_state_dropout == 0.25


# ---- the 'expected' prior update -------------------------------------------------------------
def test_expected_prior_term_is_the_proposals_expectation_along_each_path():
    model = _model(uniform_attention_init=False).train(False)
    text = encode_captions(["a red circle", "a blue square and a red circle"], VOCABULARY)
    features = _features(2)
    drawn = draw_locations(model, features, text, 3, "model", generator=torch.Generator().manual_seed(5),
                           expected_prior=True)
    log_q_steps = model.proposal.log_probs(features, text.targets, text.lengths)
    paths = drawn.locations.view(6, -1)
    output = model.decoder.forward_given_locations(features.repeat_interleave(3, 0), text.repeat(3).inputs, paths)
    per_step = (log_q_steps.repeat_interleave(3, 0).exp() * log_softmax(output.attention_logits)).sum(-1)
    expected = torch.where(text.repeat(3).mask, per_step, 0.0).sum(-1).view(2, 3)
    torch.testing.assert_close(drawn.expected_log_p_locations, expected)


def test_expected_prior_update_does_not_move_a_prior_equal_to_the_proposal():
    """Uniform prior and proposal (the start of training): the sampled wake term moves the prior by
    sampling noise alone; the expected one gives it exactly zero gradient."""
    model = _model(dropout=0.0)
    text = encode_captions(["a red circle", "a blue square and a red circle"], VOCABULARY)
    score = model.decoder.attend_score.weight
    grads = {}
    for update in ("wake", "expected"):
        model.zero_grad()
        result = wsram_loss(model, _features(2), text, EstimatorConfig(samples=4),
                            generator=torch.Generator().manual_seed(6), research=ResearchConfig(prior_update=update))
        result.loss.backward()
        grads[update] = score.grad.abs().max().item()
    assert grads["wake"] > 1e-6
    assert grads["expected"] == 0.0


def test_expected_prior_update_needs_a_proposal_network():
    with pytest.raises(ConfigError, match="prior_update"):
        load_config(overrides=["research.prior_update=expected", "research.proposal_source=prior",
                               "model.proposal=none"])
