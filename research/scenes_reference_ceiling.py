#!/usr/bin/env python3
"""How high BLEU can go on the scenes test split: each reference scored against the other four
(leave-one-out, as a second annotator would score), and a fixed-template caption that names the
right objects in the right order ("the image shows a small red circle and a blue square").

    python -m research.scenes_reference_ceiling [--test-size 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import json

from captioner.data.scenes import ScenesSpec, make_scene_splits
from captioner.metrics.bleu import corpus_bleu


def listing(example, lead: str, sizes: bool) -> str:
    objects = sorted(example.objects, key=lambda o: o.cell)
    phrases = [" ".join(["a"] + ([o.size] if sizes else []) + [o.colour, o.shape]) for o in objects]
    text = phrases[0] if len(phrases) == 1 else " ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{lead} {text}".strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    test = make_scene_splits(ScenesSpec(train=1, val=1, test=args.test_size, seed=args.seed))["test"]
    result = {}
    for i in range(5):
        result[f"reference {i} vs the other four"] = corpus_bleu(
            {e.image_id: e.captions[i] for e in test},
            {e.image_id: e.captions[:i] + e.captions[i + 1:] for e in test})["Bleu_4"]
    for lead in ("", "the image shows"):
        for sizes in (True, False):
            name = f"template '{lead or '-'}', sizes {'kept' if sizes else 'dropped'}"
            result[name] = corpus_bleu({e.image_id: listing(e, lead, sizes) for e in test},
                                       {e.image_id: e.captions for e in test})["Bleu_4"]
    print(json.dumps({"Bleu_4": result}, indent=2))


if __name__ == "__main__":
    main()
