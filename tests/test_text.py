"""Tokenisation, vocabulary and padding of captions."""

from __future__ import annotations

import math

import pytest
import torch

from captioner.data.batching import encode_captions
from captioner.data.vocabulary import Vocabulary, tokenize
from captioner.metrics.bleu import corpus_bleu


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A dog, running; on the 'beach'.") == ["a", "dog", "running", "on", "the", "beach"]
    assert tokenize("  ") == []


def test_vocabulary_threshold_order_and_round_trip():
    vocabulary = Vocabulary.build(["a red circle", "a blue circle", "a red square"], min_count=2)
    assert vocabulary.words == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "circle", "red"]
    ids = vocabulary.encode("A red square")
    assert ids == [4, 6, vocabulary.unk_id, vocabulary.eos_id]
    assert vocabulary.decode(ids) == "a red"  # <unk> is dropped
    assert vocabulary.encode("a red circle", max_length=2) == [4, 6, vocabulary.eos_id]
    with pytest.raises(ValueError):
        Vocabulary(["a", "b"])


def test_encode_captions_pads_and_masks():
    vocabulary = Vocabulary.build(["a red circle", "a square"])
    text = encode_captions(["a red circle", "a"], vocabulary, word_cells=[[-1, 4, 4], [-1]])
    assert text.targets.shape == (2, 4)
    assert text.lengths.tolist() == [4, 2]
    assert text.inputs[:, 0].tolist() == [vocabulary.bos_id] * 2
    assert torch.equal(text.inputs[0, 1:], text.targets[0, :-1])
    assert text.mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert text.targets[1].tolist() == [vocabulary.index["a"], vocabulary.eos_id, 0, 0]
    assert text.word_cells.tolist() == [[-1, 4, 4, -1], [-1, -1, -1, -1]]
    repeated = text.repeat(3)
    assert repeated.targets.shape == (6, 4) and torch.equal(repeated.targets[2], text.targets[0])


def test_bleu_matches_coco_caption_definition():
    refs = {1: ["a red circle at the top", "there is a red circle"], 2: ["a blue square", "one blue square"]}
    perfect = corpus_bleu({1: "a red circle at the top", 2: "a blue square"}, refs)
    assert perfect["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    partial = corpus_bleu({1: "a red circle", 2: "a green square"}, refs)
    # 6 unigrams of which 5 match; brevity penalty with closest reference lengths 5 and 3 -> r = 8, c = 6
    assert partial["Bleu_1"] == pytest.approx(5 / 6 * math.exp(1 - 8 / 6), rel=1e-9)
    assert 0.0 <= partial["Bleu_4"] < partial["Bleu_1"]
    with pytest.raises(ValueError, match="same images"):
        corpus_bleu({1: "a"}, refs)
