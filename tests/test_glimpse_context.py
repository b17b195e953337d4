"""model.encoder.glimpse_context: a wider glimpse, each location's vector plus a learned map of the mean
of its neighbourhood.

The mean must be over exactly the cells within r rows and columns that lie inside the grid; the map
starts at zero, so that a new model begins where one without the switch does; the position codes stay
each cell's own; with the switch off nothing is built (earlier models load, and draw the same initial
weights); and a trained model with it saves, loads and captions the same."""

from __future__ import annotations

import pytest
import torch

from captioner.config import ConfigError, EncoderConfig, ModelConfig, load_config
from captioner.data.vocabulary import Vocabulary
from captioner.models.captioner import CaptionModel
from captioner.models.encoder import GlimpseContext, PretrainedGridEncoder, SmallConvEncoder

VOCABULARY = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog"])


def _by_hand(features: torch.Tensor, grid: int, radius: int) -> torch.Tensor:
    """The neighbourhood mean cell by cell, in float64."""
    n, _, dim = features.shape
    out = torch.zeros(n, grid * grid, dim, dtype=torch.float64)
    for row in range(grid):
        for col in range(grid):
            cells = [r * grid + c for r in range(row - radius, row + radius + 1)
                     for c in range(col - radius, col + radius + 1) if 0 <= r < grid and 0 <= c < grid]
            out[:, row * grid + col] = features[:, cells].double().mean(1)
    return out


@pytest.mark.parametrize("grid, radius", [(4, 1), (5, 2), (3, 1), (3, 5), (1, 1)])
def test_the_neighbourhood_mean_is_over_the_cells_inside_the_grid(grid, radius):
    features = torch.randn(2, grid * grid, 6, generator=torch.Generator().manual_seed(grid + radius))
    context = GlimpseContext(6, grid, radius)
    torch.testing.assert_close(context.neighbourhood_mean(features).double(), _by_hand(features, grid, radius),
                               rtol=1e-6, atol=1e-6)
    if radius >= grid - 1:  # a window as wide as the grid: every cell sees the whole image
        torch.testing.assert_close(context.neighbourhood_mean(features), features.mean(1, keepdim=True).expand_as(features),
                                   rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected \d+ locations"):
        context(torch.zeros(2, grid * grid + 1, 6))
    with pytest.raises(ValueError, match="the radius must be >= 1"):
        GlimpseContext(6, grid, 0)  # 0 means no module at all (the encoders build none)


def test_the_context_starts_at_zero_and_learns():
    torch.manual_seed(0)
    encoder = SmallConvEncoder(EncoderConfig(grid=3, feature_dim=8, channels=6, glimpse_context=1))
    images = torch.rand(2, 3, 48, 48)
    widened = encoder(images)
    context, encoder.context = encoder.context, None
    torch.testing.assert_close(widened, encoder(images), rtol=0, atol=0)  # W = 0: the cell alone
    encoder.context = context
    encoder(images).square().sum().backward()
    assert context.mix.weight.grad.abs().sum() > 0 and context.mix.bias.grad.abs().sum() > 0


def test_off_builds_nothing():
    """No module and no weights when off: the random draws of a model's initial weights, and the keys of
    its saved state, are those of a model made before the switch existed."""
    plain = CaptionModel(ModelConfig(encoder=EncoderConfig(grid=3, feature_dim=8, channels=6)), VOCABULARY, 48)
    assert plain.encoder.context is None
    assert not any("context" in key for key in plain.state_dict())
    widened = CaptionModel(ModelConfig(encoder=EncoderConfig(grid=3, feature_dim=8, channels=6, glimpse_context=2)),
                           VOCABULARY, 48)
    assert {key for key in widened.state_dict() if "context" in key} == {"encoder.context.mix.weight",
                                                                          "encoder.context.mix.bias"}


def test_the_adapter_widens_before_its_position_codes():
    torch.manual_seed(0)
    config = EncoderConfig(name="efficientnet-lite0", layer="block15", image_size=64, feature_dim=8,
                           position_embedding=True, position_embedding_scale=1.0, glimpse_context=1)
    encoder = PretrainedGridEncoder(config, pretrained=False).eval()
    assert encoder.grid == 2 and encoder.context.grid == 2
    with torch.no_grad():
        encoder.context.mix.weight.copy_(torch.eye(8))
        grid = torch.randn(3, 4, 320)
        projected = encoder.project(encoder.norm(grid))
        expected = projected + projected.mean(1, keepdim=True) + encoder.position  # 2 x 2, radius 1: the whole grid
        torch.testing.assert_close(encoder.adapt(grid), expected, rtol=1e-5, atol=1e-5)


def test_a_trained_model_with_a_wider_glimpse_saves_loads_and_captions_the_same(tmp_path):
    from captioner.config import config_for_estimator
    from captioner.train import Trainer
    from tests.test_training import TINY

    config = load_config(base=config_for_estimator("wsram"),
                         overrides=TINY + ["train.max_steps=3", "model.encoder.glimpse_context=1"])
    trainer = Trainer(config, tmp_path / "run")
    trainer.train()
    model = trainer.model.eval()
    assert model.encoder.context is not None and model.encoder.context.mix.weight.abs().sum() > 0  # it learned
    model.save_pretrained(tmp_path / "model")
    loaded = CaptionModel.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.encoder.glimpse_context == 1
    pixels = torch.randint(0, 256, (2, model.image_size, model.image_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).numpy()
    with torch.no_grad():
        images = model.prepare_images(pixels)
        torch.testing.assert_close(loaded.encode(images), model.encode(images), rtol=0, atol=0)
    assert [c.words for c in loaded.caption(list(pixels))] == [c.words for c in model.caption(list(pixels))]


def test_config_refuses_a_negative_radius():
    with pytest.raises(ConfigError, match="model.encoder.glimpse_context: must not be negative"):
        load_config(overrides=["model.encoder.glimpse_context=-1"])
