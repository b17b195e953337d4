"""How much the attention moves within a caption: for each image, the distinct locations the prior's
argmax visits over the words, and the share of words at the caption's most visited location.

    python -m research.attention_spread MODEL IMAGES... [--limit 200] [--out spread.json]

A model whose glimpse follows the words visits several cells per caption; one that looks at one
salient cell for every word visits one (a known failure of hard attention: Show-Attend-Tell's maps
often don't localise).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path

import captioner
from captioner.data.images import find_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attention-mode", default="argmax", choices=("argmax", "marginal"),
                        help="marginal: the locations are each word's posterior mode given the word")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = captioner.load(args.model, args.device)
    paths = find_images(args.images)[: args.limit]
    captions = model.caption(paths, beam_size=args.beam_size, attention_mode=args.attention_mode)
    distinct, modal_share, words = [], [], 0
    for caption in captions:
        if not caption.locations:
            continue
        counts = Counter(caption.locations)
        distinct.append(len(counts))
        modal_share.append(counts.most_common(1)[0][1] / len(caption.locations))
        words += len(caption.locations)
    report = {
        "model": str(args.model), "images": len(captions), "words": words, "grid_locations": model.num_locations,
        "decoding": dataclasses.asdict(dataclasses.replace(model.decoding, beam_size=args.beam_size,
                                                           attention_mode=args.attention_mode)),
        "mean_distinct_locations_per_caption": sum(distinct) / len(distinct),
        "captions_with_one_location": sum(d == 1 for d in distinct) / len(distinct),
        "mean_share_of_words_at_the_modal_location": sum(modal_share) / len(modal_share),
        "distinct_locations_histogram": dict(sorted(Counter(distinct).items())),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
