"""The whole captioner: encoder, attention decoder and (for WS-RAM) the proposal network.

A saved model is one folder: `config.json` (model config and vocabulary), `model.safetensors`
and `decoding.json` (the default decoding settings), loadable without the training config.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from captioner.config import DecodeConfig, ModelConfig, from_dict
from captioner.data.vocabulary import Vocabulary
from captioner.models.decoder import AttentionDecoder
from captioner.models.encoder import IMAGE_MEAN, IMAGE_STD, build_encoder, normalize_images
from captioner.models.proposal import CaptionProposal

FORMAT_VERSION = 1


class CaptionModel(nn.Module):
    def __init__(self, config: ModelConfig, vocabulary: Vocabulary, image_size: int,
                 pretrained_backbone: bool | None = None):
        """`image_size` is the side of the images small_cnn reads (a pretrained backbone has its own).
        `pretrained_backbone=False` skips loading pretrained backbone weights (they come from a saved
        model's own weights file instead); None follows config.encoder.pretrained."""
        super().__init__()
        self.config = config
        self.vocabulary = vocabulary
        self.encoder = build_encoder(config.encoder, pretrained_backbone)
        self.image_size = image_size if config.encoder.name == "small_cnn" else self.encoder.spec.image_size
        d = config.encoder.feature_dim
        self.decoder = AttentionDecoder(
            vocab_size=len(vocabulary),
            feature_dim=d,
            embedding_dim=config.embedding_dim,
            hidden_dim=config.hidden_dim,
            attention_dim=config.attention_dim,
            dropout=config.dropout,
            embedding_dropout=config.embedding_dropout,
            soft=config.attention == "soft",
            zero_init_glimpse=config.zero_init_glimpse,
        )
        self.proposal = None
        if config.proposal != "none":
            self.proposal = CaptionProposal(
                vocab_size=len(vocabulary),
                feature_dim=d,
                embedding_dim=config.embedding_dim,
                hidden_dim=config.proposal_hidden_dim,
                attention_dim=config.attention_dim,
                decoder_hidden_dim=config.hidden_dim,
                sequential=config.proposal == "sequential",
            )

        if config.uniform_attention_init:
            with torch.no_grad():
                for module in (self.decoder, self.proposal):
                    if module is not None:
                        module.attend_score.weight.zero_()
                        module.attend_score.bias.zero_()

    @property
    def num_locations(self) -> int:
        return self.encoder.num_locations

    @property
    def uses_backbone(self) -> bool:
        """True when the encoder is a pretrained backbone (which can be read from a feature cache)."""
        return self.config.encoder.name != "small_cnn"

    @property
    def backbone_weights_hash(self) -> str | None:
        return self.encoder.backbone.weights_hash() if self.uses_backbone else None

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, S, S) as `prepare_images` makes them -> feature grid (N, L, D)."""
        return self.encoder(images)

    def encode_inputs(self, inputs: torch.Tensor, kind: str) -> torch.Tensor:
        """`kind` "images": as `encode`; "features": backbone grids (N, L, C) from a feature cache."""
        if kind == "features":
            return self.encoder.adapt(inputs)
        if kind == "images":
            return self.encoder(inputs)
        raise ValueError(f"unknown input kind {kind!r}")

    def prepare_images(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 RGB (N, S, S, 3) at `image_size` -> what `encode` reads: normalised floats for
        small_cnn, uint8 (N, 3, S, S) for a backbone (which does its own preprocessing)."""
        if self.uses_backbone:
            return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()
        return normalize_images(pixels)

    # ---- saving and loading ------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, decoding: DecodeConfig | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "model": dataclasses.asdict(self.config),
            "image_size": self.image_size,
            "image_mean": list(self.encoder.spec.mean) if self.uses_backbone else list(IMAGE_MEAN),
            "image_std": list(self.encoder.spec.std) if self.uses_backbone else list(IMAGE_STD),
            "backbone": ({**self.encoder.spec.to_dict(), "weights_hash": self.backbone_weights_hash}
                         if self.uses_backbone else None),
            "vocabulary": self.vocabulary.words,
        }
        _atomic_write_text(folder / "config.json", json.dumps(config, indent=2))
        _atomic_write_text(folder / "decoding.json", json.dumps(dataclasses.asdict(decoding or DecodeConfig()), indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        temporary = folder / "model.safetensors.tmp"
        save_file(state, str(temporary), metadata={"format": "pt"})
        temporary.replace(folder / "model.safetensors")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "CaptionModel":
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: not found; a saved captioner folder holds config.json, "
                                    "model.safetensors and decoding.json")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path}: not valid JSON: {error}") from None
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format_version {config.get('format_version')!r} is not {FORMAT_VERSION}")
        model_config = from_dict(ModelConfig, config["model"], prefix="model.")
        model = cls(model_config, Vocabulary(config["vocabulary"]), config["image_size"], pretrained_backbone=False)
        weights_path = folder / "model.safetensors"
        if not weights_path.is_file():
            raise FileNotFoundError(f"{weights_path}: not found")
        model.load_state_dict(load_file(str(weights_path)))
        return model.to(device).eval()


def load_decoding(folder: str | Path) -> DecodeConfig:
    path = Path(folder) / "decoding.json"
    return from_dict(DecodeConfig, json.loads(path.read_text()), prefix="decode.") if path.is_file() else DecodeConfig()


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


__all__ = ["CaptionModel", "load_decoding"]
