"""Captioning image files with a saved model."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from captioner.config import DecodeConfig
from captioner.data.images import IMAGE_SUFFIXES, ImageReadError, read_image
from captioner.data.records import SkipReport
from captioner.models.decode import GeneratedCaption, beam_search
from captioner.plots import plot_attention


@dataclasses.dataclass
class CaptionRecord:
    file: str
    caption: str
    words: list[dict]  # per word: word, location, location_prob, word_prob (and glimpses, with several)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _record(path: Path, generated: GeneratedCaption) -> CaptionRecord:
    words = [{"word": w, "location": loc, "location_prob": round(lp, 6), "word_prob": round(wp, 6)}
             for w, loc, lp, wp in zip(generated.words, generated.locations, generated.location_probs,
                                        generated.word_probs)]
    if generated.glimpses is not None:  # several glimpses per word: "location" is the likeliest of them
        for word, glimpses in zip(words, generated.glimpses):
            word["glimpses"] = glimpses
    return CaptionRecord(str(path), generated.text, words)


def _picture_name(path: Path, written: set[str]) -> str:
    """`photo.jpg.attention.png`; files of the same name from other folders get `-2`, `-3`, ..."""
    name, count = f"{path.name}.attention.png", 1
    while name in written:
        count += 1
        name = f"{path.name}-{count}.attention.png"
    written.add(name)
    return name


def _not_a_file(path: Path) -> tuple[str, str] | None:
    """None when `path` is a regular file (or a symlink to one); else (skip reason, what it is), the
    reason "folder" for a folder (or a symlink to one)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink loop", "a symlink loop (too many levels of symbolic links)"
        if os.path.islink(path):
            return "broken symlink", f"a broken symlink (to {os.readlink(path)!r}, which is not there)"
        if isinstance(error, FileNotFoundError):
            return "no such file", "not there"
        return "not readable", f"not readable ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return "folder", "a folder, not an image file"
    if not stat.S_ISREG(mode):
        return "not a regular file", "not a regular file (a device, a pipe or a socket)"
    return None


def _walk(folder: Path, found: list[Path], skipped: SkipReport, visited: dict[tuple[int, int], Path],
          ancestors: frozenset[tuple[int, int]] = frozenset()) -> None:
    """Image files under `folder`, symlinked folders followed, each folder read once: a symlink back
    to a folder above it (a loop) or to one already read is reported, not read again."""
    try:
        info = os.stat(folder)
        key = (info.st_dev, info.st_ino)
        if key in ancestors:
            skipped.add("symlink loop", f"{folder}: a symlink loop (it leads back to {visited[key]})")
            return
        if key in visited:
            skipped.add("folder reached twice", f"{folder}: the same folder as {visited[key]}, read once")
            return
        visited[key] = folder
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as error:
        skipped.add("not readable", f"{folder}: folder not readable ({error.strerror or error})")
        return
    for entry in entries:
        path = Path(entry.path)
        problem = _not_a_file(path)
        image_name = path.suffix.lower() in IMAGE_SUFFIXES
        if problem is None:
            if image_name:
                found.append(path)
        elif problem[0] == "folder":
            if image_name:
                skipped.add("folder named like an image", f"{path}: {problem[1]} (searched as a folder)")
            _walk(path, found, skipped, visited, ancestors | {key})
        elif image_name or not path.suffix or problem[0] == "symlink loop":
            skipped.add(problem[0], f"{path}: {problem[1]}")


def find_image_files(paths: Sequence[str | Path], skipped: SkipReport | None = None) -> list[Path]:
    """Image files of `paths` (files, folders searched recursively, glob patterns), in order; like
    captioner.data.images.find_images, but every entry left out is added to `skipped` by reason, with
    its path: inside a folder, a folder named like an image, a symlink loop, a broken symlink; a given
    file that is not there or not a file; a pattern that matches nothing; a folder without images.
    Symlinked folders are followed, each folder read once."""
    skipped = SkipReport() if skipped is None else skipped
    found: list[Path] = []
    for text in map(str, paths):
        path = Path(text)
        problem = _not_a_file(path)
        if problem is not None and problem[0] == "folder":
            before = len(found)
            _walk(path, found, skipped, {})
            found[before:] = sorted(found[before:])
            if len(found) == before:
                skipped.add("folder without image files", f"{path}: no image files in this folder")
        elif problem is not None and problem[0] == "no such file" and any(ch in text for ch in "*?["):
            root = Path(text).anchor or "."
            pattern = text[len(root):] if Path(text).is_absolute() else text
            matched = sorted(Path(root).glob(pattern))
            if not matched:
                skipped.add("pattern matched nothing", f"{text}: no file matches this pattern")
            for match in matched:
                trouble = _not_a_file(match)
                if trouble is None:
                    found.append(match)
                elif trouble[0] != "folder":
                    skipped.add(trouble[0], f"{match}: {trouble[1]}")
                elif match.suffix.lower() in IMAGE_SUFFIXES:
                    skipped.add("folder named like an image", f"{match}: {trouble[1]}")
        elif problem is not None:
            skipped.add(problem[0], f"{path}: {problem[1]}")
        else:
            found.append(path)
    return found


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
                plot_attention(image, caption.words, caption.glimpses or caption.locations, grid,
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
