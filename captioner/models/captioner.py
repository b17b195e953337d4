"""The whole captioner: encoder, attention decoder and (for WS-RAM) the proposal network.

A saved model is one folder: `config.json` (model config and vocabulary), `model.safetensors`
and `decoding.json` (the default decoding settings), loadable without the training config.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import ModelHubMixin
from safetensors.torch import load_file, save_file
from torch import nn

from captioner.config import DecodeConfig, ModelConfig, from_dict
from captioner.data.vocabulary import Vocabulary
from captioner.files import atomic_write, write_json
from captioner.models.decoder import AttentionDecoder
from captioner.data.images import IMAGE_MEAN, IMAGE_STD, as_pixels, normalize_images
from captioner.models.decode import beam_search
from captioner.models.encoder import build_encoder
from captioner.models.proposal import CaptionProposal

FORMAT_VERSION = 1
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # user/name on the Hugging Face Hub


class CaptionModel(nn.Module, ModelHubMixin, library_name="captioner", tags=["image-captioning", "hard-attention"]):
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
        self.decoding = DecodeConfig()  # default decoding settings, saved as decoding.json
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
            initial_state=config.initial_state,
            initial_state_dropout=config.initial_state_dropout,
            glimpses=config.glimpses_per_word,
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

    # ---- captioning --------------------------------------------------------------------
    @torch.no_grad()
    def caption(self, images, batch_size: int = 32, generator: torch.Generator | None = None, **decoding):
        """Caption images: file paths, PIL images or uint8 RGB arrays (H, W, 3), any size.

        Decoding settings default to the model's `decoding` (its decoding.json when loaded); keyword
        arguments override them (beam_size, max_length, length_penalty, block_trigrams,
        attention_mode). Returns one GeneratedCaption per image (text, words, and per word the
        attended location, its probability and the word's probability)."""
        settings = dataclasses.replace(self.decoding, **decoding)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        results = []
        for start in range(0, len(images), batch_size):
            pixels = np.stack([as_pixels(image, self.image_size) for image in images[start:start + batch_size]])
            features = self.encode(self.prepare_images(pixels).to(device))
            results.extend(beam_search(self, features, settings, generator))
        self.train(was_training)
        return results

    # ---- saving and loading (huggingface_hub's save_pretrained / from_pretrained) ---------
    def save_pretrained(self, save_directory: str | Path, decoding: DecodeConfig | None = None, **kwargs) -> Path:
        """Write the model folder: config.json (model config, vocabulary, image preprocessing),
        model.safetensors, decoding.json and a model card. `decoding` replaces the model's default
        decoding settings first. Other keyword arguments go to huggingface_hub (e.g. push_to_hub=True,
        repo_id=...)."""
        if decoding is not None:
            self.decoding = decoding
        ModelHubMixin.save_pretrained(self, save_directory, **kwargs)
        return Path(save_directory)

    def _save_pretrained(self, save_directory: Path) -> None:
        folder = Path(save_directory)
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
        write_json(folder / "config.json", config)
        write_json(folder / "decoding.json", dataclasses.asdict(self.decoding))
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(folder / "model.safetensors", lambda temporary: save_file(state, str(temporary),
                                                                                metadata={"format": "pt"}))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, device: str | torch.device = "cpu",
                        **kwargs) -> "CaptionModel":
        """Load a saved folder, or download `user/name` from the Hugging Face Hub (huggingface_hub).
        Keyword arguments other than `device` go to huggingface_hub (revision, cache_dir, token, ...)."""
        name = str(pretrained_model_name_or_path)
        if Path(name).is_dir() or not _REPO_ID.fullmatch(name):
            return cls._load_folder(Path(name), device)
        return super().from_pretrained(name, device=device, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir=None,
                         force_download: bool = False, local_files_only: bool = False, token=None,
                         device: str | torch.device = "cpu", **kwargs) -> "CaptionModel":
        """A local folder, or a Hugging Face Hub repository id (downloaded with huggingface_hub)."""
        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            try:
                folder = Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir,
                                                force_download=force_download, local_files_only=local_files_only,
                                                token=token))
            except Exception as error:  # offline, unknown repository, ...
                raise FileNotFoundError(f"{model_id}: could not download the model from the Hugging Face Hub "
                                        f"({type(error).__name__}: {error}); download it where there is internet "
                                        "and pass the folder") from None
        return cls._load_folder(folder, device)

    @classmethod
    def _load_folder(cls, folder: Path, device) -> "CaptionModel":
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
        model.decoding = load_decoding(folder)
        return model.to(device).eval()


def load_decoding(folder: str | Path) -> DecodeConfig:
    path = Path(folder) / "decoding.json"
    return from_dict(DecodeConfig, json.loads(path.read_text()), prefix="decode.") if path.is_file() else DecodeConfig()


__all__ = ["CaptionModel", "load_decoding"]
