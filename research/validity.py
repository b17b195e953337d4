"""How well caption metrics agree with people: Kendall's tau on Flickr8k-Expert.

``Flickr8k_text/ExpertAnnotations.txt`` (Hodosh et al. 2013) holds 5,822 lines
``<image>.jpg <TAB> <candidate image>.jpg#<n> <TAB> s1 <TAB> s2 <TAB> s3``: a caption of the release
(usually written for a *different* image) judged against the image by three experts, 1 (does not
describe the image) to 4 (describes it). :func:`run_validity_study` scores every candidate against
the image's own reference captions with each metric and correlates the scores with the mean expert
score (Kendall's tau-b, :func:`kendall_tau`).

Protocol (also written into the result):
  * references: the image's captions #0-#4 from Flickr8k.token.txt; when the candidate is one of
    them (158 lines) it is left out of its own references, which leaves 4.
  * metrics: coco-caption's per-caption scores through pycocoevalcap (captioner.metrics.coco):
    BLEU-1..4 (the per-image BLEU of pycocoevalcap's Bleu scorer), METEOR 1.5, ROUGE-L, CIDEr-D, on
    PTB-tokenised text; sacreBLEU's sentence BLEU (13a, cased, exp smoothing, effective order) on raw
    text. All judged lines are scored in one batch, so CIDEr-D's document frequencies come from the
    reference sets of all scored lines (one set per line, as coco-caption would count them if the
    lines were its images: an image judged k times counts k times).
  * ties: tau-b (ties in either variable leave the pair out of both numerator counts and are
    corrected for in the denominator); scores are tied only when exactly equal as floats.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from captioner.metrics.coco import score_captions
from captioner.metrics.sacrebleu_score import sacrebleu_sentence_scorer

__all__ = [
    "COCO_METRICS",
    "ExpertLine",
    "KendallResult",
    "kendall_tau",
    "kendall_tau_bruteforce",
    "read_expert_annotations",
    "read_token_file",
    "run_validity_study",
]

COCO_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
SACREBLEU_KEY = "sacreBLEU_sentence"
EXPERT_FILE = "Flickr8k_text/ExpertAnnotations.txt"
TOKEN_FILE = "Flickr8k_text/Flickr8k.token.txt"
_CAPTION_ID = re.compile(r"^(?P<image>[^#\s]+)#(?P<number>\d+)$")


# ---------------------------------------------------------------------------------------------------
# Kendall's tau
# ---------------------------------------------------------------------------------------------------
@dataclass
class KendallResult:
    """Kendall's tau between two paired samples.

    tau_b: (C - D) / sqrt((n0 - n1)(n0 - n2)), n0 = n(n-1)/2 pairs, n1 / n2 pairs tied in x / y.
    tau_c: Stuart's 2 (C - D) / (n^2 (m - 1) / m), m = min(distinct x values, distinct y values).
    z: S / sd(S), S = C - D, with the tie-corrected variance of S under independence.
    p_value: two-sided, from z by the normal approximation (the same as scipy.stats.kendalltau's
        method="asymptotic"); it underflows to 0 below about 1e-308, z does not.
    """

    tau_b: float
    tau_c: float
    z: float
    p_value: float
    n: int
    concordant_minus_discordant: int
    pairs: int
    ties_x: int
    ties_y: int
    ties_both: int

    def to_dict(self) -> dict:
        return asdict(self)


def _dense_ranks(values: Sequence[float]) -> list[int]:
    order = {v: r for r, v in enumerate(sorted(set(values)))}
    return [order[v] for v in values]


def _tie_sums(values: Sequence) -> tuple[int, float, float]:
    """(sum t(t-1)/2, sum t(t-1)(t-2), sum t(t-1)(2t+5)) over groups of t equal values."""
    counts = [t for t in Counter(values).values() if t > 1]
    return (sum(t * (t - 1) // 2 for t in counts), float(sum(t * (t - 1) * (t - 2) for t in counts)),
            float(sum(t * (t - 1) * (2 * t + 5) for t in counts)))


def _count_discordant(x: list[int], y: list[int]) -> int:
    """Pairs with x_i < x_j and y_i > y_j, by a Fenwick tree over y's ranks after sorting by (x, y)."""
    order = sorted(range(len(x)), key=lambda i: (x[i], y[i]))
    size = max(y) + 1 if y else 0
    tree = [0] * (size + 1)
    discordant = 0
    seen = 0
    for i in order:
        rank = y[i] + 1
        # how many earlier (x smaller, or x equal and y not larger) have y <= y_i
        not_greater, k = 0, rank
        while k > 0:
            not_greater += tree[k]
            k -= k & -k
        discordant += seen - not_greater
        k = rank
        while k <= size:
            tree[k] += 1
            k += k & -k
        seen += 1
    # pairs tied in x were sorted by y, so none of them was counted
    return discordant


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> KendallResult:
    """Kendall's tau-b (and tau-c, and an asymptotic p-value) in O(n log n). NaN where undefined
    (fewer than 2 pairs, or one variable constant). Values are tied only when exactly equal."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} and {len(y)}")
    values = list(x) + list(y)
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        raise ValueError("kendall_tau: NaN in the input")
    n = len(x)
    xr, yr = _dense_ranks(x), _dense_ranks(y)
    pairs = n * (n - 1) // 2
    ties_x, x0, x1 = _tie_sums(xr)
    ties_y, y0, y1 = _tie_sums(yr)
    ties_both, _, _ = _tie_sums(list(zip(xr, yr)))
    discordant = _count_discordant(xr, yr) if n > 1 else 0
    s = pairs - ties_x - ties_y + ties_both - 2 * discordant
    nan = float("nan")
    if n < 2 or pairs == ties_x or pairs == ties_y:
        return KendallResult(nan, nan, nan, nan, n, s, pairs, ties_x, ties_y, ties_both)
    tau_b = s / math.sqrt(pairs - ties_x) / math.sqrt(pairs - ties_y)
    m = min(len(set(xr)), len(set(yr)))
    tau_c = 2 * s / (n * n * (m - 1) / m)
    z = p_value = nan
    if n > 2:
        nn = n * (n - 1.0)
        variance = ((nn * (2 * n + 5) - x1 - y1) / 18 + 2.0 * ties_x * ties_y / nn + x0 * y0 / (9 * nn * (n - 2)))
        if variance > 0:
            z = s / math.sqrt(variance)
            p_value = math.erfc(abs(z) / math.sqrt(2))
    return KendallResult(tau_b, tau_c, z, p_value, n, s, pairs, ties_x, ties_y, ties_both)


def kendall_tau_bruteforce(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(tau-b, tau-c) by looking at every pair: the definition, O(n^2), for checking kendall_tau."""
    n = len(x)
    concordant = discordant = tied_x = tied_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            tied_x += dx == 0
            tied_y += dy == 0
            concordant += dx * dy > 0
            discordant += dx * dy < 0
    pairs = n * (n - 1) // 2
    if pairs in (0, tied_x, tied_y):
        return float("nan"), float("nan")
    tau_b = (concordant - discordant) / math.sqrt((pairs - tied_x) * (pairs - tied_y))
    m = min(len(set(x)), len(set(y)))
    tau_c = 2 * (concordant - discordant) / (n * n * (m - 1) / m)
    return tau_b, tau_c


# ---------------------------------------------------------------------------------------------------
# Flickr8k-Expert
# ---------------------------------------------------------------------------------------------------
@dataclass
class ExpertLine:
    line: int  # 1-based line number in ExpertAnnotations.txt
    image: str  # the judged image's file name
    candidate: str  # "<image>.jpg#<n>", a caption of Flickr8k.token.txt
    scores: tuple[int, int, int]

    @property
    def mean_score(self) -> float:
        return sum(self.scores) / len(self.scores)


def read_token_file(path: Path) -> dict[str, dict[int, str]]:
    """Flickr8k.token.txt: image file name -> caption number -> caption (as written)."""
    captions: dict[str, dict[int, str]] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        key, sep, caption = raw.partition("\t")
        match = _CAPTION_ID.match(key.strip())
        if not sep or match is None or not caption.strip():
            continue
        captions.setdefault(match["image"], {})[int(match["number"])] = caption.strip()
    return captions


def read_expert_annotations(path: Path, captions: dict[str, dict[int, str]]
                            ) -> tuple[list[ExpertLine], dict[str, list[str]]]:
    """The usable lines of ExpertAnnotations.txt and, per reason, the lines left out ("file:line: ...")."""
    lines: list[ExpertLine] = []
    skipped: dict[str, list[str]] = {}

    def skip(reason: str, number: int, text: str) -> None:
        skipped.setdefault(reason, []).append(f"{Path(path).name}:{number}: {text[:100]!r}")

    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        fields = raw.strip().split("\t")
        if len(fields) != 5:
            skip("not 5 tab-separated fields", number, raw)
            continue
        image, candidate = fields[0].strip(), fields[1].strip()
        try:
            scores = tuple(int(f) for f in fields[2:])
        except ValueError:
            skip("scores not integers", number, raw)
            continue
        if not all(1 <= s <= 4 for s in scores):
            skip("score outside 1-4", number, raw)
            continue
        match = _CAPTION_ID.match(candidate)
        if match is None:
            skip("candidate id not <image>#<n>", number, raw)
            continue
        if int(match["number"]) not in captions.get(match["image"], {}):
            skip("candidate caption not in Flickr8k.token.txt", number, raw)
            continue
        own = captions.get(image, {})
        if not [n for n in own if f"{image}#{n}" != candidate]:
            skip("judged image has no reference captions", number, raw)
            continue
        lines.append(ExpertLine(number, image, candidate, scores))  # type: ignore[arg-type]
    return lines, skipped


def _candidate_text(line: ExpertLine, captions: dict[str, dict[int, str]]) -> str:
    image, _, number = line.candidate.rpartition("#")
    return captions[image][int(number)]


def _references(line: ExpertLine, captions: dict[str, dict[int, str]]) -> list[str]:
    own = captions[line.image]
    return [own[n] for n in sorted(own) if f"{line.image}#{n}" != line.candidate]


def score_lines(lines: Sequence[ExpertLine], captions: dict[str, dict[int, str]], tokenizer: str = "auto",
                metrics: Sequence[str] = ("bleu", "meteor", "rouge", "cider")) -> tuple[dict[str, list[float]], dict]:
    """Per-line metric scores ({metric key: [score per line]}) and what produced them."""
    hypotheses = {k: _candidate_text(line, captions) for k, line in enumerate(lines)}
    references = {k: _references(line, captions) for k, line in enumerate(lines)}
    result = score_captions(hypotheses, references, metrics=metrics, tokenizer=tokenizer)
    keys = [key for key in COCO_METRICS if key in result.corpus]
    scores = {key: [result.per_image[k][key] for k in range(len(lines))] for key in keys}
    sentence_bleu, signature = sacrebleu_sentence_scorer()
    scores[SACREBLEU_KEY] = [sentence_bleu(hypotheses[k], references[k]) for k in range(len(lines))]
    info = {"tokenizer": result.tokenizer, "versions": dict(result.versions), "unavailable": dict(result.unavailable),
            "sacrebleu_signature": signature}
    return scores, info


def _correlations(scores: dict[str, list[float]], human: list[float]) -> dict[str, dict]:
    out = {}
    for key, values in scores.items():
        result = kendall_tau(values, human).to_dict()
        result["distinct_values"] = len(set(values))
        out[key] = result
    return out


def _bootstrap(scores: dict[str, list[float]], human: list[float], groups: list[str], resamples: int,
               seed: int) -> dict[str, dict]:
    """95% percentile intervals of tau-b, resampling judged images (all lines of an image together:
    lines of one image share references and are not independent)."""
    by_group: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    names = list(by_group)
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {key: [] for key in scores}
    for _ in range(resamples):
        chosen = [i for _ in names for i in by_group[names[rng.randrange(len(names))]]]
        h = [human[i] for i in chosen]
        for key, values in scores.items():
            tau = kendall_tau([values[i] for i in chosen], h).tau_b
            if not math.isnan(tau):
                draws[key].append(tau)
    out = {}
    for key, values in draws.items():
        values.sort()
        if not values:
            out[key] = {"low": None, "high": None, "resamples": 0}
            continue
        low = values[max(0, int(math.floor(0.025 * (len(values) - 1))))]
        high = values[min(len(values) - 1, int(math.ceil(0.975 * (len(values) - 1))))]
        out[key] = {"low": low, "high": high, "resamples": len(values)}
    return out


def run_validity_study(root: Path, *, limit: int | None = None, tokenizer: str = "auto",
                       metrics: Sequence[str] = ("bleu", "meteor", "rouge", "cider"), bootstrap: int = 0,
                       seed: int = 0, comparison: bool = True) -> dict:
    """Kendall's tau between each metric and the mean expert score on Flickr8k-Expert (see the module
    docstring for the protocol). `limit` keeps the first `limit` usable lines (for quick checks);
    `bootstrap` > 0 adds image-level bootstrap intervals of tau-b; `comparison` adds the protocol of
    the published tables (lines whose candidate is one of the image's own captions removed, each
    expert rating a separate judgement, tau-c beside tau-b), rescored on those lines."""
    root = Path(root)
    expert_path, token_path = root / EXPERT_FILE, root / TOKEN_FILE
    for path in (expert_path, token_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; expected the Flickr8k release's Flickr8k_text folder under "
                                    f"{root}")
    from captioner.metrics.results import sha256_file

    captions = read_token_file(token_path)
    lines, skipped = read_expert_annotations(expert_path, captions)
    total_lines = sum(1 for raw in expert_path.read_text(encoding="utf-8").splitlines() if raw.strip())
    if limit is not None:
        lines = lines[:limit]
    if len(lines) < 3:
        raise ValueError(f"{expert_path}: only {len(lines)} usable line(s); need at least 3")
    self_lines = sum(1 for line in lines if line.candidate.rpartition("#")[0] == line.image)

    scores, info = score_lines(lines, captions, tokenizer, metrics)
    human = [line.mean_score for line in lines]
    main = {
        "lines": len(lines),
        "human_score": "mean of the three expert scores (1-4)",
        "tau": _correlations(scores, human),
    }
    if bootstrap > 0:
        intervals = _bootstrap(scores, human, [line.image for line in lines], bootstrap, seed)
        for key, interval in intervals.items():
            main["tau"][key]["tau_b_95ci"] = interval
    # inter-rater agreement, for scale: each expert column against the mean of the other two
    agreement = []
    for column in range(3):
        one = [line.scores[column] for line in lines]
        others = [(sum(line.scores) - line.scores[column]) / 2 for line in lines]
        agreement.append(kendall_tau(one, others).tau_b)
    main["experts_agreement_tau_b"] = {"per_column": agreement, "mean": sum(agreement) / 3,
                                       "note": "tau-b of each expert-score column against the mean of the other "
                                               "two columns (the columns need not be the same three people)"}

    study = {
        "format": "captioner-metric-validity/1",
        "data": {"root": str(root.resolve()),
                 "files": {EXPERT_FILE: sha256_file(expert_path), TOKEN_FILE: sha256_file(token_path)}},
        "protocol": {
            "lines_in_file": total_lines,
            "lines_used": len(lines),
            "limit": limit,
            "skipped": {reason: {"count": len(items), "examples": items[:5]} for reason, items in skipped.items()},
            "judged_images": len({line.image for line in lines}),
            "candidate_is_own_caption": self_lines,
            "references": "the judged image's captions #0-#4 of Flickr8k.token.txt; a candidate that is one of "
                          "them is left out of its own references (4 remain)",
            "candidate_text": "the candidate caption as written in Flickr8k.token.txt",
            "human_score": "mean of the three expert scores",
            "correlation": "Kendall tau-b (ties corrected; scores tied only when exactly equal), tau-c beside; "
                           "z = S / sd(S) with the tie-corrected variance, p-value two-sided from z (normal "
                           "approximation; underflows to 0 below ~1e-308)",
            "coco_metrics": "pycocoevalcap per-caption scores on PTB-tokenised text; BLEU-n is the per-image "
                            "BLEU of pycocoevalcap's Bleu(4) scorer (its sentence BLEU, no smoothing beyond its "
                            "tiny constants)",
            "cider_idf": f"CIDEr-D document frequencies over the {len(lines)} reference sets of the scored lines "
                         "(one per line, all lines in one batch; an image judged k times counts k times), "
                         f"log({len(lines)}) as the corpus size -- as coco-caption computes it over the images "
                         "it is given",
            "sacrebleu": f"sacreBLEU sentence BLEU on the raw caption text, {info['sacrebleu_signature']}",
            "tokenizer": info["tokenizer"],
        },
        "versions": info["versions"],
        "unavailable": info["unavailable"],
        "mean_expert": main,
    }
    if comparison:
        kept = [line for line in lines if line.candidate.rpartition("#")[0] != line.image]
        if len(kept) >= 3:
            kept_scores, _ = score_lines(kept, captions, tokenizer, metrics)
            # each rating its own judgement: every line three times, once per expert
            ratings = [s for line in kept for s in line.scores]
            repeated = {key: [v for v in values for _ in range(3)] for key, values in kept_scores.items()}
            study["published_protocol"] = {
                "description": "the protocol of the published Flickr8k-Expert tables (SPICE, Anderson et al. 2016; "
                               "CLIPScore, Hessel et al. 2021), as we understand it: lines whose candidate is one "
                               "of the judged image's own captions removed, each of the three expert ratings a "
                               "separate judgement, Kendall tau-c (CLIPScore's table); rescored on the kept lines "
                               "(CIDEr-D document frequencies over their reference sets)",
                "lines": len(kept),
                "judgements": len(ratings),
                "tau": _correlations(repeated, [float(r) for r in ratings]),
            }
    return study
