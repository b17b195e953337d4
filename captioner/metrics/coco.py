"""coco-caption scores (BLEU-1..4, METEOR, ROUGE-L, CIDEr) exactly as pycocoevalcap computes them.

Captions are PTB-tokenised the way pycocoevalcap's ``PTBTokenizer`` does it -- by the Java original
when Java is present, or by the pure-Python port in :mod:`captioner.data.ptb`, which gives the
same tokens -- and then scored by pycocoevalcap's own scorers (``Bleu(4)``, ``Meteor``, ``Rouge``,
``Cider``). METEOR needs Java (pycocoevalcap runs meteor-1.5.jar); without it the other metrics are
still computed and ``CaptionScores.unavailable`` says why METEOR is missing.

    scores = score_captions({"img1": "a dog runs"}, {"img1": ["a dog is running", "the dog runs"]})
    print(format_scores_table(scores.corpus))
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import re
import shutil
import subprocess
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from captioner.data.ptb import java_available, java_ptb_tokenize_many, ptb_tokenize_many

__all__ = ["CaptionScores", "METRIC_KEYS", "SPICE_REQUIREMENTS", "format_scores_table", "java_major_version",
           "score_captions", "score_spice", "spice_unavailable_reason"]

# metric name (argument of score_captions) -> coco-caption result keys
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "bleu": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"),
    "meteor": ("METEOR",),
    "rouge": ("ROUGE_L",),
    "cider": ("CIDEr",),
}
_KEY_ORDER = [key for keys in METRIC_KEYS.values() for key in keys]
_TOKENIZERS = ("auto", "java", "python")


@dataclass
class CaptionScores:
    """Scores of one set of hypotheses against references.

    corpus: coco-caption key -> corpus score (BLEU, METEOR, ROUGE-L in [0, 1]; CIDEr raw, as
        pycocoevalcap reports it, about 0-10).
    per_image: image id -> {key: score} (pycocoevalcap's per-image scores; per-image BLEU is the
        sentence-level BLEU that coco-caption reports).
    tokenizer: "ptb-java" (pycocoevalcap's Java PTBTokenizer) or "ptb-python" (the Python port).
    unavailable: metric key -> why it was not computed (METEOR without Java).
    versions: what produced the numbers (pycocoevalcap version, tokenizer, METEOR jar, Java).
    """

    corpus: dict[str, float]
    per_image: dict[Hashable, dict[str, float]]
    tokenizer: str
    unavailable: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return len(self.per_image)

    def to_dict(self, per_image: bool = False) -> dict:
        """A JSON-ready dict (image ids become strings); per-image scores only when asked for."""
        out = {
            "corpus": dict(self.corpus),
            "tokenizer": self.tokenizer,
            "unavailable": dict(self.unavailable),
            "versions": dict(self.versions),
            "num_images": self.num_images,
        }
        if per_image:
            out["per_image"] = {str(k): dict(v) for k, v in self.per_image.items()}
        return out


# ---------------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------------
def _few(ids, limit: int = 5) -> str:
    shown = sorted(ids, key=lambda x: (type(x).__name__, str(x)))[:limit]
    more = len(ids) - len(shown)
    return ", ".join(repr(x) for x in shown) + (f" (and {more} more)" if more > 0 else "")


def _check_inputs(hypotheses: Mapping, references: Mapping, allow_empty: bool = False
                  ) -> tuple[list, dict, dict[Hashable, list[str]]]:
    if not isinstance(hypotheses, Mapping) or not isinstance(references, Mapping):
        raise TypeError("hypotheses and references must be mappings: image id -> caption / list of captions")
    hyp_ids, ref_ids = set(hypotheses), set(references)
    if hyp_ids != ref_ids:
        parts = []
        only_hyp, only_ref = hyp_ids - ref_ids, ref_ids - hyp_ids
        if only_hyp:
            parts.append(f"{len(only_hyp)} with a hypothesis but no references entry: {_few(only_hyp)}")
        if only_ref:
            parts.append(f"{len(only_ref)} with references but no hypothesis: {_few(only_ref)}")
        raise ValueError("hypotheses and references must cover the same image ids; " + "; ".join(parts))
    if not hypotheses:
        raise ValueError("no captions to score: hypotheses and references are empty")
    ids = list(hypotheses)
    hyps: dict = {}
    refs: dict[Hashable, list[str]] = {}
    empty_hyp, no_refs, empty_ref = [], [], []
    for key in ids:
        hyp = hypotheses[key]
        if not isinstance(hyp, str):
            raise TypeError(f"hypothesis of image {key!r} must be a string, got {type(hyp).__name__}")
        if not hyp.strip():
            empty_hyp.append(key)
        hyps[key] = hyp
        ref_list = references[key]
        if isinstance(ref_list, str) or not isinstance(ref_list, Sequence):
            raise TypeError(f"references of image {key!r} must be a list of strings, got {type(ref_list).__name__}")
        if len(ref_list) == 0:
            no_refs.append(key)
        for ref in ref_list:
            if not isinstance(ref, str):
                raise TypeError(f"a reference of image {key!r} is {type(ref).__name__}, not a string")
            if not ref.strip():
                empty_ref.append(key)
        refs[key] = list(ref_list)
    if empty_hyp and not allow_empty:
        raise ValueError(f"{len(empty_hyp)} empty hypothesis caption(s), for image(s) {_few(empty_hyp)}")
    if no_refs:
        raise ValueError(f"{len(no_refs)} image(s) with no reference captions: {_few(no_refs)}")
    if empty_ref:
        raise ValueError(f"empty reference caption(s) for image(s) {_few(set(empty_ref))}")
    return ids, hyps, refs


# ---------------------------------------------------------------------------------------------------
# tokenisation and scorers
# ---------------------------------------------------------------------------------------------------
def _tokenize(ids: list, hyps: dict, refs: dict, use_java: bool) -> tuple[dict, dict]:
    """pycocoevalcap's tokenisation: one batch of all references, one of all hypotheses, in id order."""
    tokenize = java_ptb_tokenize_many if use_java else ptb_tokenize_many
    flat_refs = [r for key in ids for r in refs[key]]
    tok_refs = tokenize(flat_refs)
    # Blank hypotheses (only possible with allow_empty) stay empty rather than pass through the tokenizer.
    spoken = [key for key in ids if hyps[key].strip()]
    tokenized = dict(zip(spoken, tokenize([hyps[key] for key in spoken]))) if spoken else {}
    tok_hyps = [tokenized.get(key, "") for key in ids]
    gts, res, i = {}, {}, 0
    for key, hyp in zip(ids, tok_hyps):
        n = len(refs[key])
        gts[key] = tok_refs[i:i + n]
        i += n
        res[key] = [hyp]
    return gts, res


@functools.lru_cache(maxsize=1)
def _java_version() -> str:
    java = shutil.which("java")
    if java is None:
        return "missing"
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return f"unusable ({error})"
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _meteor_dir() -> Path:
    import pycocoevalcap.meteor.meteor  # the jar sits beside meteor.py, where Meteor() looks for it

    return Path(pycocoevalcap.meteor.meteor.__file__).resolve().parent


def meteor_files_missing() -> list[str]:
    """The files pycocoevalcap's METEOR needs that this install lacks (its jar and paraphrase table).

    With Java present but the jar gone, ``Meteor()`` starts a Java process that exits at once and
    the scorer then waits on it for ever: so the files are checked before it is started.
    """
    folder = _meteor_dir()
    return [str(folder / name) for name in ("meteor-1.5.jar", "data/paraphrase-en.gz")
            if not (folder / name).is_file()]


def _close_meteor(meteor) -> None:
    """Stop METEOR's Java process now rather than whenever the scorer is garbage-collected."""
    process = getattr(meteor, "meteor_p", None)
    if process is None:
        return
    with meteor.lock:
        try:
            process.stdin.close()
        except OSError:
            pass
        process.kill()
        process.wait()


def _run_scorer(metric: str, gts: dict, res: dict):
    """(corpus scores, per-image score lists), one entry per coco-caption key of `metric`."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        if metric == "bleu":
            from pycocoevalcap.bleu.bleu import Bleu

            score, scores = Bleu(4).compute_score(gts, res, verbose=0)
            return list(score), list(scores)
        if metric == "meteor":
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
            try:
                score, scores = meteor.compute_score(gts, res)
            finally:
                _close_meteor(meteor)
            return [score], [scores]
        if metric == "rouge":
            from pycocoevalcap.rouge.rouge import Rouge

            score, scores = Rouge().compute_score(gts, res)
            return [score], [scores]
        if metric == "cider":
            from pycocoevalcap.cider.cider import Cider

            score, scores = Cider().compute_score(gts, res)
            return [score], [scores]
    raise AssertionError(metric)  # pragma: no cover - metric names are checked before


def _normalise_metrics(metrics: Sequence[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    out = []
    for name in metrics:
        key = str(name).lower().replace("-", "_")
        key = {"rouge_l": "rouge"}.get(key, key)
        if key not in METRIC_KEYS:
            raise ValueError(f"unknown metric {name!r}; choose from {sorted(METRIC_KEYS)}")
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError("no metrics asked for")
    return out


# ---------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------
def score_captions(
    hypotheses: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    metrics: Sequence[str] = ("bleu", "meteor", "rouge", "cider"),
    tokenizer: str = "auto",
    allow_empty: bool = False,
) -> CaptionScores:
    """Score one generated caption per image against that image's reference captions, coco-caption style.

    hypotheses: image id -> generated caption; references: image id -> reference captions (at least
    one each). Both must hold the same ids. tokenizer: "auto" uses pycocoevalcap's Java PTBTokenizer
    when Java is present and the Python port otherwise; "java" / "python" force one ("java" raises
    RuntimeError without Java). Raises ValueError for mismatched ids, empty hypotheses, images without
    references and unknown metrics. `allow_empty=True` scores an empty hypothesis as an empty
    caption (a model that says nothing gets no credit) instead of raising: for a model's own output,
    where an empty caption is a result, not a malformed input.
    """
    if tokenizer not in _TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {_TOKENIZERS}, got {tokenizer!r}")
    wanted = _normalise_metrics(metrics)
    ids, hyps, refs = _check_inputs(hypotheses, references, allow_empty)

    have_java = java_available()
    if tokenizer == "java" and not have_java:
        raise RuntimeError("tokenizer='java' needs Java (a `java` executable on PATH), which was not found; "
                           "use tokenizer='python' or 'auto'")
    use_java = tokenizer == "java" or (tokenizer == "auto" and have_java)
    gts, res = _tokenize(ids, hyps, refs, use_java)

    versions = {
        "pycocoevalcap": _package_version("pycocoevalcap"),
        "tokenizer": ("pycocoevalcap PTBTokenizer (stanford-corenlp-3.4.1 jar)" if use_java
                      else "captioner.data.ptb (Python port of PTBTokenizer 3.4.1)"),
    }
    if use_java or "meteor" in wanted:
        versions["java"] = _java_version()

    corpus: dict[str, float] = {}
    per_image: dict[Hashable, dict[str, float]] = {key: {} for key in ids}
    unavailable: dict[str, str] = {}
    for metric in wanted:
        keys = METRIC_KEYS[metric]
        if metric == "meteor":
            if not have_java:
                unavailable["METEOR"] = "Java not found: pycocoevalcap computes METEOR with meteor-1.5.jar"
                continue
            missing = meteor_files_missing()
            if missing:
                unavailable["METEOR"] = ("pycocoevalcap's METEOR files are missing (reinstall pycocoevalcap): "
                                         + ", ".join(missing))
                continue
            versions["meteor"] = "meteor-1.5.jar (pycocoevalcap)"
        try:
            scores, per_image_scores = _run_scorer(metric, gts, res)
        except Exception as error:  # noqa: BLE001 - METEOR's Java process can fail; keep the other metrics
            if metric != "meteor":
                raise
            unavailable["METEOR"] = f"METEOR failed: {type(error).__name__}: {error}"
            versions.pop("meteor", None)
            continue
        for key, score, image_scores in zip(keys, scores, per_image_scores):
            corpus[key] = float(score)
            if len(image_scores) != len(ids):  # pragma: no cover - pycocoevalcap returns one per image
                raise RuntimeError(f"{key}: {len(image_scores)} per-image scores for {len(ids)} images")
            for image_id, value in zip(ids, image_scores):
                per_image[image_id][key] = float(value)

    return CaptionScores(
        corpus=corpus,
        per_image=per_image,
        tokenizer="ptb-java" if use_java else "ptb-python",
        unavailable=unavailable,
        versions=versions,
    )


def format_scores_table(corpus: Mapping[str, float], digits: int = 4) -> str:
    """An aligned two-column table of corpus scores, coco-caption keys in their usual order.

        metric    score
        -------  ------
        Bleu_1   0.6364
        ...
    """
    keys = [k for k in _KEY_ORDER if k in corpus] + [k for k in corpus if k not in _KEY_ORDER]
    rows = []
    for key in keys:
        value = corpus[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            text = "n/a"
        else:
            text = f"{float(value):.{digits}f}"
        rows.append((str(key), text))
    name_width = max([len("metric")] + [len(k) for k, _ in rows])
    value_width = max([len("score")] + [len(v) for _, v in rows])
    lines = [f"{'metric':<{name_width}}  {'score':>{value_width}}", f"{'-' * name_width}  {'-' * value_width}"]
    lines += [f"{k:<{name_width}}  {v:>{value_width}}" for k, v in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# SPICE (kept apart from score_captions: it needs what this project cannot count on)
# ---------------------------------------------------------------------------------------------------
SPICE_CORENLP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SPICE_REQUIREMENTS = (
    "pycocoevalcap's SPICE runs `java -jar -Xmx8G spice-1.0.jar` (8 GB Java heap) and needs (1) Stanford "
    f"CoreNLP 3.6.0 ({' and '.join(SPICE_CORENLP_JARS)}) in pycocoevalcap/spice/lib, which its Spice() "
    f"downloads on first use from {SPICE_CORENLP_URL} (a zip of about 400 MB); (2) Java 8 (11 is reported to "
    "work): on Java 16 and later spice-1.0.jar stops at start with java.lang.reflect.InaccessibleObjectException "
    "(module java.base does not 'opens java.lang'), raised by the FST serialisation library it bundles"
)


def java_major_version() -> int | None:
    """The major version of the `java` on PATH (8 for "1.8.0_312", 17 for "17.0.15"), None without Java."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', _java_version())
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _spice_lib() -> Path:
    import pycocoevalcap.spice

    return Path(pycocoevalcap.spice.__file__).resolve().parent / "lib"


def spice_unavailable_reason() -> str | None:
    """None when SPICE can run here; otherwise why not, precisely (nothing is downloaded or started)."""
    reasons = []
    lib = _spice_lib()
    missing = [jar for jar in SPICE_CORENLP_JARS if not (lib / jar).is_file()]
    if missing:
        reasons.append(f"Stanford CoreNLP 3.6.0 is not installed ({', '.join(missing)} missing from {lib}); "
                       f"pycocoevalcap's Spice() would download it on first use from {SPICE_CORENLP_URL} "
                       "(about 400 MB); captioner never starts that download")
    if not java_available():
        reasons.append("Java not found (spice-1.0.jar is a Java program; it needs Java 8, 11 is reported to work)")
    else:
        major = java_major_version()
        if major is not None and major >= 16:
            reasons.append(f"Java {major} found ({_java_version()}); spice-1.0.jar needs Java 8 (11 is reported "
                           "to work): on Java 16+ it fails at start with InaccessibleObjectException ('module "
                           "java.base does not opens java.lang') from the FST library it bundles")
    return "; ".join(reasons) or None


def score_spice(hypotheses: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                tokenizer: str = "auto") -> tuple[float, dict[Hashable, float]]:
    """SPICE (corpus score, image id -> per-image SPICE F-score) through pycocoevalcap's Spice, on the
    PTB-tokenised captions as coco-caption's COCOEvalCap does. Raises RuntimeError, saying why, when
    `spice_unavailable_reason()` says SPICE cannot run here (never starts a download)."""
    if tokenizer not in _TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {_TOKENIZERS}, got {tokenizer!r}")
    reason = spice_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"SPICE unavailable: {reason}")
    ids, hyps, refs = _check_inputs(hypotheses, references)
    gts, res = _tokenize(ids, hyps, refs, tokenizer != "python")
    # SPICE sorts the ids and writes them into JSON: give it plain, sortable keys and map back.
    keys = {image_id: f"{position:09d}" for position, image_id in enumerate(ids)}
    from pycocoevalcap.spice.spice import Spice

    with contextlib.redirect_stdout(io.StringIO()):
        score, per_image = Spice().compute_score({keys[i]: gts[i] for i in ids}, {keys[i]: res[i] for i in ids})
    ordered = sorted(ids, key=lambda image_id: keys[image_id])
    values = {image_id: float(scores["All"]["f"]) for image_id, scores in zip(ordered, per_image)}
    return float(score), values
