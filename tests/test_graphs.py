"""CUDA graphs of the training update (captioner/graphs.py).

On the CPU: which configurations may be captured, and the properties a captured update relies on
(values it keeps between updates change in place; the learning rate can live in a tensor). On a
machine with a GPU: a replayed update equals the eager one (skipped here without CUDA; the GPU
check with the Flickr8k shapes is benchmarks/check_graphs.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from captioner.config import EstimatorConfig, load_config
from captioner.estimators import ReinforceBaseline
from captioner.graphs import GraphedUpdates, graphable
from captioner.step import make_optimizer, set_learning_rate, training_update
from tests.test_fast_path import _text, _tiny


def _eager_result(model, optimizer) -> tuple[list, list, list]:
    """After an eager update: the parameters, their gradients and Adam's second moments."""
    params = list(model.parameters())
    return ([p.detach().clone() for p in params], [None if p.grad is None else p.grad.detach().clone() for p in params],
            [optimizer.state[p]["exp_avg_sq"].clone() if "exp_avg_sq" in optimizer.state.get(p, {}) else None
             for p in params])


def _assert_same_update(model, eager: tuple[list, list, list]) -> None:
    """The replayed update computed the eager one's gradients and left its parameters. Where Adam's
    second moment is at float noise (sqrt(v) < 1e-6: a gradient that has only ever been rounding error,
    such as a bias just before a batch norm, whose true gradient is 0), the step is about lr x noise /
    (noise + eps), so a 1e-8 difference in the order of a sum moves it by a good part of lr (measured on
    an H100: gradients 4e-9 apart, parameters 4e-3); there the gradients must agree, the parameters need not."""
    after, grads, second_moments = eager
    for (name, p), q, g, v in zip(model.named_parameters(), after, grads, second_moments):
        if g is None:
            assert p.grad is None, name
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
            continue
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} gradient: {m}")
        noise = v.sqrt() < 1e-6 if v is not None else torch.zeros_like(p, dtype=torch.bool)
        torch.testing.assert_close(p[~noise], q[~noise], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def _put_back(model, optimizer, saved_model: dict, saved_optimizer: dict) -> None:
    """Copy saved states back into the very tensors (a graph reads those). The optimiser state of a
    parameter is found by its place in the parameter list, by identity (list.index would compare
    tensors element by element)."""
    params = optimizer.param_groups[0]["params"]
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(saved_model[key])
        for p, s in optimizer.state.items():
            saved = saved_optimizer["state"][next(i for i, q in enumerate(params) if q is p)]
            for key, value in s.items():
                value.copy_(saved[key])


def test_which_configurations_are_captured():
    assert graphable(load_config(overrides=["train.device=cuda"])) == (True, "")
    assert not graphable(load_config())[0]  # the CPU: never
    ok, reason = graphable(load_config(overrides=["train.device=cuda", "estimator.sleep_update=true"]))
    assert not ok and "sleep" in reason
    # a decaying h_0 dropout is captured: its rate lives in a device tensor, one graph with the draw, one without
    assert graphable(load_config(overrides=["train.device=cuda", "train.initial_state_dropout_decay=0.5"])) == (True, "")
    ok, reason = graphable(load_config(overrides=["train.device=cuda", "estimator.name=var", "model.proposal=none",
                                                  "estimator.expected_glimpse_probability=0.5"]))
    assert not ok and "coin" in reason


def test_the_reinforce_baseline_moves_in_place():
    baseline = ReinforceBaseline()
    baseline.update(torch.tensor([1.0, 3.0]), 0.9)
    value = baseline.value
    baseline.update(torch.tensor([4.0]), 0.5)
    assert baseline.value is value and float(value) == pytest.approx(3.0)
    baseline.update(torch.tensor([float("nan")]), 0.5)  # a non-finite batch leaves it as it was
    assert float(baseline.value) == pytest.approx(3.0)


def test_learning_rate_in_a_tensor_or_a_number():
    group = {"lr": torch.tensor(0.1)}
    tensor = group["lr"]
    set_learning_rate(group, 0.25)
    assert group["lr"] is tensor and float(tensor) == 0.25
    group = {"lr": 0.1}
    set_learning_rate(group, 0.25)
    assert group["lr"] == 0.25
    cpu = make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], 1e-3, 0.0, torch.device("cpu"),
                         capturable=True)
    assert not isinstance(cpu.param_groups[0]["lr"], torch.Tensor)  # capturable means nothing on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name,attention,proposal,glimpses", [
    ("wsram", "hard", "factorised", 1), ("var", "hard", "none", 1), ("soft", "soft", "none", 1),
    ("wsram", "hard", "factorised", 2), ("var", "hard", "none", 2),  # two glimpses per word
    ("vimco", "hard", "none", 1)])
def test_a_replayed_update_equals_the_eager_one(name, attention, proposal, glimpses):
    device = torch.device("cuda")
    model = _tiny(attention, proposal, glimpses).float().to(device)
    optimizer = make_optimizer([{"params": list(model.parameters())}], 1e-2, 0.0, device, capturable=True)
    generator = torch.Generator().manual_seed(3)
    text = _text([3, 2, 4, 4], generator).to(device)
    rows = torch.tensor([0, 1, 1, 0], device=device)
    images = [torch.randn(2, 3, 24, 24, generator=generator).to(device) for _ in range(3)]
    estimator, baseline = EstimatorConfig(name=name, samples=3), ReinforceBaseline()
    noise = torch.Generator(device=device)

    def update(inputs, rows, text):
        return training_update(model, optimizer, inputs, "images", rows, text, estimator, baseline, 5.0,
                               bf16=False, generator=noise)

    def seed(i):
        torch.manual_seed(10 + i)
        noise.manual_seed(20 + i)

    seed(0)
    update(images[0], rows, text)  # warm-up: optimiser state, VAR's baseline
    graphed = GraphedUpdates(update, [noise], warmup=0)
    for i in (1, 2):
        state = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
                 None if baseline.value is None else baseline.value.clone())
        seed(i)
        eager = {k: v.clone() for k, v in update(images[i], rows, text).items()}
        result = _eager_result(model, optimizer)
        _put_back(model, optimizer, state[0], state[1])
        if state[2] is not None:
            baseline.value.copy_(state[2])
        seed(i)
        replayed = graphed(images[i], rows, text)
        assert graphed.replays == i
        for key in eager:
            torch.testing.assert_close(replayed[key], eager[key], rtol=1e-5, atol=1e-6)
        _assert_same_update(model, result)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_decaying_initial_state_dropout_replays_as_the_eager_update():
    # train.initial_state_dropout_decay in CUDA graphs, as the Trainer runs it: the rate lives in a device
    # tensor filled before each update, and the update without the draw (rate 0) is a variant of its own
    device = torch.device("cuda")
    model = _tiny("hard", "factorised").float().to(device)
    rate = torch.zeros((), device=device)
    model.decoder.initial_state_dropout_rate = rate
    optimizer = make_optimizer([{"params": list(model.parameters())}], 1e-2, 0.0, device, capturable=True)
    generator = torch.Generator().manual_seed(5)
    text = _text([3, 2, 4, 4], generator).to(device)
    rows = torch.tensor([0, 1, 1, 0], device=device)
    images = [torch.randn(2, 3, 24, 24, generator=generator).to(device) for _ in range(5)]
    estimator, baseline = EstimatorConfig(name="wsram", samples=3), ReinforceBaseline()
    noise = torch.Generator(device=device)

    def update(inputs, rows, text):
        return training_update(model, optimizer, inputs, "images", rows, text, estimator, baseline, 5.0,
                               bf16=False, generator=noise)

    def seed(i, value):
        model.decoder.initial_state_dropout = value
        rate.fill_(value)
        torch.manual_seed(10 + i)
        noise.manual_seed(20 + i)

    seed(0, 0.8)
    update(images[0], rows, text)
    graphed = GraphedUpdates(update, [noise], warmup=0)
    for i, value in enumerate((0.8, 0.4, 0.0, 0.0), start=1):
        state = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
        seed(i, value)
        eager = {k: v.clone() for k, v in update(images[i], rows, text).items()}
        result = _eager_result(model, optimizer)
        _put_back(model, optimizer, state[0], state[1])
        seed(i, value)
        replayed = graphed(images[i], rows, text, variant=(value > 0.0,))
        for key in eager:
            torch.testing.assert_close(replayed[key], eager[key], rtol=1e-5, atol=1e-6)
        _assert_same_update(model, result)
    assert {key[0] for key in graphed.graphs} == {(True,), (False,)} and graphed.replays == 4
