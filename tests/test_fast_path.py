"""The fast training path computes the same numbers as the plain one (tiny model, CPU, float64/32).

- one grid per image with `rows` (the fast path) against one grid per caption (the plain path);
- the reader without packing against pack_padded_sequence;
- the torch.compile'd kernels of captioner/models/fused.py against their eager form.
"""

from __future__ import annotations

import warnings

import pytest

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from captioner.config import EstimatorConfig, ModelConfig
from captioner.data.batching import CaptionText
from captioner.data.vocabulary import SPECIAL_TOKENS, Vocabulary
from captioner.estimators import ReinforceBaseline, compute_loss
from captioner.models import fused
from captioner.models.captioner import CaptionModel


def _tiny(attention: str = "hard", proposal: str = "factorised", glimpses: int = 1) -> CaptionModel:
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=6, hidden_dim=8, attention_dim=5, proposal_hidden_dim=4,
                         attention=attention, proposal=proposal, uniform_attention_init=False,
                         initial_state_dropout=0.0, glimpses_per_word=glimpses)  # layouts compared on the same model, no random h_0
    vocabulary = Vocabulary(list(SPECIAL_TOKENS) + [f"w{i}" for i in range(7)])
    return CaptionModel(config, vocabulary, 24).double()


def _text(lengths: list[int], generator: torch.Generator) -> CaptionText:
    steps = max(lengths) + 1
    targets = torch.randint(4, 11, (len(lengths), steps), generator=generator)
    position = torch.arange(steps)
    words = torch.tensor(lengths).unsqueeze(1)
    targets[position == words] = 2
    targets[position > words] = 0
    inputs = torch.cat([torch.ones(len(lengths), 1, dtype=torch.long), targets[:, :-1]], 1)
    inputs[inputs == 2] = 0
    mask = targets != 0
    return CaptionText(inputs, targets, mask, mask.sum(1))


def _loss_and_grads(model, features, text, estimator, rows):
    model.zero_grad()
    generator = torch.Generator().manual_seed(5)
    result = compute_loss(model, features, text, estimator, ReinforceBaseline(), generator, rows)
    result.loss.backward()
    return result.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_one_grid_per_image_equals_one_grid_per_caption():
    generator = torch.Generator().manual_seed(1)
    text = _text([3, 1, 4, 2, 4, 3], generator)
    rows = torch.tensor([0, 0, 1, 2, 2, 2])
    for name, attention, proposal in (("wsram", "hard", "factorised"), ("var", "hard", "none"),
                                      ("soft", "soft", "none")):
        model = _tiny(attention, proposal)
        images = model.encoder(torch.randn(3, 3, 24, 24, generator=generator).double()).detach()
        estimator = EstimatorConfig(name=name, samples=3)
        fast_loss, fast_grads = _loss_and_grads(model, images, text, estimator, rows)
        plain_loss, plain_grads = _loss_and_grads(model, images[rows], text, estimator, None)
        torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-12, atol=1e-12)
        assert fast_grads.keys() == plain_grads.keys()
        for key in fast_grads:
            torch.testing.assert_close(fast_grads[key], plain_grads[key], rtol=1e-10, atol=1e-12, msg=key)


def test_reader_without_packing_equals_packed_reader():
    model = _tiny()
    q = model.proposal
    generator = torch.Generator().manual_seed(2)
    text = _text([1, 4, 2, 3], generator)
    ours = q.read_caption(text.targets, text.lengths)
    packed = pack_padded_sequence(q.embedding(text.targets), text.lengths, batch_first=True, enforce_sorted=False)
    reference, _ = pad_packed_sequence(q.reader(packed)[0], batch_first=True, total_length=text.targets.shape[1])
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_reader_keeps_cudnns_weight_compaction_notice_out_of_the_log(monkeypatch, recwarn):
    """On a GPU, cuDNN warns that the reader's one-direction weights are not one contiguous buffer
    (it copies them, as intended); that notice stays out of the user's log, any other warning does not."""
    model = _tiny()
    text = _text([1, 4, 2, 3], torch.Generator().manual_seed(2))
    lstm = torch.lstm

    def noisy(*args, **kwargs):
        warnings.warn("RNN module weights are not part of single contiguous chunk of memory. This means ...")
        warnings.warn("something else about the reader")
        return lstm(*args, **kwargs)

    monkeypatch.setattr(torch, "lstm", noisy)
    model.proposal.read_caption(text.targets, text.lengths)
    assert [str(w.message) for w in recwarn] == ["something else about the reader"] * 2  # two directions


@pytest.mark.slow
def test_compiled_kernels_equal_eager_ones():
    torch.manual_seed(0)
    projected = torch.randn(3, 5, 4, requires_grad=True)
    query = torch.randn(6, 7, 4, requires_grad=True)
    weight = torch.randn(4, requires_grad=True)
    bias = torch.randn((), requires_grad=True)
    rows = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.randn(6, 7, 11, requires_grad=True)
    targets = torch.randint(11, (6, 7))
    inputs = [projected, query, weight, bias, logits]

    def run():
        scores = fused.additive_scores(projected, query, weight, bias, rows)
        words = fused.target_log_probs(logits, targets)
        total = scores.square().sum() + words.sum()
        return scores.detach(), words.detach(), torch.autograd.grad(total, inputs)

    eager = run()
    with fused.compiled_kernels():
        compiled = run()
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled[2], eager[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
