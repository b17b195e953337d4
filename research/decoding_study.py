"""Which decoding settings score best on a split: beam size x attention mode (x length penalty,
trigram blocking), coco-caption BLEU / ROUGE-L / CIDEr of each.

    python -m research.decoding_study MODEL --config eval/flickr8k/wsram.yaml --split val --out study.json [--write-best]
    python -m research.decoding_study MODEL --config C --split test --settings 3:argmax,3:marginal --captions-dir DIR

--settings replaces the default grid by BEAM:MODE pairs; --captions-dir writes each setting's
captions as DIR/captions-b{BEAM}-{MODE}.json ([{"image_id", "caption"}], for METEOR elsewhere).

Reads the split through the config's data section (a feature cache for pretrained encoders). The
best setting by CIDEr (ties: BLEU-4) is printed and, with --write-best, written as the model's
decoding.json. Sampled attention uses a fixed seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import captioner
from captioner.config import load_config
from captioner.data.datasets import load_dataset
from captioner.evaluation import generate
from captioner.metrics.coco import score_captions

GRID = [dict(beam_size=b, attention_mode=m) for b in (1, 3, 5) for m in ("argmax", "sample", "expected", "marginal")] + [
    dict(beam_size=3, attention_mode="argmax", length_penalty=1.0),
    dict(beam_size=3, attention_mode="argmax", block_trigrams=True),
    dict(beam_size=5, attention_mode="argmax", length_penalty=1.0, block_trigrams=True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--split", default="val")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--write-best", action="store_true")
    parser.add_argument("--settings", help="BEAM:MODE,... instead of the default grid")
    parser.add_argument("--captions-dir", type=Path)
    args = parser.parse_args()
    grid = GRID
    if args.settings:
        try:
            grid = [dict(beam_size=int(b), attention_mode=m) for b, m in
                    (item.split(":") for item in args.settings.split(","))]
        except ValueError:
            parser.error(f"--settings {args.settings!r}: expected BEAM:MODE,... (e.g. 3:argmax,3:marginal)")
    config = load_config(args.config, args.overrides)
    device = torch.device(args.device)
    model = captioner.load(args.model, device)
    split = load_dataset(config.data, config.model)[args.split]
    if hasattr(split.inputs, "loaded") and split.inputs.loaded is not None:
        split.inputs.loaded = split.inputs.loaded.to(device)
    references = dict(zip(split.image_ids, split.captions))
    rows = []
    for settings in grid:
        decode = dataclasses.replace(model.decoding, **settings)
        start = time.perf_counter()
        generator = torch.Generator(device=device).manual_seed(1234)
        captions = generate(model, split, decode, device, generator=generator)
        seconds = time.perf_counter() - start
        hypotheses = {i: c.text for i, c in zip(split.image_ids, captions)}
        if args.captions_dir:
            args.captions_dir.mkdir(parents=True, exist_ok=True)
            name = f"captions-b{decode.beam_size}-{decode.attention_mode}"
            name += "-lp" if decode.length_penalty else ""
            name += "-tri" if decode.block_trigrams else ""
            (args.captions_dir / f"{name}.json").write_text(json.dumps(
                [{"image_id": i, "caption": t} for i, t in hypotheses.items()], indent=0))
        scores = score_captions(hypotheses, references, metrics=("bleu", "rouge", "cider"), tokenizer="auto",
                                allow_empty=True)
        row = {**dataclasses.asdict(decode), **scores.corpus, "decode_seconds": seconds,
               "mean_words": sum(len(c.words) for c in captions) / len(captions), "tokenizer": scores.tokenizer}
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        rows.append(row)
    best = max(rows, key=lambda r: (r["CIDEr"], r["Bleu_4"]))
    keys = {f.name for f in dataclasses.fields(model.decoding)}
    best_decoding = {k: best[k] for k in keys}
    args.out.write_text(json.dumps({"model": str(args.model), "split": args.split, "rows": rows,
                                    "best_by_cider": best_decoding}, indent=2))
    print("best:", best_decoding)
    if args.write_best:
        (args.model / "decoding.json").write_text(json.dumps(best_decoding, indent=2))


if __name__ == "__main__":
    main()
