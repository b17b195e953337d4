"""model.encoder.tune_to: an EfficientNet-Lite's last blocks trained on top of a cache of an earlier tap.

The cache holds `layer`'s grid; the adapter runs copies of the blocks after it, up to `tune_to`, with
the ImageNet weights, and trains them at fine_tune_lr_scale x the rate. At the start they must give
exactly the grid that a cache of `tune_to` would hold; the frozen backbone must stay frozen; their
BatchNorm statistics must never move; and a saved model must carry the tuned weights."""

from __future__ import annotations

import pytest
import torch

from captioner.config import ConfigError, EncoderConfig, ExperimentConfig, ModelConfig, validate
from captioner.data.vocabulary import Vocabulary
from captioner.models.backbones import build_backbone
from captioner.models.captioner import CaptionModel
from captioner.models.encoder import PretrainedGridEncoder

SIZE = 64  # block10 (stride 16): 4 x 4 x 112; block15 (stride 32): 2 x 2 x 320
VOCABULARY = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog"])


def _encoder_config(**changes) -> EncoderConfig:
    settings = dict(name="efficientnet-lite0", layer="block10", tune_to="block15", image_size=SIZE, feature_dim=8,
                    position_embedding=False)
    settings.update(changes)
    return EncoderConfig(**settings)


def _pixels(n: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def encoder() -> PretrainedGridEncoder:
    torch.manual_seed(0)
    return PretrainedGridEncoder(_encoder_config()).eval()


def test_the_tuned_blocks_start_as_the_imagenet_blocks_after_the_tap(encoder):
    assert encoder.backbone.spec.layer == "block10" and encoder.backbone.spec.grid == 4
    assert encoder.grid == 2 and encoder.num_locations == 4 and encoder.tuned_spec.channels == 320
    assert encoder.norm.normalized_shape == (320,) and encoder.project.in_features == 320
    pixels = _pixels()
    reference = build_backbone("efficientnet-lite0", "block15", SIZE)  # what a block15 cache holds
    with torch.no_grad():
        cached = encoder.backbone_grid(pixels)  # what a block10 cache holds
        assert cached.shape == (3, 16, 112)
        tuned = encoder.tuned(cached.transpose(1, 2).reshape(3, 112, 4, 4)).flatten(2).transpose(1, 2)
        torch.testing.assert_close(tuned, reference(reference.preprocess(pixels)), rtol=1e-4, atol=1e-4)
        expected = encoder.project(encoder.norm(tuned))
        torch.testing.assert_close(encoder.adapt(cached), expected, rtol=0, atol=0)
        torch.testing.assert_close(encoder(pixels), expected, rtol=0, atol=0)  # from pixels, as captioning reads


def test_gradients_reach_the_tuned_blocks_and_not_the_frozen_backbone():
    torch.manual_seed(0)
    encoder = PretrainedGridEncoder(_encoder_config()).train()
    statistics = {k: v.clone() for k, v in encoder.tuned.named_buffers() if "running" in k}
    assert statistics
    batch_norms = [m for m in encoder.tuned.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batch_norms and not any(m.training for m in batch_norms)  # eval mode inside a training encoder
    with torch.no_grad():
        cached = encoder.backbone_grid(_pixels())
    first = encoder.adapt(cached)
    torch.testing.assert_close(encoder.adapt(cached), first, rtol=0, atol=0)  # nothing random in the blocks
    first.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.tuned.parameters() if p.dim() > 1)
    assert all(not p.requires_grad and p.grad is None for p in encoder.backbone.parameters())
    for key, value in encoder.tuned.named_buffers():
        if key in statistics:
            assert torch.equal(value, statistics[key]), key
    with pytest.raises(ValueError, match=r"expected backbone grids \(N, 16, 112\) of block10"):
        encoder.adapt(torch.zeros(2, 4, 320))


def test_a_saved_model_carries_its_tuned_blocks(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(encoder=_encoder_config(), embedding_dim=6, hidden_dim=8, attention_dim=4,
                         proposal_hidden_dim=4)
    model = CaptionModel(config, VOCABULARY, image_size=SIZE).eval()
    with torch.no_grad():
        for p in model.encoder.tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))  # as training would: no longer the ImageNet weights
    model.save_pretrained(tmp_path / "model")
    loaded = CaptionModel.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.encoder.tune_to == "block15" and loaded.num_locations == 4
    pixels = _pixels(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(pixels), model.encode(pixels), rtol=0, atol=0)


def test_the_config_knows_the_backbones_blocks():
    from captioner.config import EFFNET_BLOCK_COUNTS
    from captioner.models.backbones import DEFAULT_LAYERS, EFFICIENTNETS, _EFFNET_BLOCKS

    assert EFFNET_BLOCK_COUNTS == {name: len(_EFFNET_BLOCKS[name][0]) for name in EFFICIENTNETS}
    assert all(DEFAULT_LAYERS[name] == f"block{count - 1}" for name, count in EFFNET_BLOCK_COUNTS.items())


@pytest.mark.parametrize("changes, message", [
    (dict(name="resnet50", layer="layer3", tune_to="layer4"), "EfficientNet-Lite"),
    (dict(fine_tune=True), "fine_tune"),
    (dict(layer="head"), "must be an MBConv block"),
    (dict(tune_to="block9"), r"block after model.encoder.layer 'block10' \(block11, .*block15\)"),
    (dict(layer="", tune_to="block15"), "none is"),  # lite0's default tap, block15, is its last block
    (dict(tune_to="head"), "must be a block after"),
])
def test_config_refuses_a_tune_to_it_cannot_train(changes, message):
    config = ExperimentConfig()
    config.data.dataset = "flickr8k"
    config.data.root = "flickr8k"
    config.data.features = "cache"
    config.model.encoder = _encoder_config(**changes)
    with pytest.raises(ConfigError, match=message):
        validate(config)
