"""train.ema_decay: the moving average of the parameters (captioner/averaging.py) that validation,
best.pt, the exported model and the test scores use, while training runs on the live parameters."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from captioner.averaging import ParameterAverage, average_decay
from captioner.config import ConfigError
from captioner.evaluation import evaluate_split
from captioner.experiment import run_experiment
from captioner.train import NonFiniteStateError, Trainer, TrainerCallback
from tests.test_training import tiny_config

EMA = "train.ema_decay=0.9"


class _Trajectory(TrainerCallback):
    """The live parameters after every update."""

    def __init__(self):
        self.parameters: list[list[torch.Tensor]] = []

    def after_update(self, trainer):
        self.parameters.append([p.detach().clone() for p in trainer.model.parameters() if p.requires_grad])


def _average_by_hand(initial: list[torch.Tensor], trajectory: list[list[torch.Tensor]], ema_decay: float,
                     warmup: float) -> list[torch.Tensor]:
    """a_n = d_n a_{n-1} + (1 - d_n) theta_n from a_0 = theta_0, d_n = min(ema_decay, (1 + n) / (warmup + n)),
    in float64 (written out here, not taken from captioner.averaging)."""
    expected = [p.double() for p in initial]
    for n, live in enumerate(trajectory, start=1):
        d = min(ema_decay, (1 + n) / (warmup + n))
        expected = [d * a + (1 - d) * p.double() for a, p in zip(expected, live)]
    return expected


def test_the_average_follows_the_formula_over_the_live_trajectory(tmp_path):
    """After n updates the average is the recursion a_n = d_n a_{n-1} + (1 - d_n) theta_n from a_0 = theta_0,
    with d_n = min(ema_decay, (1 + n) / (10 + n)), computed here by hand in float64."""
    trainer = Trainer(tiny_config("wsram", EMA, "train.max_steps=5"), tmp_path)
    initial = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
    trajectory = _Trajectory()
    trainer.train([trajectory])
    assert len(trajectory.parameters) == 5
    assert all(average_decay(0.9, n) == min(0.9, (1 + n) / (10 + n)) for n in range(1, 6))
    expected = _average_by_hand(initial, trajectory.parameters, 0.9, 10.0)
    for average, reference in zip(trainer.average.average, expected):
        torch.testing.assert_close(average.double(), reference, rtol=1e-5, atol=1e-6)
    # the average is not the live weights (training moved them), and the decay has its warm-up
    assert any(not torch.equal(a, p) for a, p in zip(trainer.average.average, trajectory.parameters[-1]))
    assert average_decay(0.999, 1) == pytest.approx(2 / 11) and average_decay(0.999, 10 ** 6) == 0.999


def test_training_is_unchanged_and_validation_scores_the_average(tmp_path):
    """The average never reaches training: the live parameters and the training log of a run with it
    are bit for bit those of a run without it. Validation scores the averaged weights (not the live
    ones), and leaves the live weights exactly as they were."""
    plain = Trainer(tiny_config("wsram", "train.max_steps=3"), tmp_path / "plain")
    plain.train()
    averaged = Trainer(tiny_config("wsram", "train.max_steps=3", EMA), tmp_path / "averaged")
    averaged.train()  # 3 updates = one epoch of 3 batches: one validation
    for a, b in zip(plain.model.state_dict().values(), averaged.model.state_dict().values()):
        assert torch.equal(a, b)
    assert len(averaged.history) == 1
    live_before = [p.detach().clone() for p in averaged.model.parameters()]
    config = averaged.config
    decode = dataclasses.replace(config.decode, beam_size=config.train.validation_beam_size)
    with averaged.average.swapped_in():
        scores_average, _ = evaluate_split(averaged.model, averaged.splits["val"], decode, averaged.device,
                                           config.train.validation_samples)
    for p, q in zip(averaged.model.parameters(), live_before):
        assert torch.equal(p, q)
    scores_live, _ = evaluate_split(averaged.model, averaged.splits["val"], decode, averaged.device,
                                    config.train.validation_samples)
    record = averaged.history[0]
    assert record["bound_prior"] == scores_average["bound_prior"]
    assert record["bound_prior"] != scores_live["bound_prior"]
    assert plain.history[0]["bound_prior"] == scores_live["bound_prior"]


def test_resume_is_exact_with_the_average(tmp_path):
    """5 updates straight == 2, checkpoint, resume, 3: same parameters and the same average, across an
    epoch boundary (3 batches an epoch) whose validation scores the average."""
    straight = Trainer(tiny_config("wsram", EMA, "train.max_steps=5"), tmp_path / "straight")
    straight.train()
    Trainer(tiny_config("wsram", EMA, "train.max_steps=2"), tmp_path / "split").train()
    resumed = Trainer(tiny_config("wsram", EMA, "train.max_steps=5"), tmp_path / "split", resume=True)
    assert resumed.step == 2
    resumed.train()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.average.average, resumed.average.average):
        assert torch.equal(a, b)
    assert [r["Bleu_4"] for r in straight.history] == [r["Bleu_4"] for r in resumed.history]
    assert [r["bound_prior"] for r in straight.history] == [r["bound_prior"] for r in resumed.history]


def test_a_checkpoint_without_an_average_is_not_resumed_with_one(tmp_path):
    Trainer(tiny_config("wsram", "train.max_steps=2"), tmp_path).train()
    with pytest.raises(ValueError, match="train.ema_decay: the checkpoint .* without a parameter average"):
        Trainer(tiny_config("wsram", EMA, "train.max_steps=4"), tmp_path, resume=True)


def test_the_exported_model_holds_the_average_of_the_best_step(tmp_path):
    """run_experiment exports and scores best.pt's average, not its live weights."""
    metrics = run_experiment(tiny_config("soft", EMA), tmp_path)
    best = torch.load(tmp_path / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert best["step"] == metrics["best_step"]
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "model" / "model.safetensors")
    checked = 0
    for name, average in best["parameter_average"].items():
        if name in exported:
            assert torch.equal(exported[name], average), name
            checked += 1
            if not torch.equal(best["model"][name], average):
                checked += 1000
    assert checked > 1000  # several tensors checked, and the average differs from the live weights


def test_a_non_finite_average_is_never_written(tmp_path):
    trainer = Trainer(tiny_config("wsram", EMA, "train.max_steps=1"), tmp_path)
    trainer.train()
    trainer.average.average[0].fill_(float("nan"))
    with pytest.raises(NonFiniteStateError, match="parameter average of"):
        trainer.save_checkpoint()


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1"])
def test_ema_decay_outside_its_range_is_refused(value):
    with pytest.raises(ConfigError, match=r"train.ema_decay: must lie in \[0, 1\)"):
        tiny_config("wsram", f"train.ema_decay={value}")


def test_the_average_copies_in_and_out_of_the_same_storage():
    """swapped_in keeps each parameter's storage (CUDA graphs read it) and restores it exactly."""
    model = torch.nn.Linear(3, 2)
    average = ParameterAverage(model, 0.5)
    pointers = [p.data_ptr() for p in model.parameters()]
    live = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for a in average.average:
            a.add_(1.0)
    with average.swapped_in():
        assert [p.data_ptr() for p in model.parameters()] == pointers
        for p, q in zip(model.parameters(), live):
            assert torch.equal(p, q + 1.0)
    for p, q in zip(model.parameters(), live):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="does not fit the model"):
        average.load_state_dict({"weight": model.weight.detach()})


def test_the_warmup_constant_sets_the_span_of_the_average(tmp_path):
    """train.ema_warmup w: d_n = min(ema_decay, (1 + n) / (w + n)); the trainer's average follows it, a
    smaller w gives the live weights less weight per update, and w <= 1 is refused by name."""
    assert average_decay(0.999, 5, 4.0) == pytest.approx(6 / 9)
    assert average_decay(0.999, 5) == pytest.approx(6 / 15)
    assert average_decay(0.999, 10 ** 6, 4.0) == 0.999
    assert all(average_decay(0.999, n, 4.0) > average_decay(0.999, n) for n in range(1, 5000))
    trainer = Trainer(tiny_config("wsram", EMA, "train.ema_warmup=4", "train.max_steps=4"), tmp_path / "w4")
    initial = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
    trajectory = _Trajectory()
    trainer.train([trajectory])
    assert len(trajectory.parameters) == 4
    expected = _average_by_hand(initial, trajectory.parameters, 0.9, 4.0)
    for average, reference in zip(trainer.average.average, expected):
        torch.testing.assert_close(average.double(), reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="train.ema_warmup"):
        tiny_config("wsram", EMA, "train.ema_warmup=1")
    with pytest.raises(ValueError, match="exceed 1"):
        ParameterAverage(torch.nn.Linear(2, 2), 0.9, warmup=0.5)
