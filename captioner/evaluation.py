"""Scoring a model on a split: decoded-caption BLEU, the likelihood bound, attention accuracy."""

from __future__ import annotations

import torch

from captioner.config import DecodeConfig
from captioner.data.datasets import CaptionSplit
from captioner.models.decode import GeneratedCaption, beam_search
from captioner.distributed import Distributed
from captioner.estimators import likelihood_bound
from captioner.metrics.bleu import corpus_bleu


def _chunks(images: range, size: int):
    for start in range(0, len(images), size):
        yield list(images[start:start + size])


@torch.no_grad()
def generate(model, split: CaptionSplit, decode: DecodeConfig, device, batch_size: int = 64,
             generator: torch.Generator | None = None, images: range | None = None) -> list[GeneratedCaption]:
    """Decode every image of `split` (or those of `images`) with the prior (real decoding, not
    teacher forcing)."""
    results = []
    for indices in _chunks(range(len(split)) if images is None else images, batch_size):
        features = model.encode_inputs(split.inputs[indices].to(device), split.input_kind)
        results.extend(beam_search(model, features, decode, generator))
    return results


@torch.no_grad()
def attention_accuracy(model, split: CaptionSplit, device, batch_size: int = 64,
                       distributed: Distributed | None = None) -> float:
    """Fraction of object words whose argmax prior location is the object's ground-truth cell.

    Reference captions are fed word by word; each glimpse is taken where pi_t peaks (the
    test-time attention), so the score measures where the model looks while saying the word.
    With `distributed`, each process counts its share of the images and the counts are summed."""
    if split.word_cells is None:
        return float("nan")
    distributed = distributed or Distributed()
    correct = total = 0
    for indices in _chunks(distributed.share(len(split)), batch_size):
        batch = split.batch(indices, model.vocabulary, None).to(device)
        features = model.encode_inputs(batch.inputs, batch.input_kind)[batch.image_index]
        mode = "soft" if model.decoder.soft else "argmax"
        output = model.decoder.forward_stepwise(features, batch.text.inputs, mode)
        looked = output.attention_logits.argmax(-1)
        cells = batch.text.word_cells
        scored = cells >= 0
        correct += int((looked[scored] == cells[scored]).sum())
        total += int(scored.sum())
    correct, total = distributed.all_reduce(torch.tensor([correct, total], device=device)).tolist()
    return correct / max(total, 1)


@torch.no_grad()
def mean_bound(model, split: CaptionSplit, samples: int, proposal: str, device, seed: int = 1234,
               batch_size: int = 32, distributed: Distributed | None = None,
               images: int | None = None) -> dict[str, float]:
    """Mean L_K over all reference captions of `split` (of its first `images` images, if given),
    per caption and per word (nats).

    A private generator keeps validation from touching the training RNG stream. With `distributed`,
    each process bounds its share of the images (drawing from seed + rank) and the sums are added."""
    distributed = distributed or Distributed()
    generator = torch.Generator(device=device).manual_seed(seed + distributed.rank)
    total = words = 0.0
    count = 0
    count_images = len(split) if images is None else min(images, len(split))
    for indices in _chunks(distributed.share(count_images), batch_size):
        batch = split.batch(indices, model.vocabulary, None).to(device)
        features = model.encode_inputs(batch.inputs, batch.input_kind)[batch.image_index]
        bound = likelihood_bound(model, features, batch.text, samples, proposal, generator)
        total += float(bound.sum())
        words += float(batch.text.lengths.sum())
        count += len(bound)
    sums = distributed.all_reduce(torch.tensor([total, words, count], dtype=torch.float64, device=device))
    total, words, count = sums.tolist()
    return {"bound": total / count, "bound_per_word": total / words}


@torch.no_grad()
def evaluate_split(model, split: CaptionSplit, decode: DecodeConfig, device, bound_samples: int = 20,
                   seed: int = 1234, full_metrics: bool = False,
                   distributed: Distributed | None = None) -> tuple[dict, list[GeneratedCaption]]:
    """All scores of `model` on `split` and the generated captions. The model is put in eval mode.

    BLEU-1..4 always; with `full_metrics` also METEOR, ROUGE-L and CIDEr-D through coco-caption's
    scorers (captioner.metrics.coco), with the tokenizer used and any metric that was unavailable.

    With `distributed` (several processes, each calling this), each process decodes and bounds its
    share of the images; the captions are gathered, rank 0 scores them all, and every process
    returns the same scores and captions."""
    distributed = distributed or Distributed()
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed + distributed.rank)
    captions = distributed.gather(generate(model, split, decode, device, generator=generator,
                                           images=distributed.share(len(split))))
    scores = None
    if distributed.is_main:
        hypotheses = {i: c.text for i, c in zip(split.image_ids, captions)}
        references = {i: refs for i, refs in zip(split.image_ids, split.captions)}
        if full_metrics:
            from captioner.metrics.coco import score_captions

            result = score_captions(hypotheses, references, allow_empty=True)
            scores = dict(result.corpus)
            scores["tokenizer"] = result.tokenizer
            if result.unavailable:
                scores["unavailable_metrics"] = dict(result.unavailable)
        else:
            scores = corpus_bleu(hypotheses, references)
    scores = distributed.broadcast(scores)
    if split.word_cells is not None:
        scores["attention_accuracy"] = attention_accuracy(model, split, device, distributed=distributed)
    prior = mean_bound(model, split, bound_samples, "prior", device, seed, distributed=distributed)
    scores["bound_prior"] = prior["bound"]
    scores["bound_prior_per_word"] = prior["bound_per_word"]
    if model.proposal is not None:
        scores["bound_proposal"] = mean_bound(model, split, bound_samples, "model", device, seed,
                                              distributed=distributed)["bound"]
    model.train(was_training)
    return scores, captions
