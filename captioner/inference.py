"""Captioning image files with a saved model."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from captioner.config import DecodeConfig
from captioner.data.images import ImageReadError, read_image
from captioner.models.decode import GeneratedCaption, beam_search
from captioner.plots import plot_attention


@dataclasses.dataclass
class CaptionRecord:
    file: str
    caption: str
    words: list[dict]  # per word: word, location, location_prob, word_prob

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _record(path: Path, generated: GeneratedCaption) -> CaptionRecord:
    words = [{"word": w, "location": loc, "location_prob": round(lp, 6), "word_prob": round(wp, 6)}
             for w, loc, lp, wp in zip(generated.words, generated.locations, generated.location_probs,
                                        generated.word_probs)]
    return CaptionRecord(str(path), generated.text, words)


def _picture_name(path: Path, written: set[str]) -> str:
    """`photo.jpg.attention.png`; files of the same name from other folders get `-2`, `-3`, ..."""
    name, count = f"{path.name}.attention.png", 1
    while name in written:
        count += 1
        name = f"{path.name}-{count}.attention.png"
    written.add(name)
    return name


def caption_files(
    model,
    paths: Sequence[Path],
    decode: DecodeConfig,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    attention_dir: Path | None = None,
    errors: list[str] | None = None,
) -> Iterator[CaptionRecord]:
    """Caption each readable image of `paths`, in order, `batch_size` at a time. An unreadable file
    is reported on stderr, appended to `errors` and skipped. With `attention_dir`, also writes one
    PNG per image showing the attended cell for every word."""
    model.eval()
    grid = model.encoder.grid
    batch: list[tuple[Path, np.ndarray]] = []
    written: set[str] = set()

    def flush() -> Iterator[CaptionRecord]:
        pixels = np.stack([p for _, p in batch])
        with torch.no_grad():
            features = model.encode(model.prepare_images(pixels).to(device))
            generated = beam_search(model, features, decode)
        for (path, image), caption in zip(batch, generated):
            if attention_dir is not None:
                plot_attention(image, caption.words, caption.locations, grid,
                               Path(attention_dir) / _picture_name(path, written), caption.location_probs)
            yield _record(path, caption)
        batch.clear()

    for path in paths:
        try:
            batch.append((Path(path), read_image(path, model.image_size)))
        except ImageReadError as error:
            print(f"skipped: {error}", file=sys.stderr)
            if errors is not None:
                errors.append(str(error))
            continue
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()
