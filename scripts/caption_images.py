"""Caption your own images with a saved model: the same as `captioner caption`.

    python scripts/caption_images.py MODEL photo.jpg folder/ 'more/*.png' [--output captions.jsonl]
        [--attention-dir pictures/] [--beam-size 3] [--block-trigrams] [--attention-mode argmax] [--device cuda]

Writes one JSON line per image (file, caption, and for every word its location, the location's
probability and the word's probability); unreadable files are reported and skipped.
"""

import sys

from captioner.cli import main

if __name__ == "__main__":
    sys.exit(main(["caption", *sys.argv[1:]]))
