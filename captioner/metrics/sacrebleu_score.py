"""sacreBLEU beside coco-caption's BLEU: a *different tokenisation*, reported with its signature.

coco-caption's ``Bleu_1``..``Bleu_4`` score PTB-tokenised, lower-cased captions with punctuation
removed. sacreBLEU (Post, 2018) scores the raw text with its own tokenizer -- here its default,
``13a`` (the mteval-v13a rules: punctuation split off and kept, case kept) -- and reports BLEU-4 on a
0-100 scale. The two numbers are not comparable; the sacreBLEU one comes with the signature that
says exactly how it was computed, which is what makes it reproducible elsewhere.

Several references per image: sacreBLEU takes reference *streams*; reference k of every image goes
into stream k. Images with fewer references than the most any image has are padded with ``None``,
which sacreBLEU skips (its signature then says ``nrefs:var``). Clipping uses the maximum count over
all references of the image and the brevity penalty the closest reference length -- the same
multi-reference rules as coco-caption's BLEU (ties go to the shorter reference in both).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["SACREBLEU_LABEL", "sacrebleu_corpus", "sacrebleu_sentence_scorer"]

SACREBLEU_LABEL = ("sacreBLEU corpus BLEU-4, 0-100, tokenize=13a on the raw (cased, punctuated) captions: a "
                   "DIFFERENT tokenisation from coco-caption's Bleu_1..4 (PTB, lower-cased, punctuation "
                   "removed); compare it only with sacreBLEU numbers of the same signature")


def _streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-image reference lists -> sacreBLEU reference streams, padded with None."""
    most = max((len(refs) for refs in references), default=0)
    if most == 0:
        raise ValueError("sacreBLEU needs at least one reference per image")
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(most)]


def sacrebleu_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """sacreBLEU corpus BLEU (default settings: 13a, cased, exp smoothing) of one hypothesis per image
    against all of that image's references. Returns a JSON-ready dict with the score (0-100), its
    signature, the n-gram precisions, brevity penalty and lengths, and how references were handled."""
    from sacrebleu import __version__ as version
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no captions to score")
    counts = [len(refs) for refs in references]
    if min(counts) == 0:
        raise ValueError("sacreBLEU needs at least one reference per image")
    # force=True only silences sacreBLEU's warning about lines ending in " ." (already tokenised text, as
    # Flickr8k's captions are; the score is the same); the count goes into the report instead
    bleu = BLEU(force=True)
    tokenised_period = sum(1 for h in hypotheses if h.endswith(" ."))
    result = bleu.corpus_score(list(hypotheses), _streams(references))
    return {
        "label": SACREBLEU_LABEL,
        "score": float(result.score),
        "signature": str(bleu.get_signature()),
        "precisions": [float(p) for p in result.precisions],
        "bp": float(result.bp),
        "sys_len": int(result.sys_len),
        "ref_len": int(result.ref_len),
        "references_per_image": {"min": min(counts), "max": max(counts)},
        "multi_reference": "all references of each image, as sacreBLEU reference streams (reference k of every "
                           "image in stream k; images with fewer references padded with None, which sacreBLEU "
                           "skips); clipping by the max count over the image's references, brevity penalty "
                           "from the closest reference length",
        "hypotheses_ending_in_tokenised_period": tokenised_period,
        "version": version,
    }


def sacrebleu_sentence_scorer():
    """(score(hypothesis, references) -> sentence BLEU in 0-100, signature): sacreBLEU's sentence-level
    BLEU with its defaults for sentences (13a, cased, exp smoothing, effective order)."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True, force=True)

    def score(hypothesis: str, references: Sequence[str]) -> float:
        return float(bleu.sentence_score(hypothesis, list(references)).score)

    score("a", ["a"])  # the signature is complete only after a first call; its nrefs is that call's
    fields = [f for f in str(bleu.get_signature()).split("|") if not f.startswith("nrefs:")]
    return score, "|".join(["nrefs:per-sentence"] + fields)
