"""Readers for real captioning data sets: each turns one on-disk layout into `CaptionRecords`.

Supported: the original Flickr8k release, Karpathy's split files (COCO, Flickr8k, Flickr30k), the
official COCO caption annotations (through pycocotools), and parquet-backed Hugging Face data sets
(`yerevann/coco-karpathy`, `jxie/flickr8k` and copies of them in local parquet files).

Bad entries (malformed lines, missing images, captionless images, duplicates) are skipped and counted
in the records' `SkipReport`, which warns once at the end of each reader. A missing top-level file
(the token file, the JSON, an image folder) is an error: nothing sensible can be read without it.
Images are only checked to exist here (a folder named like an image, a symlink loop or a broken
symlink is skipped under its own reason); opening and decoding them is the feature extractor's job.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from captioner.data.records import SPLITS, CaptionRecords, ImageRecord, SkipReport

PathLike = str | os.PathLike

FLICKR8K_IMAGE_DIR = "Flicker8k_Dataset"  # sic: the original release spells it "Flicker"
FLICKR8K_TOKEN_FILE = "Flickr8k_text/Flickr8k.token.txt"
FLICKR8K_SPLIT_FILES = (
    ("train", "Flickr8k_text/Flickr_8k.trainImages.txt"),
    ("val", "Flickr8k_text/Flickr_8k.devImages.txt"),
    ("test", "Flickr8k_text/Flickr_8k.testImages.txt"),
)

# "<image>#<n><tab><caption>"; any whitespace is accepted after the index because some copies of the
# token files lost their tabs. A name is anything without a tab or "#".
_TOKEN_LINE = re.compile(r"^(?P<name>[^\t#]+)#(?P<index>\d+)\s+(?P<caption>\S.*)$")

# Split names used by the sources, mapped to ours; None leaves a split out.
DEFAULT_SPLIT_NAMES: Mapping[str, str | None] = {
    "train": "train", "restval": "train", "validation": "val", "val": "val", "dev": "val", "test": "test",
}

HF_LAYOUTS = ("karpathy", "image-captions")
_HF_LAYOUT_ALIASES = {
    "yerevann/coco-karpathy": "karpathy", "coco-karpathy": "karpathy",
    "jxie/flickr8k": "image-captions", "flickr8k": "image-captions",
}
_CAPTION_COLUMN = re.compile(r"^caption_(\d+)$")


class DatasetDownloadError(ConnectionError):
    """A Hugging Face Hub data set could neither be downloaded nor found in the local cache."""


# ---- shared helpers ---------------------------------------------------------------------------


class _FileIndex:
    """Cheap existence tests: each folder is listed once, instead of one stat call per image
    (COCO has 120k images in two folders). An entry that is there but is no file to read (a folder
    named like an image, a symlink loop, a broken symlink) is remembered with what it is, so that the
    skip report says so instead of "missing"."""

    def __init__(self) -> None:
        self._listings: dict[Path, tuple[frozenset[str], dict[str, tuple[str, str]]]] = {}

    def _listing(self, folder: Path) -> tuple[frozenset[str], dict[str, tuple[str, str]]]:
        if folder not in self._listings:
            self._listings[folder] = self._list(folder)
        return self._listings[folder]

    def exists(self, path: Path) -> bool:
        return path.name in self._listing(path.parent)[0]

    def problem(self, path: Path) -> tuple[str, str] | None:
        """(skip reason, what the entry is) for a name that is there but is not a readable file."""
        return self._listing(path.parent)[1].get(path.name)

    @staticmethod
    def _list(folder: Path) -> tuple[frozenset[str], dict[str, tuple[str, str]]]:
        files, problems = set(), {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    kind = _entry_kind(entry)
                    if kind is None:
                        files.add(entry.name)
                    else:
                        problems[entry.name] = kind
        except (FileNotFoundError, NotADirectoryError):
            pass
        return frozenset(files), problems


def _entry_kind(entry: os.DirEntry) -> tuple[str, str] | None:
    """None for a file (or a symlink to one); else (skip reason, what it is)."""
    try:
        if entry.is_file():
            return None
        if entry.is_dir():
            return "image path is a folder", "a folder, not an image file"
        if entry.is_symlink():
            os.stat(entry.path)  # raises for a loop or a missing target
        return "image path is not a regular file", "not a regular file (a device, a pipe or a socket)"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "image path is a symlink loop", "a symlink loop (too many levels of symbolic links)"
        if isinstance(error, FileNotFoundError) and entry.is_symlink():
            return "image path is a broken symlink", f"a broken symlink (to {os.readlink(entry.path)!r}, not there)"
        return "image path is not readable", f"not readable ({error.strerror or error})"


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected {what}")
    return path


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: folder not found; expected {what}")
    return path


def _empty_splits() -> dict[str, list[ImageRecord]]:
    return {name: [] for name in SPLITS}


def _clean_captions(raw: Iterable[Any], skipped: SkipReport, where: str) -> tuple[str, ...]:
    """Captions stripped of surrounding whitespace; empty or non-text ones are skipped, counted."""
    kept = []
    for position, caption in enumerate(raw):
        if isinstance(caption, str) and caption.strip():
            kept.append(caption.strip())
        else:
            skipped.add("empty or malformed caption", f"{where} caption {position}: {caption!r}")
    return tuple(kept)


class _RecordCollector:
    """Gathers records of one reader, skipping images without captions or files and repeated ids."""

    def __init__(self) -> None:
        self.splits = _empty_splits()
        self.skipped = SkipReport()
        self.files = _FileIndex()
        self._seen: dict[str, str] = {}

    def add(self, image_id: str, path: Path, captions: tuple[str, ...], split: str, where: str,
            known_to_exist: bool = False) -> bool:
        """Keep the image if it can be used; `where` names the file and entry for the skip report.
        known_to_exist: the file was just written or checked, so the folder listing (which may
        predate it) is not asked."""
        if image_id in self._seen:
            self.skipped.add("duplicate image", f"{where}: {image_id} already read ({self._seen[image_id]})")
        elif not captions:
            self.skipped.add("image without captions", f"{where}: {image_id}")
        elif not known_to_exist and self.files.problem(path) is not None:
            reason, what = self.files.problem(path)
            self.skipped.add(reason, f"{where}: {path} is {what}")
        elif not known_to_exist and not self.files.exists(path):
            self.skipped.add("image file missing", f"{where}: no file {path}")
        else:
            self._seen[image_id] = where
            self.splits[split].append(ImageRecord(image_id, path, captions, split))
            return True
        return False

    def finish(self, source: str) -> CaptionRecords:
        """The records, after one warning that says what was skipped."""
        self.skipped.warn(source)
        return CaptionRecords(source=source, splits=self.splits, skipped=self.skipped)


# ---- Flickr8k (original release) -----------------------------------------------------------------


def _read_lines(path: Path, skipped: SkipReport) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines; undecodable lines are skipped, counted,
    so that one corrupted byte does not lose the whole file."""
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            skipped.add("undecodable line", f"{path.name}:{number}: {error}")
            continue
        text = text.lstrip("\ufeff").strip() if number == 1 else text.strip()
        if text:
            yield number, text


def _parse_token_file(path: Path, skipped: SkipReport) -> dict[str, dict[int, tuple[int, str]]]:
    """Image name -> caption index -> (line number, caption), as the lines "<name>#<n>\\t<caption>"."""
    captions: dict[str, dict[int, tuple[int, str]]] = {}
    for number, text in _read_lines(path, skipped):
        match = _TOKEN_LINE.match(text)
        if match is None:
            skipped.add("malformed caption line", f"{path.name}:{number}: {text[:80]!r}")
            continue
        name, index = match["name"].strip(), int(match["index"])
        per_image = captions.setdefault(name, {})
        if index in per_image:
            skipped.add("duplicate caption line",
                        f"{path.name}:{number}: {name}#{index} already on line {per_image[index][0]}")
            continue
        per_image[index] = (number, match["caption"].strip())
    return captions


def _parse_split_files(root: Path, split_files: Iterable[tuple[str, str]],
                       skipped: SkipReport) -> dict[str, tuple[str, str]]:
    """Image name -> (split, "file:line"); a name listed twice keeps its first place, so no image
    ends up in two splits."""
    placed: dict[str, tuple[str, str]] = {}
    for split, relative in split_files:
        path = _require_file(root / relative, f"the {split} split's image list (one image file name a line)")
        for number, name in _read_lines(path, skipped):
            where = f"{path.name}:{number}"
            if name in placed:
                skipped.add("image listed twice in the split files", f"{where}: {name} already at {placed[name][1]}")
                continue
            placed[name] = (split, where)
    return placed


def read_flickr8k(root: PathLike, *, image_dir: str = FLICKR8K_IMAGE_DIR, token_file: str = FLICKR8K_TOKEN_FILE,
                  split_files: Sequence[tuple[str, str]] = FLICKR8K_SPLIT_FILES) -> CaptionRecords:
    """Flickr8k in its original release layout, with the official splits of Hodosh et al.

    `root` holds Flicker8k_Dataset/*.jpg and Flickr8k_text/ (Flickr8k.token.txt with lines
    "<image>.jpg#<0-4>\\t<caption>", and the train / dev / test image lists; dev becomes "val").
    Captions keep the order of their #n index; image_id is the file stem. Images with captions but
    in no split file are left out (the release has 91 such), which the source text says; names whose
    file does not exist, such as the release's "2258277193_586949ec62.jpg(.1)", are skipped, counted.

    The other arguments are relative to `root` and let the same reader take other token-file layouts,
    e.g. Flickr30k: image_dir="flickr30k-images", token_file="results_20130124.token" and split
    lists of one's own (Flickr30k has no official ones; see `read_karpathy` for the standard split).
    """
    root = _require_dir(Path(root), "the Flickr8k release folder (Flicker8k_Dataset/, Flickr8k_text/)")
    images = _require_dir(root / image_dir, "the Flickr8k images (<image>.jpg)")
    token_path = _require_file(root / token_file, 'the caption file, lines "<image>.jpg#<n>\\t<caption>"')
    if not split_files:
        raise ValueError("read_flickr8k: split_files is empty; name at least one (split, image list) pair")
    unknown = sorted({split for split, _ in split_files} - set(SPLITS))
    if unknown:
        raise ValueError(f"read_flickr8k: unknown split names {unknown}; use {list(SPLITS)}")

    collector = _RecordCollector()
    captions = _parse_token_file(token_path, collector.skipped)
    placed = _parse_split_files(root, split_files, collector.skipped)
    for name, (split, where) in placed.items():
        ordered = tuple(text for _, (_, text) in sorted(captions.get(name, {}).items()))
        collector.add(Path(name).stem, images / name, ordered, split, where)
    unsplit = _count_unsplit(captions, placed, images, token_path, collector)
    note = f"; {unsplit} captioned images in no split left out" if unsplit else ""
    return collector.finish(f"flickr8k:{root}{note}")


# Caption lines naming an image that no split file lists and that has no file either: broken entries
# (an image with a file but in no split is left out by the release's choice, and said in the source).
UNSPLIT_REASON = "captions of an image in no split"


def _count_unsplit(captions: Mapping[str, Mapping[int, tuple[int, str]]], placed: Mapping[str, Any],
                   images: Path, token_path: Path, collector: _RecordCollector) -> int:
    """How many captioned images are in no split; the token file's names without an image file are
    broken entries rather than images left out, so they are counted as skipped instead."""
    unsplit = 0
    for name, per_image in captions.items():
        if name in placed:
            continue
        if collector.files.exists(images / name):
            unsplit += 1
        else:
            first_line = min(line for line, _ in per_image.values())
            collector.skipped.add(
                UNSPLIT_REASON,
                f"{token_path.name}:{first_line}: {name} ({len(per_image)} caption lines) is in no split file, "
                + (f"and {images / name} is {collector.files.problem(images / name)[1]}"
                   if collector.files.problem(images / name) else f"and there is no file {images / name}"))
    return unsplit


# ---- Karpathy split files ---------------------------------------------------------------------


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error}); expected {what}") from error


def read_karpathy(json_path: PathLike, image_root: PathLike, restval: str = "train",
                  check_images: bool = True) -> CaptionRecords:
    """Karpathy's split files: dataset_coco.json, dataset_flickr8k.json or dataset_flickr30k.json.

    Each entry of "images" gives "filename", "split" (train, val, test or restval), "sentences"
    (the "raw" text is used) and, for COCO, "filepath" (e.g. "val2014") and "cocoid". The image is
    image_root / filepath / filename (image_root / filename without filepath); image_id is the COCO
    id as a string, else the file stem. restval="train" adds restval images to train (the usual
    choice); restval="drop" leaves them out, which the source text says.

    check_images=False does not look for the image files (image_root need not exist): for a run that
    reads a ready feature cache, which then decides which images are used (data.check_image_files).
    """
    if restval not in ("train", "drop"):
        raise ValueError(f"read_karpathy: restval must be 'train' or 'drop', not {restval!r}")
    json_path = _require_file(Path(json_path), "one of Karpathy's split files, e.g. dataset_coco.json")
    image_root = _require_dir(Path(image_root), "the folder the split file's image paths are relative to") \
        if check_images else Path(image_root)
    data = _load_json(json_path, 'Karpathy\'s format {"dataset": ..., "images": [...]}')
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f'{json_path}: no "images" list; expected Karpathy\'s format {{"dataset": ..., "images": [...]}}')

    split_names = {**DEFAULT_SPLIT_NAMES, "restval": None if restval == "drop" else "train"}
    collector = _RecordCollector()
    dropped = 0
    for position, entry in enumerate(data["images"]):
        where = f"{json_path.name}: images[{position}]"
        image = _karpathy_entry(entry, image_root, split_names, collector.skipped, where)
        if image == _DROPPED:
            dropped += 1
        elif image is not None:
            collector.add(*image, where, known_to_exist=not check_images)
    name = data.get("dataset", json_path.stem)
    note = f"; {dropped} restval images left out" if dropped else ""
    return collector.finish(f"karpathy-{name}:{json_path}{note}")


_DROPPED = "dropped"  # what _karpathy_entry says of an entry whose split is left out


def _karpathy_entry(entry: Any, image_root: Path, split_names: Mapping[str, str | None],
                    skipped: SkipReport, where: str) -> tuple[str, Path, tuple[str, ...], str] | str | None:
    """(image_id, path, captions, split) of one entry; _DROPPED for a split left out; None when
    the entry is malformed (counted)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) \
            or not isinstance(entry.get("sentences"), list) or not isinstance(entry.get("filepath") or "", str):
        skipped.add("malformed entry", f"{where}: needs \"filename\", a \"sentences\" list and a text \"filepath\"")
        return None
    if entry.get("split") not in split_names:
        skipped.add("unknown split", f"{where}: split {entry.get('split')!r}")
        return None
    split = split_names[entry["split"]]
    if split is None:
        return _DROPPED
    raw = [sentence.get("raw") if isinstance(sentence, dict) else None for sentence in entry["sentences"]]
    captions = _clean_captions(raw, skipped, where)
    path = image_root / (entry.get("filepath") or "") / entry["filename"]
    image_id = str(entry["cocoid"]) if entry.get("cocoid") is not None else Path(entry["filename"]).stem
    return image_id, path, captions, split


# ---- COCO official annotations ----------------------------------------------------------------


def read_coco(annotations: Mapping[str, PathLike], image_dirs: Mapping[str, PathLike]) -> CaptionRecords:
    """The official COCO caption annotations, read with pycocotools.

    `annotations` maps our split names to caption files, e.g. {"train": captions_train2014.json,
    "val": captions_val2014.json}; `image_dirs` maps the same splits to their image folders. The image
    is image_dirs[split] / file_name; image_id is the COCO id as a string; captions keep file order.
    """
    _check_coco_arguments(annotations, image_dirs)
    collector = _RecordCollector()
    for split, annotation_file in annotations.items():
        path = _require_file(Path(annotation_file), "a COCO caption file such as captions_val2017.json")
        folder = _require_dir(Path(image_dirs[split]), f"the {split} images named in {path.name}")
        coco = _load_coco(path, collector.skipped)
        _skip_orphan_captions(coco, path, collector.skipped)
        for image_id in sorted(coco.imgs):
            _add_coco_image(coco, image_id, folder, split, path, collector)
    files = ", ".join(f"{split}={Path(file)}" for split, file in annotations.items())
    return collector.finish(f"coco:{files}")


def _check_coco_arguments(annotations: Mapping[str, PathLike], image_dirs: Mapping[str, PathLike]) -> None:
    if not annotations:
        raise ValueError("read_coco: no annotation files given; pass e.g. {'val': 'captions_val2017.json'}")
    unknown = sorted(set(annotations) - set(SPLITS))
    if unknown:
        raise ValueError(f"read_coco: unknown split names {unknown}; use {list(SPLITS)}")
    missing = sorted(set(annotations) - set(image_dirs))
    if missing:
        raise ValueError(f"read_coco: no image folder given for splits {missing} (image_dirs)")


def _load_coco(path: Path, skipped: SkipReport):
    """pycocotools' COCO for one file, without its progress prints; entries without the ids that
    pycocotools indexes by are skipped first, counted (it would stop with a KeyError)."""
    from pycocotools.coco import COCO

    data = _load_json(path, "the COCO caption format {\"images\": [...], \"annotations\": [...]}")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ValueError(f'{path}: expected the COCO caption format with "images" and "annotations" lists')
    data = {**data, "images": _with_keys(data["images"], ("id",), f"{path.name}: images", skipped),
            "annotations": _with_keys(data["annotations"], ("id", "image_id"), f"{path.name}: annotations", skipped)}
    coco = COCO()
    coco.dataset = data  # loaded above, so that bad JSON gives an error naming the file
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _with_keys(entries: list, keys: tuple[str, ...], where: str, skipped: SkipReport) -> list:
    kept = []
    for position, entry in enumerate(entries):
        if isinstance(entry, dict) and all(entry.get(key) is not None for key in keys):
            kept.append(entry)
        else:
            skipped.add("malformed entry", f"{where}[{position}]: needs {', '.join(keys)}")
    return kept


def _skip_orphan_captions(coco, path: Path, skipped: SkipReport) -> None:
    for annotation in coco.dataset["annotations"]:
        if annotation.get("image_id") not in coco.imgs:
            skipped.add("caption of an unknown image",
                        f"{path.name}: annotation {annotation.get('id')} names image {annotation.get('image_id')}")


def _add_coco_image(coco, image_id: Any, folder: Path, split: str, path: Path,
                    collector: _RecordCollector) -> None:
    info = coco.imgs[image_id]
    where = f"{path.name}: image {image_id}"
    if not isinstance(info.get("file_name"), str):
        collector.skipped.add("malformed entry", f"{where}: no file_name")
        return
    raw = [annotation.get("caption") for annotation in coco.imgToAnns.get(image_id, [])]
    captions = _clean_captions(raw, collector.skipped, where)
    collector.add(str(image_id), folder / info["file_name"], captions, split, where)


# ---- Hugging Face data sets -------------------------------------------------------------------


def read_hf_dataset(name_or_path: PathLike | Sequence[PathLike] | Mapping[str, PathLike | Sequence[PathLike]],
                    layout: str = "auto", image_root: PathLike | None = None, cache_dir: PathLike | None = None,
                    split_names: Mapping[str, str | None] | None = None,
                    materialize_dir: PathLike | None = None) -> CaptionRecords:
    """A parquet-backed data set read with the `datasets` library.

    name_or_path: a Hub name ("yerevann/coco-karpathy", "jxie/flickr8k"), a local folder laid out
    like a Hub repository (split names in the file names, e.g. data/train-00000-of-00001.parquet),
    one parquet file or a list of them (all read as split "train"), or a mapping from split name to
    parquet file(s).

    layout: "karpathy" (columns filepath, filename, sentences as a list of str, cocoid, split...;
    images are not in the parquet: the image is image_root / filepath / filename, and the row's own
    "split" column decides its split), "image-captions" (an embedded "image" column and caption_0,
    caption_1, ...; images are written once to materialize_dir / <source split> / <row>.jpg, original
    bytes), the Hub names of those two as aliases, or "auto" to tell them apart by their columns.

    split_names: the source's split names mapped to "train" / "val" / "test" (None leaves one out),
    added to the defaults (validation and dev -> val, restval -> train).
    """
    layout = _HF_LAYOUT_ALIASES.get(layout, layout)
    if layout not in ("auto", *HF_LAYOUTS):
        raise ValueError(f"read_hf_dataset: unknown layout {layout!r}; use 'auto', {', '.join(map(repr, HF_LAYOUTS))} "
                         f"or one of {sorted(_HF_LAYOUT_ALIASES)}")
    names = {**DEFAULT_SPLIT_NAMES, **(split_names or {})}
    bad_targets = sorted({str(v) for v in names.values() if v is not None and v not in SPLITS})
    if bad_targets:
        raise ValueError(f"read_hf_dataset: split_names maps to unknown splits {bad_targets}; use {list(SPLITS)}")
    dataset_dict, label = _load_hf(name_or_path, cache_dir)
    if not dataset_dict:
        raise ValueError(f"{label}: the data set has no splits")
    if layout == "auto":
        layout = _detect_layout(dataset_dict, label)
    read_rows = _layout_reader(layout, image_root, materialize_dir, label)

    collector = _RecordCollector()
    for source_split, dataset in dataset_dict.items():
        if source_split not in names:
            raise ValueError(f"{label}: split {source_split!r} is not one of {sorted(names)}; "
                             f"say where it goes with split_names={{{source_split!r}: 'train' | 'val' | 'test' | None}}")
        if names[source_split] is not None:
            read_rows(dataset, source_split, names, collector)
    return collector.finish(f"huggingface:{label} ({layout})")


def _layout_reader(layout: str, image_root: PathLike | None, materialize_dir: PathLike | None,
                   label: str) -> Callable[..., None]:
    """The row reader of a layout, with the folder it needs checked first."""
    if layout == "karpathy":
        if image_root is None:
            raise ValueError(f"{label}: the karpathy layout holds no images; pass image_root, the folder "
                             "with the COCO image folders (train2014/, val2014/)")
        root = _require_dir(Path(image_root), "the folder holding the images' filepath folders (e.g. val2014/)")
        return lambda dataset, split, names, collector: _read_karpathy_rows(
            dataset, split, names, root, collector, label)
    if materialize_dir is None:
        raise ValueError(f"{label}: the images are embedded in the parquet files; pass materialize_dir, "
                         "a folder to write them to once as files")
    folder = Path(materialize_dir)
    return lambda dataset, split, names, collector: _read_image_caption_rows(
        dataset, split, names[split], folder, collector, label)


def _is_local(name_or_path: Any) -> bool:
    """Whether a name means local files: anything that exists, or looks like a path or parquet file
    (so a mistyped path is reported as missing rather than looked up on the Hub)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        return True
    text = os.fspath(name_or_path)
    return (os.path.exists(text) or isinstance(name_or_path, os.PathLike) or text.endswith(".parquet")
            or text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text)


def _load_hf(name_or_path: Any, cache_dir: PathLike | None) -> tuple[Any, str]:
    """(DatasetDict, a label for messages) from the Hub or local parquet files."""
    import datasets

    cache = os.fspath(cache_dir) if cache_dir is not None else None
    if not _is_local(name_or_path):
        return _load_from_hub(str(name_or_path), cache), str(name_or_path)
    if isinstance(name_or_path, Mapping):
        files = {str(split): _existing_parquet(paths) for split, paths in name_or_path.items()}
        label = ", ".join(f"{split}={','.join(paths)}" for split, paths in files.items())
        return datasets.load_dataset("parquet", data_files=files, cache_dir=cache), label
    path = Path(name_or_path).expanduser() if isinstance(name_or_path, (str, os.PathLike)) else None
    if path is not None and path.is_dir():
        return datasets.load_dataset(str(path), cache_dir=cache), str(path)
    files = _existing_parquet(name_or_path)
    return datasets.load_dataset("parquet", data_files={"train": files}, cache_dir=cache), ",".join(files)


def _existing_parquet(paths: PathLike | Sequence[PathLike]) -> list[str]:
    listed = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not listed:
        raise ValueError("read_hf_dataset: an empty list of parquet files")
    for path in listed:
        _require_file(Path(path).expanduser(), "a parquet file, a folder of them, or a Hugging Face Hub name")
    return [str(Path(path).expanduser()) for path in listed]


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@contextlib.contextmanager
def _offline_mode_as_now_set() -> Iterator[None]:
    """datasets and huggingface_hub read HF_HUB_OFFLINE once, when imported; honour it as set now,
    so that offline mode chosen after import does not wait through the Hub's retries."""
    import datasets.config
    import huggingface_hub.constants

    with contextlib.ExitStack() as stack:
        if _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE"):
            stack.enter_context(mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True))
            stack.enter_context(mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True))
            stack.enter_context(mock.patch.object(datasets.config, "HF_DATASETS_OFFLINE", True))
        yield


def _load_from_hub(name: str, cache_dir: str | None) -> Any:
    import datasets

    try:
        with _offline_mode_as_now_set():
            return datasets.load_dataset(name, cache_dir=cache_dir)
    except ConnectionError as error:
        raise DatasetDownloadError(
            f"Hugging Face data set {name!r} could not be downloaded and is not in the local cache "
            f"({type(error).__name__}: {error}). Fix: on a machine with internet, download it into the HF cache "
            f"(python -c \"import datasets; datasets.load_dataset({name!r})\"), copy that cache "
            f"({cache_dir or datasets.config.HF_DATASETS_CACHE}) to this machine and point cache_dir or HF_HOME at it; "
            "or download its parquet files and pass them (a folder, files, or {split: files}) as name_or_path."
        ) from error


def _detect_layout(dataset_dict: Any, label: str) -> str:
    columns = set(next(iter(dataset_dict.values())).column_names)
    if {"filename", "sentences"} <= columns:
        return "karpathy"
    if "image" in columns and any(_CAPTION_COLUMN.match(column) for column in columns):
        return "image-captions"
    raise ValueError(f"{label}: cannot tell the layout from its columns {sorted(columns)}; expected "
                     "'karpathy' (filepath, filename, sentences, ...) or 'image-captions' (image, caption_0, ...)")


def _read_karpathy_rows(dataset: Any, source_split: str, names: Mapping[str, str | None], image_root: Path,
                        collector: _RecordCollector, label: str) -> None:
    """Rows of the karpathy layout; a row's "split" column wins over the split it was stored in."""
    wanted = [c for c in ("filepath", "filename", "sentences", "cocoid", "split") if c in dataset.column_names]
    for row_number, row in enumerate(dataset.select_columns(wanted)):
        where = f"{label} split {source_split} row {row_number}"
        split_name = row.get("split") or source_split
        if split_name not in names:
            collector.skipped.add("unknown split", f"{where}: split {split_name!r}")
            continue
        split = names[split_name]
        if split is None:
            continue
        if not isinstance(row.get("filename"), str) or not isinstance(row.get("sentences"), list):
            collector.skipped.add("malformed entry", f"{where}: needs filename and a sentences list")
            continue
        # Karpathy's own JSON keeps sentences as {"raw": ...}; the Hub copy as plain text.
        raw = [s.get("raw") if isinstance(s, dict) else s for s in row["sentences"]]
        captions = _clean_captions(raw, collector.skipped, where)
        path = image_root / (row.get("filepath") or "") / row["filename"]
        cocoid = row.get("cocoid")
        image_id = str(cocoid) if cocoid is not None else Path(row["filename"]).stem
        collector.add(image_id, path, captions, split, where)


def _read_image_caption_rows(dataset: Any, source_split: str, split: str, materialize_dir: Path,
                             collector: _RecordCollector, label: str) -> None:
    """Rows of an embedded image and caption_0, caption_1, ...: each image written once as a file."""
    import datasets

    caption_columns = sorted((c for c in dataset.column_names if _CAPTION_COLUMN.match(c)),
                             key=lambda c: int(_CAPTION_COLUMN.match(c).group(1)))
    if isinstance(dataset.features.get("image"), datasets.Image):
        dataset = dataset.cast_column("image", datasets.Image(decode=False))  # the bytes, not decoded pictures
    folder = materialize_dir / source_split
    for row_number, row in enumerate(dataset.select_columns(["image", *caption_columns])):
        where = f"{label} split {source_split} row {row_number}"
        path, image_id = _materialize(row["image"], folder, row_number, source_split, collector.skipped, where)
        if path is None:
            continue
        captions = _clean_captions((row[c] for c in caption_columns), collector.skipped, where)
        collector.add(image_id, path, captions, split, where, known_to_exist=True)


_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def _image_suffix(data: bytes) -> str:
    """A suffix that matches the bytes, so that a PNG is not written as .jpg; JPEG otherwise."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _IMAGE_MAGIC if data.startswith(magic)), ".jpg")


def _materialize(image: Any, folder: Path, row_number: int, source_split: str, skipped: SkipReport,
                 where: str) -> tuple[Path | None, str]:
    """(file, image_id) of an embedded image, its bytes written unchanged unless already there.
    image_id is the embedded file name's stem when there is one, else "<split>-<row>"."""
    if isinstance(image, (bytes, bytearray)):
        image = {"bytes": bytes(image), "path": None}
    if not isinstance(image, dict):
        skipped.add("image missing", f"{where}: no image ({type(image).__name__})")
        return None, ""
    original = image.get("path")
    image_id = Path(original).stem if original else f"{source_split}-{row_number}"
    data = image.get("bytes")
    if not data:
        if original and Path(original).is_file():  # a reference to a local file instead of bytes
            return Path(original), image_id
        skipped.add("image missing", f"{where}: no image bytes (path {original!r})")
        return None, image_id
    path = folder / f"{row_number}{_image_suffix(data)}"
    # A different size means an earlier run was cut off mid-write or the source changed.
    if not path.is_file() or path.stat().st_size != len(data):
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)
    return path, image_id


# ---- dispatcher -------------------------------------------------------------------------------


def read_dataset(kind: str, **options: Any) -> CaptionRecords:
    """Read a data set by kind: "flickr8k", "karpathy", "coco" or "huggingface", with the named
    reader's own arguments as options."""
    readers: dict[str, Callable[..., CaptionRecords]] = {
        "flickr8k": read_flickr8k, "karpathy": read_karpathy, "coco": read_coco, "huggingface": read_hf_dataset,
    }
    if kind not in readers:
        raise ValueError(f"read_dataset: unknown kind {kind!r}; use one of {sorted(readers)}")
    return readers[kind](**options)
