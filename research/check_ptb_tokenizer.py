"""Compare the pure-Python PTB tokenizer with pycocoevalcap's Java PTBTokenizer on real captions.

Each data set is tokenised as one batch by both (as pycocoevalcap tokenises one batch), and the
outputs are compared caption by caption after coco's punctuation removal.

    python -m research.check_ptb_tokenizer --out check_ptb.json
    python -m research.check_ptb_tokenizer --flickr8k-root ../shared/data/flickr8k --coco-root ''  # Flickr8k only

Prints and writes (--out) per data set: the number of captions, how many differ, the first
differences and timings. Exit status: 0 when nothing differs, 1 when something does, 2 when Java or
the data is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from captioner.data.ptb import java_available, java_ptb_tokenize_many, ptb_tokenize_many

SHARED = REPO.parent / "shared" / "data"


def flickr8k_captions(root: Path) -> list[tuple[str, str]]:
    """(key, caption) for every line of Flickr8k.token.txt, in file order ("<image>.jpg#<n>")."""
    path = root / "Flickr8k_text" / "Flickr8k.token.txt"
    out = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, _, caption = line.partition("\t")
            out.append((key, caption))
    return out


def coco_captions(root: Path) -> list[tuple[str, str]]:
    """(annotation id, caption) for every annotation of captions_val2017.json, in file order."""
    with open(root / "annotations" / "captions_val2017.json", encoding="utf-8") as handle:
        data = json.load(handle)
    return [(str(a["id"]), a["caption"]) for a in data["annotations"]]


def compare(name: str, items: list[tuple[str, str]], show: int) -> dict:
    texts = [caption for _, caption in items]
    start = time.perf_counter()
    python = ptb_tokenize_many(texts)
    python_s = time.perf_counter() - start
    start = time.perf_counter()
    java = java_ptb_tokenize_many(texts)
    java_s = time.perf_counter() - start
    differ = [i for i, (a, b) in enumerate(zip(python, java)) if a != b]
    result = {
        "captions": len(texts),
        "differ": len(differ),
        "python_seconds": round(python_s, 3),
        "java_seconds": round(java_s, 3),
        "first_differences": [
            {"key": items[i][0], "caption": texts[i], "python": python[i], "java": java[i]} for i in differ[:show]
        ],
    }
    print(f"{name}: {len(differ)} of {len(texts)} captions differ "
          f"(Python {python_s:.2f} s, Java {java_s:.2f} s)")
    for d in result["first_differences"]:
        print(f"  {d['key']}: {d['caption']!r}\n    python: {d['python']!r}\n    java:   {d['java']!r}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flickr8k-root", default=str(SHARED / "flickr8k"),
                        help="Flickr8k release folder (with Flickr8k_text/); '' to skip")
    parser.add_argument("--coco-root", default=str(SHARED / "coco-mini"),
                        help="folder with annotations/captions_val2017.json; '' to skip")
    parser.add_argument("--limit", type=int, default=0, help="only the first N captions of each set (0: all)")
    parser.add_argument("--show", type=int, default=20, help="how many differences to print and keep")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    if not java_available():
        print("Java is not available: nothing to compare the Python tokenizer against", file=sys.stderr)
        return 2
    sets = []
    if args.flickr8k_root:
        sets.append(("flickr8k", flickr8k_captions, Path(args.flickr8k_root)))
    if args.coco_root:
        sets.append(("coco-mini", coco_captions, Path(args.coco_root)))
    results: dict = {"datasets": {}}
    for name, reader, root in sets:
        try:
            items = reader(root)
        except FileNotFoundError as error:
            print(f"{name}: data not found ({error})", file=sys.stderr)
            return 2
        if args.limit:
            items = items[: args.limit]
        results["datasets"][name] = compare(name, items, args.show)
    results["total_captions"] = sum(r["captions"] for r in results["datasets"].values())
    results["total_differ"] = sum(r["differ"] for r in results["datasets"].values())
    try:
        from importlib import metadata

        results["pycocoevalcap"] = metadata.version("pycocoevalcap")
    except Exception:  # noqa: BLE001 - informational only
        pass
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0 if results["total_differ"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
