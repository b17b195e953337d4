"""Reading image files and turning pixels into the tensors the encoders expect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_MEAN", "IMAGE_STD", "IMAGE_SUFFIXES", "ImageReadError", "as_pixels", "find_images",
           "normalize_images", "read_image"]

# Per-channel statistics the encoders expect images to be normalised with.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.25, 0.25, 0.25)


def normalize_images(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, 3, S, S), normalised per channel for small_cnn."""
    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (images - mean) / std


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the problem."""


def _to_rgb_square(image: Image.Image, size: int) -> np.ndarray:
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        # Transparent pixels go on white, as a viewer would show them.
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("RGB")  # also CMYK, grayscale, 16-bit
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8).copy()


def read_image(path: str | Path, size: int) -> np.ndarray:
    """Any image PIL reads (EXIF rotation applied, any mode) -> uint8 (size, size, 3) RGB.

    Large JPEGs are decoded at a reduced scale (PIL's draft mode, at least twice `size`), which is
    both faster and far lighter on memory for camera-sized photos."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (2 * size, 2 * size))
            return _to_rgb_square(image, size)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"{path}: too large to decode safely ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"{path}: not a readable image ({error})") from None


def as_pixels(image, size: int) -> np.ndarray:
    """A file path, PIL image or uint8 RGB array (H, W, 3) -> uint8 (size, size, 3) RGB."""
    if isinstance(image, (str, Path)):
        return read_image(image, size)
    if isinstance(image, Image.Image):
        return _to_rgb_square(image, size)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, -1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8 (H, W, 3) RGB, got {array.dtype} {array.shape}")
    return _to_rgb_square(Image.fromarray(array), size)


def find_images(paths: list[str]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into image files, in order."""
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif any(ch in text for ch in "*?["):
            root = Path(text).anchor or "."
            pattern = text[len(root):] if Path(text).is_absolute() else text
            found.extend(sorted(p for p in Path(root).glob(pattern) if p.is_file()))
        else:
            found.append(path)
    return found
