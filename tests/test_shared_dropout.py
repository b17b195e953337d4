"""One dropout mask per caption, shared by its K attention samples (issue 16).

The importance weights of a caption's K samples must compare locations, not dropout masks. The
check: make the words independent of the glimpse (its weights zeroed) and the prior equal to the
proposal (both uniform, or the prior as proposal); then, with dropout on, the K log-weights of a
caption must be equal and ESS/K exactly 1 in every layout. A control with one mask per row shows
that the check would catch per-sample masks."""

from __future__ import annotations

import pytest
import torch

from captioner.config import EncoderConfig, EstimatorConfig, ModelConfig, ResearchConfig
from captioner.data.batching import encode_captions
from captioner.data.vocabulary import Vocabulary
from captioner.estimators import draw_locations, effective_sample_size, normalized_weights, wsram_loss
from captioner.models.captioner import CaptionModel
from captioner.models.decoder import GroupedDropout
from captioner.models.noise import BatchShare
from captioner.train import TrainingObjective

VOCABULARY = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", "a", "red", "blue", "circle", "square", "and"])
CAPTIONS = ["a red circle and a blue square", "a blue square", "a red square and a red circle"]


def _blind_model(proposal: str = "factorised", encoder: EncoderConfig | None = None, glimpses: int = 1) -> CaptionModel:
    """Dropout on the embeddings and the deep output, uniform prior and proposal, and a decoder whose
    words do not depend on the glimpse (its LSTM input weights and deep-output weights zeroed)."""
    torch.manual_seed(0)
    config = ModelConfig(encoder=encoder or EncoderConfig(feature_dim=6, grid=2), embedding_dim=5, hidden_dim=7,
                         attention_dim=4, proposal=proposal, proposal_hidden_dim=3, dropout=0.5,
                         embedding_dropout=0.5, uniform_attention_init=True, glimpses_per_word=glimpses)
    model = CaptionModel(config, VOCABULARY, image_size=16).double().train()
    decoder = model.decoder
    with torch.no_grad():
        decoder.lstm.weight_ih_l0[:, config.embedding_dim:] = 0.0
        decoder.out_glimpse.weight.zero_()
    return model


def _log_weights(model: CaptionModel, samples: int, source: str = "model", layout: str = "fused") -> torch.Tensor:
    text = encode_captions(CAPTIONS, VOCABULARY)
    features = torch.randn(len(CAPTIONS), model.num_locations, model.config.encoder.feature_dim,
                           dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)  # dropout
    drawn = draw_locations(model, features, text, samples, source, generator=torch.Generator().manual_seed(2),
                           layout=layout)
    assert not torch.equal(drawn.locations[:, 0], drawn.locations[:, 1])  # the samples do differ
    return drawn.log_p_words + drawn.log_p_locations - drawn.log_q


def _assert_one_mask_per_caption(log_weights: torch.Tensor) -> None:
    torch.testing.assert_close(log_weights, log_weights[:, :1].expand_as(log_weights), rtol=0, atol=1e-12)
    ess = effective_sample_size(normalized_weights(log_weights)) / log_weights.shape[-1]
    torch.testing.assert_close(ess, torch.ones_like(ess), rtol=0, atol=1e-12)


@pytest.mark.parametrize("proposal, source, layout", [
    ("factorised", "model", "fused"),
    ("factorised", "model", "stepwise"),
    ("sequential", "model", "fused"),  # a sequential proposal always runs step by step
    ("none", "prior", "fused"),  # the prior as proposal: decoder step by step, log q = log pi
])
@pytest.mark.parametrize("glimpses", [1, 2])
def test_the_k_samples_of_a_caption_share_their_dropout_masks(proposal, source, layout, glimpses):
    model = _blind_model(proposal, glimpses=glimpses)
    log_weights = _log_weights(model, samples=4, source=source, layout=layout)
    _assert_one_mask_per_caption(log_weights)
    # Different captions (and so their masks) do differ: the check compares within a caption only.
    assert not torch.allclose(log_weights[0, 0], log_weights[2, 0])


def test_the_check_fails_with_one_mask_per_sample(monkeypatch):
    """The control: plain per-row dropout (what the decoder did before) makes the weights compare
    masks, and the check above catches it."""
    monkeypatch.setattr(GroupedDropout, "forward", lambda self, x, group=1: torch.nn.Dropout.forward(self, x))
    log_weights = _log_weights(_blind_model(), samples=4)
    with pytest.raises(AssertionError):
        _assert_one_mask_per_caption(log_weights)
    ess = effective_sample_size(normalized_weights(log_weights.detach())) / 4
    assert float(ess.min()) < 0.99


def test_dropout_is_off_in_eval_mode_and_plain_with_groups_of_one():
    dropout = GroupedDropout(0.5)
    x = torch.randn(6, 3, 4)
    torch.manual_seed(0)
    grouped = dropout(x, group=3)
    assert torch.equal(grouped[0], grouped[1]) or torch.equal(grouped[0] == 0, grouped[1] == 0)
    assert torch.equal(grouped[0:3] == 0, grouped[0:1].expand(3, -1, -1) == 0)
    assert not torch.equal(grouped[0] == 0, grouped[3] == 0)
    torch.manual_seed(0)
    plain = torch.nn.Dropout(0.5)(x)
    torch.manual_seed(0)
    torch.testing.assert_close(dropout(x, group=1), plain, rtol=0, atol=0)  # same draws as nn.Dropout
    dropout.eval()
    assert torch.equal(dropout(x, group=3), x)
    with pytest.raises(ValueError, match="groups of 4"):
        GroupedDropout(0.5)(torch.ones(6, 2), group=4)


def test_the_whole_training_objective_with_feature_dropout_on_a_backbone_grid():
    """Through the Trainer's objective with a pretrained-backbone adapter (feature dropout on the
    cached grid, once per image) and decoder dropout: the estimator's ESS/K is exactly 1 when the
    words cannot depend on the glimpse."""
    encoder = EncoderConfig(name="efficientnet-lite0", layer="block15", feature_dim=6, pretrained=False,
                            feature_dropout=0.5)
    model = _blind_model(encoder=encoder)
    text = encode_captions(CAPTIONS, VOCABULARY)
    grids = torch.randn(2, 49, 320, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    image_index = torch.tensor([0, 1, 1])
    estimator = EstimatorConfig(samples=5)
    share = BatchShare(torch.Generator().manual_seed(5), torch.Generator().manual_seed(6), 0, 3, 3)
    objective = TrainingObjective(model, estimator, baseline=None)
    torch.manual_seed(7)
    result = objective(grids, "features", image_index, text, share)
    assert float(result.diagnostics["ess_per_k"]) == pytest.approx(1.0, abs=1e-12)
    assert float(result.diagnostics["max_weight"]) == pytest.approx(1 / 5, abs=1e-12)
    result.loss.backward()  # and it trains


def test_wsram_loss_ess_is_one_with_a_blind_decoder_in_every_layout():
    text = encode_captions(CAPTIONS, VOCABULARY)
    for proposal, layout in (("factorised", "fused"), ("factorised", "stepwise"), ("sequential", "fused")):
        model = _blind_model(proposal)
        features = torch.randn(3, model.num_locations, 6, dtype=torch.float64)
        torch.manual_seed(8)
        result = wsram_loss(model, features, text, EstimatorConfig(samples=3),
                            generator=torch.Generator().manual_seed(9), research=ResearchConfig(layout=layout))
        assert float(result.diagnostics["ess_per_k"]) == pytest.approx(1.0, abs=1e-12), (proposal, layout)
