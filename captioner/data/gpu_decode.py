"""Decoding JPEGs in batches with torchvision (nvjpeg on a CUDA device), for feature extraction.

PIL decoding on CPU threads (`captioner.data.images.read_image`) is what bounds `captioner extract`
on a fast GPU. Here CPU threads only read each file's bytes and walk its JPEG header
(`read_for_decode_jpeg`); the device decodes a whole batch with `torchvision.io.decode_jpeg`,
applies the EXIF rotation and resizes each image to the square the backbone takes, antialiased
bicubic like PIL's resize (`assemble_batch`). On the CPU decoder (libjpeg-turbo, as in PIL) the
pixels differ from the PIL reader's by rounding (a mean of about 0.2 grey levels); nvjpeg decodes
chroma a little differently (0.25 on 500 x 375 photos resized to 224 px, 1.2 at the worst, with no
resize). That moves the features about as much as the bf16 autocast of CUDA extraction does, so
caches made either way are interchangeable.

What the tensor path is not sure of goes to the PIL reader, which decides as it always did: files
that are not JPEGs, JPEGs decode_jpeg may get wrong (CMYK, RGB-coded, unusual codings) or that
libjpeg would refuse before decoding (no end-of-image marker last, as when truncated; a scan over
missing components or tables; nvjpeg decodes some of these), and any file that decode_jpeg rejects.
So what is skipped, and the reason given, is what the PIL reader would skip and say; the one way
to differ is a file corrupt in a way that passes these checks, that libjpeg refuses and nvjpeg
decodes (none of the corruptions tried was one).

The functions take a `device`; with device "cpu" the same batched code runs on torchvision's CPU
decoder, which is how it is tested on machines without a GPU.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from captioner.data.images import ImageReadError, read_image
from captioner.data.records import SkipReport

__all__ = ["ReadImage", "apply_orientation", "assemble_batch", "decode_jpegs", "decoder_source", "jpeg_decoder",
           "read_for_decode_jpeg", "read_with_pil", "resize_square"]

_EXIF_ORIENTATION = 0x0112
_END_OF_IMAGE = b"\xff\xd9"
_XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\0"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # the pattern PIL's getexif uses
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xDA)}  # markers that have no length (none belongs before a scan)
_FRAME_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0..SOF15
_DECODABLE_FRAMES = {0xC0, 0xC1, 0xC2}  # Huffman-coded baseline, extended sequential, progressive


@dataclass
class ReadImage:
    """One file as a reader thread leaves it: exactly one of `jpeg` (the file's bytes, uint8 (n,),
    for decode_jpeg, with its EXIF or XMP `orientation` 1..8), `pixels` (uint8 (S, S, 3) RGB from
    PIL) or `error` (why PIL could not read it) is set."""

    image_id: str
    path: Path
    jpeg: torch.Tensor | None = None
    orientation: int = 1
    pixels: np.ndarray | None = None
    error: ImageReadError | None = None


def read_with_pil(image_id: str, path: Path, size: int) -> ReadImage:
    """Decode `path` with the PIL reader: the whole work of the "pil" decoder, done in a reader thread."""
    try:
        return ReadImage(image_id, path, pixels=read_image(path, size))
    except ImageReadError as error:
        return ReadImage(image_id, path, error=error)


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation tag of an EXIF block's first IFD (`tiff`: a TIFF header and IFDs), None if it
    has none; ValueError if the block is laid out in any way this does not expect."""
    order = {b"II*\0": "little", b"MM\0*": "big"}.get(tiff[:4])
    if order is None:
        raise ValueError("not a TIFF header")
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    entries = tiff[ifd + 2:ifd + 2 + 12 * count]
    if len(tiff) < ifd + 2 or len(entries) != 12 * count:
        raise ValueError("the first IFD runs past the block")
    for entry in range(0, len(entries), 12):
        if int.from_bytes(entries[entry:entry + 2], order) == _EXIF_ORIENTATION:
            kind, values = int.from_bytes(entries[entry + 2:entry + 4], order), entries[entry + 4:entry + 8]
            if kind != 3 or int.from_bytes(values, order) != 1:  # one SHORT, held in the entry itself
                raise ValueError("an Orientation entry that is not one SHORT")
            return int.from_bytes(entries[entry + 8:entry + 10], order)
    return None


def _decode_jpeg_orientation(raw: bytes) -> int | None:
    """The orientation (1..8, as PIL's exif_transpose reads it) of a JPEG that decode_jpeg can take,
    or None to leave the file to the PIL reader.

    Walks the segments up to the first scan, in Python but with no decoding: it runs in the reader
    threads, where PIL's own header parser would hold the GIL long enough to bound the whole
    extraction. decode_jpeg takes a complete (end-of-image marker last), 8-bit, Huffman-coded
    baseline or progressive JPEG of 1 (grey) or 3 YCbCr components whose scan refers to components
    and quantisation tables that exist (libjpeg refuses a file otherwise, nvjpeg may not). The rest
    (CMYK, RGB-coded, arithmetic or lossless coding, odd EXIF, over PIL's pixel limit, ...) is PIL's."""
    if not (raw.startswith(b"\xff\xd8") and raw.endswith(_END_OF_IMAGE)):
        return None
    frame: dict[int, int] | None = None  # component id -> its quantisation table
    component_ids = b""
    tables: set[int] = set()
    exif_seen = False
    exif: int | None = None
    xmp: int | None = None
    adobe_transform: int | None = None
    position = 2
    while position + 4 <= len(raw):
        if raw[position] != 0xFF:
            return None
        marker = raw[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(raw[position + 2:position + 4], "big")
        segment = raw[position + 4:position + 2 + length]
        if length < 2 or len(segment) != length - 2 or marker in _STANDALONE_MARKERS:
            return None
        if marker == 0xDB:  # quantisation tables: (precision << 4 | id, 64 or 128 bytes) repeated
            offset = 0
            while offset < len(segment):
                tables.add(segment[offset] & 0x0F)
                offset += 65 if segment[offset] >> 4 == 0 else 129
        elif marker == 0xE1 and segment.startswith(b"Exif\0\0"):
            if exif_seen:
                return None  # PIL joins several EXIF segments; leave such files to it
            exif_seen = True
            try:
                exif = _exif_orientation(segment[6:])
            except ValueError:
                return None
        elif marker == 0xE1 and segment.startswith(_XMP_PREFIX):
            match = _XMP_ORIENTATION.search(segment)  # PIL keeps the last XMP segment
            xmp = int(match[2]) if match else None
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe_transform = segment[11]
        elif marker in _FRAME_MARKERS:
            if marker not in _DECODABLE_FRAMES or frame is not None or len(segment) < 6 or segment[0] != 8:
                return None
            height, width, count = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big"), segment[5]
            if (count not in (1, 3) or len(segment) != 6 + 3 * count or width * height == 0
                    or width * height > (Image.MAX_IMAGE_PIXELS or width * height)):
                return None
            component_ids = segment[6::3]
            frame = dict(zip(component_ids, segment[8::3]))
        elif marker == 0xDA:  # start of scan: the header is complete
            count = segment[0] if segment else 0
            scan_ids = set(segment[1:1 + 2 * count:2])
            if (frame is None or count == 0 or len(segment) != 4 + 2 * count or not scan_ids <= frame.keys()
                    or not set(frame.values()) <= tables):
                return None
            if len(frame) == 3 and (adobe_transform == 0 or component_ids.upper() == b"RGB"):
                return None  # colour coded as RGB, not YCbCr: libjpeg knows, decode_jpeg may not
            orientation = exif if exif is not None else xmp if xmp is not None else 1  # XMP's only if EXIF has none
            return orientation if 1 <= orientation <= 8 else 1
        position += 2 + length
    return None


def read_for_decode_jpeg(image_id: str, path: Path, size: int) -> ReadImage:
    """Read `path`'s bytes for decode_jpeg, or decode it with PIL right here when decode_jpeg should
    not take it (see the module docstring). Runs in a reader thread."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError:
        return read_with_pil(image_id, path, size)  # PIL words the error as the "pil" decoder would
    orientation = _decode_jpeg_orientation(raw)
    if orientation is None:
        return read_with_pil(image_id, path, size)
    return ReadImage(image_id, path, jpeg=torch.frombuffer(bytearray(raw), dtype=torch.uint8), orientation=orientation)


# `import torchvision` imports torchvision.models and torchvision.ops, which import torch._dynamo
# (sympy, torch.fx, ...): 1.7 s of a fresh `captioner extract` on a 2-core CPU, for one function.
# decode_jpeg is a thin wrapper over torchvision's image extension, so it is called through that
# extension's registered ops directly, loaded without importing the package. Set
# CAPTIONER_EXTRACT_IMPORT_TORCHVISION=1 for the old way (torchvision.io.decode_jpeg); any failure to
# load the extension falls back to it too.
IMPORT_TORCHVISION_ENV = "CAPTIONER_EXTRACT_IMPORT_TORCHVISION"
_RGB = 3  # torchvision.io.ImageReadMode.RGB.value
_decoder: list = []


def _image_ops():
    """torch.ops.image with torchvision's image extension loaded, without `import torchvision`; None
    if that cannot be done."""
    if os.environ.get(IMPORT_TORCHVISION_ENV, "") not in ("", "0"):
        return None
    try:
        if not hasattr(torch.ops.image, "decode_jpeg"):
            spec = importlib.util.find_spec("torchvision")
            folder = os.path.dirname(spec.origin)
            finder = importlib.machinery.FileFinder(folder, (importlib.machinery.ExtensionFileLoader,
                                                             importlib.machinery.EXTENSION_SUFFIXES))
            for name in ("image_stable", "image"):
                found = finder.find_spec(name)
                if found is not None:
                    torch.ops.load_library(found.origin)
                    break
        torch.ops.image.decode_jpeg  # noqa: B018 (raises if the op is not there)
        return torch.ops.image
    except Exception:  # noqa: BLE001: any trouble -> the ordinary import
        return None


def jpeg_decoder():
    """(jpegs: list of uint8 CPU tensors, device) -> list of uint8 (3, H, W) RGB tensors on device:
    torchvision's decode_jpeg, via its extension's ops where possible (see IMPORT_TORCHVISION_ENV).
    Loaded once; the first call pays for it."""
    if not _decoder:
        ops = _image_ops()
        if ops is not None:
            def decode(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
                if torch.device(device).type == "cuda":
                    return ops.decode_jpegs_cuda(jpegs, _RGB, torch.device(device))
                return [ops.decode_jpeg(jpeg, _RGB, False) for jpeg in jpegs]
        else:
            from torchvision.io import ImageReadMode, decode_jpeg

            def decode(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
                with warnings.catch_warnings():
                    # torchvision 0.29 deprecates its image decoders in favour of TorchCodec, warning on every call.
                    warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision",
                                            DeprecationWarning)
                    return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
            decode.via = "torchvision.io"  # type: ignore[attr-defined]
        _decoder.append(decode)
    return _decoder[0]


def decoder_source() -> str:
    """How JPEGs are decoded in this process: "torchvision ops" or "torchvision.io"."""
    return getattr(jpeg_decoder(), "via", "torchvision ops")


def decode_jpegs(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor] | None:
    """uint8 (3, H, W) RGB images on `device`, one per JPEG, in one decode_jpeg call; None if it
    failed (one bad file fails the whole call)."""
    decode = jpeg_decoder()
    device = torch.device(device)
    if device.type == "cuda":
        # nvJPEG's hardware engine does not wait for work queued on the stream it is given: it can
        # write its outputs into blocks that the caching allocator has just handed back (freed on
        # this stream) while kernels queued earlier still read them. Measured in `captioner extract`
        # on an H200 with batch 256 and no per-batch host sync: whole batches of other images came
        # out NaN (in 3 of 9 cold extractions of 8,000 images: 256, 256 and 119 of them) and could
        # as well come out wrong but finite. Draining the stream first is the barrier torchvision
        # itself lacks (pytorch/vision PR 9606); it costs the overlap of one batch's decode with the
        # previous batch's backbone. benchmarks/extract_cold.py --compare-to checks the caches.
        torch.cuda.current_stream(device).synchronize()
    try:
        return decode(jpegs, device)
    except RuntimeError:
        return None


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as stored -> as shown, for EXIF orientation 1..8 (what PIL's exif_transpose does)."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def resize_square(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """uint8 (3, H, W) images of any sizes -> uint8 (n, 3, size, size), aspect ratio not kept, as the PIL
    reader does: bicubic with antialiasing (PIL's filter), rounded and clipped to 0..255. Images of one
    shape are resized in one call."""
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=images[0].device)
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        by_shape[tuple(image.shape)].append(index)
    for shape, indices in by_shape.items():
        group = torch.stack([images[i] for i in indices])
        if shape[-2:] != (size, size):
            group = F.interpolate(group.float(), size=(size, size), mode="bicubic", align_corners=False,
                                  antialias=True).round_().clamp_(0, 255)
        out[torch.tensor(indices, device=out.device)] = group.to(torch.uint8)
    return out


def assemble_batch(reads: Sequence[ReadImage], size: int, device: str | torch.device, skipped: SkipReport
                   ) -> tuple[list[str], torch.Tensor | None]:
    """The readable images of `reads`, in order: (ids, uint8 (n, 3, size, size) on `device`), or ([], None).

    The JPEG bytes are decoded on `device` in one call; if that fails, one at a time, and a file that
    still fails is read with PIL. Files PIL could not read are counted in `skipped` ("unreadable image")
    and left out, as the "pil" decoder does."""
    device = torch.device(device)
    pixels: list[torch.Tensor | None] = [None] * len(reads)
    jpeg_indices = [i for i, read in enumerate(reads) if read.jpeg is not None]
    if jpeg_indices:
        decoded = decode_jpegs([reads[i].jpeg for i in jpeg_indices], device)
        if decoded is None:  # one bad file fails the whole call: decode one at a time to keep the others
            decoded = []
            for i in jpeg_indices:
                one = decode_jpegs([reads[i].jpeg], device) if len(jpeg_indices) > 1 else None
                decoded.append(None if one is None else one[0])
        good = [(i, apply_orientation(image, reads[i].orientation))
                for i, image in zip(jpeg_indices, decoded) if image is not None]
        if good:
            for (i, _), square in zip(good, resize_square([image for _, image in good], size)):
                pixels[i] = square
    ids, kept = [], []
    for i, read in enumerate(reads):
        if read.jpeg is not None and pixels[i] is None:
            read = read_with_pil(read.image_id, read.path, size)  # decode_jpeg refused it
        if read.error is not None:
            skipped.add("unreadable image", str(read.error))
            continue
        ids.append(read.image_id)
        kept.append(pixels[i] if pixels[i] is not None else
                    torch.from_numpy(read.pixels).permute(2, 0, 1).to(device, non_blocking=True))
    return ids, (torch.stack(kept) if kept else None)


if os.environ.get(IMPORT_TORCHVISION_ENV, "") not in ("", "0"):
    jpeg_decoder()  # the old behaviour: torchvision imported with this module
