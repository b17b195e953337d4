"""Shared fixtures: tiny float64 captioners on which the method can be checked exactly."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from captioner.config import EncoderConfig, ModelConfig
from captioner.data.batching import encode_captions
from captioner.data.vocabulary import Vocabulary
from captioner.models.captioner import CaptionModel

torch.set_num_threads(2)


class TinyCase:
    """One image (L = 4 locations), one caption of T = 3 tokens, vocabulary of 6, float64; `glimpses`
    hard glimpses per word (model.glimpses_per_word)."""

    def __init__(self, proposal: str = "factorised", seed: int = 0, scale: float = 1.0, glimpses: int = 1):
        torch.manual_seed(seed)
        self.vocabulary = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", "red", "circle"])
        config = ModelConfig(
            encoder=EncoderConfig(feature_dim=5, grid=2),
            embedding_dim=4, hidden_dim=6, attention_dim=4, proposal=proposal, proposal_hidden_dim=3,
            uniform_attention_init=False,  # random attention weights: the checks need non-uniform pi and q
            initial_state_dropout=0.0,  # p(y, a | x) must be one fixed distribution to enumerate
            glimpses_per_word=glimpses,
        )
        self.model = CaptionModel(config, self.vocabulary, image_size=16).double()
        # Draw the decoder's and proposal's weights from their own generator, so the case does not
        # change when other modules (the unused encoder) change how much randomness they consume.
        generator = torch.Generator().manual_seed(1000 + seed)
        with torch.no_grad():
            for module in (self.model.decoder, self.model.proposal):
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3 * scale)
        self.features = torch.randn(1, 4, 5, dtype=torch.float64, generator=generator) * 1.5
        self.text = encode_captions(["red circle"], self.vocabulary)
        self.num_locations = 4
        self.steps = self.text.inputs.shape[1]
        self.glimpses = glimpses

    def all_paths(self) -> torch.Tensor:
        """Every location sequence, (L**T, T); with G glimpses per word (L**(T*G), T, G), in the order of
        itertools.product over the T*G locations."""
        g = self.glimpses
        paths = torch.tensor(list(itertools.product(range(self.num_locations), repeat=self.steps * g)))
        return paths if g == 1 else paths.view(-1, self.steps, g)

    def path_index(self, paths: torch.Tensor) -> torch.Tensor:
        """The row of all_paths() of each path (N, T) or (N, T, G): (N,)."""
        flat = paths.reshape(len(paths), -1)
        powers = self.num_locations ** torch.arange(flat.shape[1] - 1, -1, -1)
        return (flat * powers).sum(-1)

    def exact_terms(self):
        """log p(y|a,x), log p(a|x) and log q(a|y,x) for every path, each (L**T,)."""
        from captioner.estimators import score_sequences

        paths = self.all_paths()
        n = len(paths)
        text = self.text.repeat(n)
        features = self.features.expand(n, -1, -1)
        output = self.model.decoder.forward_given_locations(features, text.inputs, paths)
        log_q_steps = None
        if self.model.proposal is not None and not self.model.proposal.sequential:
            log_q_steps = self.model.proposal.log_probs(self.features, self.text.targets, self.text.lengths)
            log_q_steps = log_q_steps.expand(n, -1, -1)
        log_p_words, log_p_locations, log_q, _, _ = score_sequences(output, text, log_q_steps)
        return log_p_words, log_p_locations, log_q


@pytest.fixture
def tiny():
    return TinyCase()


# ---- real data beside the checkout (../shared/data); tests that need it skip, saying why ----------
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not found: this test reads the real {name} copy that sits beside the checkout")
    return path


@pytest.fixture(scope="session")
def flickr8k_root() -> Path:
    """The Flickr8k release folder (Flicker8k_Dataset/, Flickr8k_text/)."""
    return _shared("flickr8k")


@pytest.fixture(scope="session")
def coco_mini_root() -> Path:
    """79 real COCO val2017 images with captions_val2017.json."""
    return _shared("coco-mini")
