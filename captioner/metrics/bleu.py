"""Corpus BLEU-1..4 as coco-caption defines it (pycocoevalcap's scorer, 'closest' reference length)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu

from captioner.data.vocabulary import tokenize

BLEU_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")


def corpus_bleu(hypotheses: Mapping[object, str], references: Mapping[object, Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4 in [0, 1] under coco-caption's key names.

    hypotheses: image id -> generated caption; references: image id -> reference captions. Both
    are tokenised by `captioner.data.vocabulary.tokenize` (lower case, punctuation dropped)."""
    if set(hypotheses) != set(references):
        missing = sorted(map(str, set(references) ^ set(hypotheses)))[:5]
        raise ValueError(f"hypotheses and references must cover the same images; differing ids: {missing}")
    if not hypotheses:
        raise ValueError("no captions to score")
    res = {key: [" ".join(tokenize(text))] for key, text in hypotheses.items()}
    gts = {}
    for key, refs in references.items():
        if not refs:
            raise ValueError(f"image {key!r} has no reference captions")
        gts[key] = [" ".join(tokenize(r)) for r in refs]
    with contextlib.redirect_stdout(io.StringIO()):  # the scorer prints its n-gram counts
        scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {key: float(value) for key, value in zip(BLEU_KEYS, scores)}
