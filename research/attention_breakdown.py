#!/usr/bin/env python3
"""Attention accuracy on the scenes test split, broken down by word kind (colour, size, shape) and
by which object of the caption the word describes (first, second, third).

    python -m research.attention_breakdown RUN/model [--split test]

Reference captions are fed word by word with the glimpse at the prior's argmax (as
`captioner evaluate` scores attention accuracy); a word counts as correct when that argmax is the
cell of the object it describes.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

import captioner
from captioner.config import load_config
from captioner.data.datasets import load_dataset
from captioner.data.scenes import COLOURS, SIZES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--split", default="test", choices=("val", "test"))
    args = parser.parse_args()
    model = captioner.load(args.model)
    config = load_config(args.model / "training_config.yaml", ["data.scenes.train_size=1"])
    split = load_dataset(config.data)[args.split]
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    with torch.no_grad():
        batch = split.batch(range(len(split)), model.vocabulary, None)
        features = model.encode_inputs(batch.inputs, batch.input_kind)[batch.image_index]
        mode = "soft" if model.decoder.soft else "argmax"
        looked = model.decoder.forward_stepwise(features, batch.text.inputs, mode).attention_logits.argmax(-1)
    text = batch.text
    for n in range(len(text)):
        objects: list[int] = []
        for t in range(int(text.lengths[n])):
            cell = int(text.word_cells[n, t])
            if cell < 0:
                continue
            if cell not in objects:
                objects.append(cell)
            word = model.vocabulary.words[int(text.targets[n, t])]
            kind = "colour" if word in COLOURS else "size" if word in SIZES else "shape"
            hit = int(looked[n, t]) == cell
            for key in ("all", kind, f"object {len(objects)}"):
                counts[key][0] += hit
                counts[key][1] += 1
    result = {key: {"accuracy": hits / total, "words": total} for key, (hits, total) in sorted(counts.items())}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
