"""Tokenisation and the word vocabulary."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence

from captioner.data.ptb import ptb_tokenize

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

@functools.lru_cache(maxsize=1_000_000)
def _tokens(text: str) -> tuple[str, ...]:
    return tuple(ptb_tokenize(text).split())


def tokenize(text: str) -> list[str]:
    """The words of `text` exactly as coco-caption's evaluation sees them: PTB-tokenised, lower-cased,
    punctuation tokens dropped (captioner.data.ptb, the pure-Python equivalent of the Java
    tokenizer). One tokenisation for the vocabulary, training targets and scoring. Cached: the
    training loop encodes the same captions every epoch."""
    return list(_tokens(text))


class Vocabulary:
    """Maps words to ids. Ids 0..3 are <pad>, <bos>, <eos>, <unk>."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}, got {words[:4]}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary must not repeat a word")
        self.words = words
        self.index = {word: i for i, word in enumerate(words)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocabulary":
        """Words seen at least `min_count` times, most frequent first (ties alphabetical)."""
        counts = Counter(word for caption in captions for word in tokenize(caption))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIAL_TOKENS) + [w for w in kept if w not in SPECIAL_TOKENS])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """Token ids of `caption` (at most `max_length` words), followed by <eos>."""
        ids = [self.index.get(word, self.unk_id) for word in tokenize(caption)]
        if max_length is not None:
            ids = ids[:max_length]
        return ids + [self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Words of `ids` up to the first <eos>, special tokens dropped."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= len(SPECIAL_TOKENS):
                words.append(self.words[i])
        return " ".join(words)
