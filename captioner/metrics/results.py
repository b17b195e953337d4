"""Score a COCO results file against COCO caption annotations, coco-caption style, with provenance.

    from captioner.metrics.results import evaluate_results, format_report, write_report

    report = evaluate_results("results.json", "captions_val2017.json")   # or a list / a dict
    print(format_report(report))
    write_report(report, "scores.json")

Inputs
  results:     the COCO results format, a JSON list ``[{"image_id": ..., "caption": "..."}, ...]``
               (other keys of an entry are ignored), one caption per image.
  annotations: the COCO caption annotation format, ``{"images": [{"id": ...}, ...], "annotations":
               [{"image_id": ..., "caption": "..."}, ...]}``; "images" may be left out, then the
               images are those the annotations name. :func:`flickr8k_annotations` writes a Flickr8k
               split in this format.
  Image ids are ints or strings. A results id matches the annotation id of the same text (``397133``
  and ``"397133"`` are the same image); two annotation ids of the same text are an error.

Checks (each error is an :class:`EvaluationInputError` whose message starts with the file's name):
not UTF-8, not JSON, the wrong structure (with the entry that is wrong), ids of the wrong type,
results for images the annotations do not have (a few are listed), the same image twice in the
results, empty result captions (``allow_empty=True`` scores them as empty captions instead), images
without reference captions, empty reference captions, and images of the annotations that have no
result. The last is an error by default because a score over part of a test set is not the test
set's score; ``allow_missing=True`` scores the images that have results -- what coco-caption's
COCOEvalCap silently does -- and lists the missing ones in the report.

Output (:func:`score_report`, one JSON-ready dict per split): coco-caption's corpus scores under its
key names, per-image scores, the tokenizer used, metric versions, SPICE (or why it is unavailable),
sacreBLEU beside (a different tokenisation, with its signature) and provenance (files and their
sha256; for a model run the model folder, config and decoding settings).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
import textwrap
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from captioner.metrics.coco import (
    METRIC_KEYS,
    _package_version,
    score_captions,
    score_spice,
    spice_unavailable_reason,
)
from captioner.metrics.sacrebleu_score import sacrebleu_corpus

__all__ = [
    "DEFAULT_METRICS",
    "EvaluationInputError",
    "REPORT_FORMAT",
    "evaluate_results",
    "flickr8k_annotations",
    "format_report",
    "load_annotations",
    "load_results",
    "match_results",
    "score_report",
    "sha256_file",
    "write_report",
]

REPORT_FORMAT = "captioner-caption-scores/1"
DEFAULT_METRICS = ("bleu", "meteor", "rouge", "cider", "spice")
_KEY_ORDER = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"]
_SHOWN = 5  # how many offending ids / entries an error message lists

PathLike = str | os.PathLike


class EvaluationInputError(ValueError):
    """A results or annotations input that cannot be scored; the message names the file."""


# ---------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------
def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _few(values: Sequence, limit: int = _SHOWN) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:limit])
    more = len(values) - limit
    return shown + (f" (and {more} more)" if more > 0 else "")


def _read_json(path: Path, what: str) -> Any:
    """The JSON in `path`, with errors that name the file and say what was expected."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EvaluationInputError(f"{path}: file not found; expected {what}") from None
    except IsADirectoryError:
        raise EvaluationInputError(f"{path}: is a folder; expected a file with {what}") from None
    except OSError as error:
        raise EvaluationInputError(f"{path}: cannot be read ({error.strerror or error})") from error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise EvaluationInputError(
            f"{path}: not UTF-8 text: byte 0x{raw[error.start]:02x} at offset {error.start} (line {line}) "
            f"cannot be decoded ({error.reason}); JSON files must be UTF-8 -- re-save it as UTF-8") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark is harmless; json.loads refuses it
    if not text.strip():
        raise EvaluationInputError(f"{path}: empty file; expected {what}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise EvaluationInputError(f"{path}: not valid JSON: {error.msg} at line {error.lineno} column "
                                   f"{error.colno}; expected {what}") from None
    except RecursionError:
        raise EvaluationInputError(f"{path}: JSON nested too deeply; expected {what}") from None


def _id_text(value: Any, where: str) -> str:
    """The matching key of an image id: ints and strings only (1 and "1" are the same image)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise EvaluationInputError(f"{where}: image_id must be an integer or a string, got "
                                   f"{type(value).__name__} {value!r}")
    if isinstance(value, str) and not value.strip():
        raise EvaluationInputError(f"{where}: image_id is an empty string")
    return str(value)


def _caption_entry(entry: Any, where: str) -> tuple[Any, Any]:
    """(image_id, caption) of one results entry or annotation; an error naming `where` if it is not an
    object with both keys. The values are checked by the caller."""
    if not isinstance(entry, Mapping):
        raise EvaluationInputError(f'{where} is a {type(entry).__name__} ({entry!r:.60}), expected an object '
                                   '{"image_id": ..., "caption": "..."}')
    absent = [key for key in ("image_id", "caption") if key not in entry]
    if absent:
        raise EvaluationInputError(f"{where} has no {' or '.join(repr(k) for k in absent)} "
                                   f"(keys: {sorted(map(str, entry))[:8]})")
    return entry["image_id"], entry["caption"]


def _source(value: Any, kind: str) -> tuple[Any, str, dict]:
    """(parsed JSON, name for messages, provenance) of a path or an in-memory object."""
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        what = ('a COCO results list [{"image_id": ..., "caption": "..."}, ...]' if kind == "results" else
                'COCO caption annotations {"images": [...], "annotations": [{"image_id": ..., "caption": ...}]}')
        data = _read_json(path, what)
        return data, str(path), {"path": str(path.resolve()), "sha256": sha256_file(path)}
    name = f"{kind} (in memory)"
    info = value.get("info") if isinstance(value, Mapping) else None
    if isinstance(info, Mapping) and isinstance(info.get("description"), str):
        name = f"{kind} ({info['description']}, in memory)"
    return value, name, {
        "path": None, "sha256": _sha256_json(value),
        "note": "given in memory: sha256 of its JSON serialisation (sorted keys, compact separators)"}


# ---------------------------------------------------------------------------------------------------
# reading and checking the two inputs
# ---------------------------------------------------------------------------------------------------
def load_results(results: PathLike | Sequence[Mapping], allow_empty: bool = False
                 ) -> tuple[list[tuple[Any, str]], str, dict]:
    """Read and check a COCO results file (or the list itself).

    Returns ([(image_id, caption), ...] in file order, the name used in messages, provenance
    {"path", "sha256"}). Raises EvaluationInputError naming the file for anything malformed."""
    data, name, provenance = _source(results, "results")
    if isinstance(data, Mapping):
        hint = ""
        if "annotations" in data:
            hint = " (this looks like an annotations file: pass it as the annotations, and the results as results)"
        elif data and all(isinstance(v, str) for v in data.values()):
            hint = ' (an object of image id -> caption: write it as [{"image_id": id, "caption": caption}, ...])'
        raise EvaluationInputError(f'{name}: a JSON object, expected the COCO results format, a list '
                                   f'[{{"image_id": ..., "caption": "..."}}, ...]{hint}')
    if not isinstance(data, list):
        raise EvaluationInputError(f'{name}: a JSON {type(data).__name__}, expected the COCO results format, a '
                                   f'list [{{"image_id": ..., "caption": "..."}}, ...]')
    if not data:
        raise EvaluationInputError(f"{name}: the results list is empty: no captions to score")
    entries: list[tuple[Any, str]] = []
    seen: dict[str, int] = {}
    duplicates: list = []
    empty: list = []
    for index, entry in enumerate(data):
        where = f"{name}: entry {index}"
        image_id, caption = _caption_entry(entry, where)
        key = _id_text(image_id, where)
        if not isinstance(caption, str):
            raise EvaluationInputError(f"{where} (image {image_id!r}): caption must be a string, got "
                                       f"{type(caption).__name__} {caption!r:.60}")
        if key in seen:
            duplicates.append(image_id)
            continue
        seen[key] = index
        if not caption.strip():
            empty.append(image_id)
        entries.append((image_id, caption))
    if duplicates:
        unique = list(dict.fromkeys(duplicates))
        raise EvaluationInputError(f"{name}: {len(unique)} image(s) have more than one caption (coco-caption scores "
                                   f"exactly one per image): {_few(unique)}")
    if empty and not allow_empty:
        raise EvaluationInputError(f"{name}: {len(empty)} empty caption(s), for image(s) {_few(empty)} "
                                   "(pass allow_empty / --allow-empty to score them as empty captions)")
    return entries, name, provenance


def load_annotations(annotations: PathLike | Mapping) -> tuple[dict[Any, list[str]], str, dict]:
    """Read and check COCO caption annotations (or the dict itself).

    Returns ({image_id: [reference captions]} in image order, the name used in messages, provenance).
    Image order: that of "images", else of first mention in "annotations"."""
    data, name, provenance = _source(annotations, "annotations")
    if isinstance(data, list):
        raise EvaluationInputError(f'{name}: a JSON list, expected COCO caption annotations, an object '
                                   f'{{"images": [...], "annotations": [{{"image_id": ..., "caption": ...}}]}} '
                                   "(a list is the results format: is this the results file?)")
    if not isinstance(data, Mapping):
        raise EvaluationInputError(f'{name}: a JSON {type(data).__name__}, expected COCO caption annotations, '
                                   'an object {"images": [...], "annotations": [...]}')
    if "annotations" not in data:
        raise EvaluationInputError(f'{name}: no "annotations" key (keys: {sorted(map(str, data))[:8]}); expected '
                                   'COCO caption annotations {"images": [...], "annotations": [...]}')
    annotation_list = data["annotations"]
    if not isinstance(annotation_list, list):
        raise EvaluationInputError(f'{name}: "annotations" is a {type(annotation_list).__name__}, expected a list')
    if not annotation_list:
        raise EvaluationInputError(f'{name}: "annotations" is empty: no reference captions')

    references: dict[str, list[str]] = {}
    original: dict[str, Any] = {}
    images = data.get("images")
    if images is not None:
        if not isinstance(images, list):
            raise EvaluationInputError(f'{name}: "images" is a {type(images).__name__}, expected a list')
        for index, image in enumerate(images):
            where = f'{name}: images[{index}]'
            if not isinstance(image, Mapping) or "id" not in image:
                raise EvaluationInputError(f'{where} must be an object with an "id", got {image!r:.60}')
            key = _id_text(image["id"], where)
            if key in original:
                if original[key] == image["id"]:
                    raise EvaluationInputError(f"{where}: image id {image['id']!r} listed twice")
                raise EvaluationInputError(f"{where}: image ids {original[key]!r} and {image['id']!r} are the same "
                                           "text; results could not tell them apart")
            original[key] = image["id"]
            references[key] = []

    unlisted: list = []
    empty_refs: list = []
    for index, annotation in enumerate(annotation_list):
        where = f"{name}: annotations[{index}]"
        image_id, caption = _caption_entry(annotation, where)
        key = _id_text(image_id, where)
        if not isinstance(caption, str):
            raise EvaluationInputError(f"{where} (image {image_id!r}): caption must be a string, got "
                                       f"{type(caption).__name__}")
        if key not in original:
            if images is not None:
                unlisted.append(image_id)
                continue
            original[key] = image_id
            references[key] = []
        elif original[key] != image_id:
            raise EvaluationInputError(f"{where}: image id {image_id!r} and {original[key]!r} are the same text; "
                                       "results could not tell them apart")
        if not caption.strip():
            empty_refs.append(image_id)
        references[key].append(caption)
    if unlisted:
        unique = list(dict.fromkeys(unlisted))
        raise EvaluationInputError(f'{name}: {len(unique)} image id(s) in "annotations" are not in "images": '
                                   f"{_few(unique)}")
    if empty_refs:
        unique = list(dict.fromkeys(empty_refs))
        raise EvaluationInputError(f"{name}: empty reference caption(s) for {len(unique)} image(s): {_few(unique)}")
    captionless = [original[key] for key, refs in references.items() if not refs]
    if captionless:
        raise EvaluationInputError(f'{name}: {len(captionless)} image(s) of "images" have no reference captions: '
                                   f"{_few(captionless)}")
    return {original[key]: refs for key, refs in references.items()}, name, provenance


def match_results(entries: Sequence[tuple[Any, str]], references: Mapping[Any, Sequence[str]], *,
                  results_name: str = "results", annotations_name: str = "annotations",
                  allow_missing: bool = False) -> tuple[dict, dict, list]:
    """(hypotheses, references, missing ids): both dicts keyed by the annotations' own ids, in the
    annotations' image order; `missing` are annotated images without a result (an error unless
    `allow_missing`)."""
    by_text = {str(image_id): image_id for image_id in references}
    given = {}
    unknown = []
    for image_id, caption in entries:
        key = str(image_id)
        if key not in by_text:
            unknown.append(image_id)
        else:
            given[by_text[key]] = caption
    if unknown:
        raise EvaluationInputError(
            f"{results_name}: {len(unknown)} of {len(entries)} result(s) are for image ids that {annotations_name} "
            f"does not have: {_few(unknown)}; annotation ids look like {_few(list(references), 3)}")
    missing = [image_id for image_id in references if image_id not in given]
    if missing and not allow_missing:
        raise EvaluationInputError(
            f"{results_name}: no caption for {len(missing)} of the {len(references)} images of {annotations_name}: "
            f"{_few(missing)}; a score over part of the images is not the split's score (pass allow_missing / "
            "--allow-missing to score only the images that have results, as coco-caption does)")
    hypotheses = {image_id: given[image_id] for image_id in references if image_id in given}
    refs = {image_id: list(references[image_id]) for image_id in hypotheses}
    return hypotheses, refs, missing


# ---------------------------------------------------------------------------------------------------
# scoring and the report
# ---------------------------------------------------------------------------------------------------
def _normalise(metrics: Sequence[str]) -> tuple[list[str], bool]:
    wanted, spice = [], False
    for name in ([metrics] if isinstance(metrics, str) else metrics):
        key = str(name).lower().replace("-", "_")
        if key == "spice":
            spice = True
            continue
        key = {"rouge_l": "rouge"}.get(key, key)
        if key not in METRIC_KEYS:
            raise ValueError(f"unknown metric {name!r}; choose from {sorted(METRIC_KEYS) + ['spice']}")
        if key not in wanted:
            wanted.append(key)
    if not wanted and not spice:
        raise ValueError("no metrics asked for")
    return wanted, spice


def score_report(hypotheses: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], *,
                 tokenizer: str = "auto", metrics: Sequence[str] = DEFAULT_METRICS, allow_empty: bool = False,
                 split: str | None = None, provenance: Mapping | None = None, missing: Sequence = (),
                 sacrebleu: bool = True) -> dict:
    """Score one caption per image against its references; the report as a JSON-ready dict.

    Keys: format, split, created, num_images, corpus (coco-caption key -> score), unavailable (key ->
    why), tokenizer, versions, sacrebleu (corpus BLEU under a different tokenisation, with signature),
    missing_images (only with some), provenance, per_image (a list of {image_id, caption, key: score})."""
    wanted, want_spice = _normalise(metrics)
    if wanted:
        scores = score_captions(hypotheses, references, metrics=wanted, tokenizer=tokenizer, allow_empty=allow_empty)
        corpus, per_image, unavailable = dict(scores.corpus), scores.per_image, dict(scores.unavailable)
        tokenizer_used, versions = scores.tokenizer, dict(scores.versions)
    else:  # pragma: no cover - SPICE alone
        corpus, per_image, unavailable, versions = {}, {k: {} for k in hypotheses}, {}, {}
        tokenizer_used = tokenizer
    if want_spice:
        reason = spice_unavailable_reason()
        if reason is None:
            try:
                corpus["SPICE"], spice_scores = score_spice(hypotheses, references, tokenizer)
                for image_id, value in spice_scores.items():
                    per_image[image_id]["SPICE"] = value
                versions["spice"] = "spice-1.0.jar (pycocoevalcap) with Stanford CoreNLP 3.6.0"
            except Exception as error:  # noqa: BLE001 - a Java failure must not lose the other metrics
                unavailable["SPICE"] = f"SPICE failed: {type(error).__name__}: {error}"
        else:
            unavailable["SPICE"] = reason
    versions["sacrebleu"] = _package_version("sacrebleu")
    versions["captioner"] = _package_version("captioner")
    versions["python"] = platform.python_version()

    ids = list(hypotheses)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "split": split,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "num_images": len(ids),
        "corpus": {key: corpus[key] for key in _KEY_ORDER if key in corpus},
        "unavailable": unavailable,
        "tokenizer": tokenizer_used,
        "versions": versions,
    }
    ref_counts = [len(references[i]) for i in ids]
    report["references_per_image"] = {"min": min(ref_counts), "max": max(ref_counts), "total": sum(ref_counts)}
    if sacrebleu:
        report["sacrebleu"] = sacrebleu_corpus([hypotheses[i] for i in ids], [list(references[i]) for i in ids])
    if missing:
        report["missing_images"] = {"count": len(missing), "image_ids": list(missing),
                                    "note": "annotated images without a result, left out of every score"}
    report["provenance"] = dict(provenance or {})
    report["per_image"] = [{"image_id": i, "caption": hypotheses[i],
                            **{key: per_image[i][key] for key in _KEY_ORDER if key in per_image[i]}}
                           for i in ids]
    return report


def evaluate_results(results: PathLike | Sequence[Mapping], annotations: PathLike | Mapping, *,
                     tokenizer: str = "auto", metrics: Sequence[str] = DEFAULT_METRICS,
                     allow_missing: bool = False, allow_empty: bool = False, split: str | None = None,
                     provenance: Mapping | None = None, sacrebleu: bool = True) -> dict:
    """Score a COCO results file (path, or the list) against COCO caption annotations (path, or the
    dict); returns the report of :func:`score_report`, with the inputs' paths and sha256 under
    provenance. Raises EvaluationInputError (a ValueError) naming the file for malformed input."""
    entries, results_name, results_provenance = load_results(results, allow_empty=allow_empty)
    references, annotations_name, annotations_provenance = load_annotations(annotations)
    hypotheses, refs, missing = match_results(entries, references, results_name=results_name,
                                              annotations_name=annotations_name, allow_missing=allow_missing)
    full_provenance = {"results": results_provenance, "annotations": annotations_provenance}
    full_provenance.update(provenance or {})
    return score_report(hypotheses, refs, tokenizer=tokenizer, metrics=metrics, allow_empty=allow_empty,
                        split=split, provenance=full_provenance, missing=missing, sacrebleu=sacrebleu)


# ---------------------------------------------------------------------------------------------------
# Flickr8k as COCO annotations
# ---------------------------------------------------------------------------------------------------
def flickr8k_annotations(root: PathLike, split: str = "test", caption_numbers: Sequence[int] | None = None) -> dict:
    """One split of the original Flickr8k release (``root`` holds Flicker8k_Dataset/ and Flickr8k_text/)
    as COCO caption annotations: image ids are the file stems (as `captioner.data.sources.read_flickr8k`
    and the project's models use), "file_name" the image file, each annotation's "caption_number" the
    #n of Flickr8k.token.txt. `caption_numbers` keeps only those captions (e.g. (1, 2, 3, 4)).
    The returned dict's "info" names the files read and their sha256 (provenance)."""
    from captioner.data.sources import FLICKR8K_SPLIT_FILES, FLICKR8K_TOKEN_FILE, read_flickr8k

    split_files = dict(FLICKR8K_SPLIT_FILES)
    if split not in split_files:
        raise ValueError(f"flickr8k split must be one of {sorted(split_files)}, got {split!r}")
    root = Path(root)
    records = read_flickr8k(root)
    wanted = None if caption_numbers is None else {int(n) for n in caption_numbers}
    images, annotations = [], []
    for record in records.splits[split]:
        images.append({"id": record.image_id, "file_name": Path(record.path).name})
        for number, caption in enumerate(record.captions):
            if wanted is None or number in wanted:
                annotations.append({"id": len(annotations), "image_id": record.image_id, "caption": caption,
                                    "caption_number": number})
    files = [FLICKR8K_TOKEN_FILE, split_files[split]]
    return {
        "info": {"description": f"Flickr8k {split} split (Hodosh et al. 2013) as COCO caption annotations",
                 "source": "flickr8k", "root": str(root.resolve()), "split": split,
                 "caption_numbers": None if wanted is None else sorted(wanted),
                 "files": {name: sha256_file(root / name) for name in files}},
        "images": images,
        "annotations": annotations,
    }


# ---------------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    """NaN / infinity -> None, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: Mapping, path: PathLike) -> Path:
    """Write the report as strict JSON (NaN becomes null), creating the folder; atomically, so a full
    disk leaves the earlier file (if any) whole."""
    from captioner.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(_json_safe(report), indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    atomic_write(path, lambda temporary: temporary.write_bytes(data))
    return path


def format_report(report: Mapping, digits: int = 4) -> str:
    """A readable terminal table: coco-caption scores, what was unavailable, sacreBLEU apart."""
    corpus, unavailable = report.get("corpus", {}), report.get("unavailable", {})
    title = (f"{report.get('split') or 'results'}: {report.get('num_images')} images, "
             f"tokenizer {report.get('tokenizer')}")
    missing = report.get("missing_images")
    if missing:
        title += f" ({missing['count']} annotated images without a result left out)"
    rows = []
    for key in _KEY_ORDER:
        if key in corpus:
            value = corpus[key]
            text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
            rows.append((key, text, ""))
        elif key in unavailable:
            rows.append((key, "n/a", "unavailable, see below"))
    width = max([len("metric")] + [len(k) for k, _, _ in rows])
    value_width = max([len("score")] + [len(v) for _, v, _ in rows])
    lines = [title, f"{'metric':<{width}}  {'score':>{value_width}}", f"{'-' * width}  {'-' * value_width}"]
    for key, text, note in rows:
        lines.append(f"{key:<{width}}  {text:>{value_width}}" + (f"  ({note})" if note else ""))
    for key in [k for k in _KEY_ORDER if k in unavailable and k not in corpus]:
        lines.extend(textwrap.wrap(f"{key} unavailable: {unavailable[key]}", 100, subsequent_indent="  ",
                                   break_long_words=False, break_on_hyphens=False))
    sacre = report.get("sacrebleu")
    if sacre:
        lines.append("")
        lines.append(f"sacreBLEU {sacre['score']:.2f} (0-100)  {sacre['signature']}")
        lines.append("  a different tokenisation (13a on raw, cased text): not comparable with Bleu_4 above")
    return "\n".join(lines)


def command_line() -> str:
    """The command that is running, for provenance."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
