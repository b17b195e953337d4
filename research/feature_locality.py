"""How local are a backbone's grid cells? The share of the feature variance that lies between the
cells of one image, against the share that lies between images.

    python -m research.feature_locality IMAGES... [--grids block15@224,block15@448,block10@224] [--limit 100]
        [--out locality.json]

For each grid (EfficientNet-Lite0 layer @ input size), over the images: the total variance of the
cell vectors (summed over channels) splits exactly into the variance of the images' mean vectors
(between images: what the whole image says) and the mean variance of the cells around their
image's mean (within an image: what tells one location from another). A hard-attention decoder
can only gain from where it looks by the within-image part: with cells that each see most of the
image, it is small, the caption's likelihood hardly depends on the location, and the posterior over
locations stays at the prior (eval/flickr8k/attention-study/README.md). Also reports the mean cosine
similarity of two cells of one image and of one cell position across images, after removing the
data set's mean vector.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from captioner.data.images import read_image
from captioner.models.backbones import build_backbone


def locality(features: torch.Tensor) -> dict:
    """features (N, L, D) float64 -> the variance split and cosine similarities."""
    n, cells, _ = features.shape
    centred = features - features.mean((0, 1), keepdim=True)
    image_means = centred.mean(1, keepdim=True)  # (N, 1, D)
    total = centred.pow(2).sum(-1).mean()
    between = image_means.pow(2).sum(-1).mean()
    within = (centred - image_means).pow(2).sum(-1).mean()
    unit = torch.nn.functional.normalize(centred, dim=-1)
    gram = unit @ unit.transpose(1, 2)  # (N, L, L)
    off_diagonal = ~torch.eye(cells, dtype=torch.bool)
    same_image = gram[:, off_diagonal].mean()
    per_cell = unit.transpose(0, 1)  # (L, N, D)
    across = per_cell @ per_cell.transpose(1, 2)  # (L, N, N)
    off_images = ~torch.eye(n, dtype=torch.bool)
    same_cell = across[:, off_images].mean()
    return {"images": n, "cells": cells, "channels": features.shape[-1],
            "total_variance": float(total), "between_images": float(between), "within_image": float(within),
            "within_image_share": float(within / total),
            "cosine_two_cells_one_image": float(same_image), "cosine_one_cell_two_images": float(same_cell)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--grids", default="block15@224,block15@448,block10@224")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    paths = args.images[:args.limit]
    report = {"images": [str(p.name) for p in paths], "grids": {}}
    torch.set_grad_enabled(False)
    for grid in args.grids.split(","):
        layer, size = grid.split("@")
        backbone = build_backbone("efficientnet-lite0", layer, int(size))
        start = time.perf_counter()
        chunks = []
        for begin in range(0, len(paths), args.batch_size):
            pixels = np.stack([read_image(p, int(size)) for p in paths[begin:begin + args.batch_size]])
            images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
            chunks.append(backbone(backbone.preprocess(images)).double())
        result = locality(torch.cat(chunks))
        result["grid"] = f"{backbone.spec.grid}x{backbone.spec.grid}x{backbone.spec.channels}"
        result["seconds"] = round(time.perf_counter() - start, 1)
        report["grids"][grid] = result
        print(grid, json.dumps(result), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
