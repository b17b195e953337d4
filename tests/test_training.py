"""Training: exact resume, checkpoints, logs; every estimator takes real steps."""

from __future__ import annotations

import json

import pytest
import torch

from captioner.config import config_for_estimator, load_config
from captioner.train import Trainer

TINY = ["data.scenes.train_size=12", "data.scenes.val_size=4", "data.scenes.test_size=4", "train.batch_size=4", "train.epochs=2",
        "train.progress_bar=false", "train.log_every=1", "train.validation_samples=2", "model.dropout=0.1",
        "model.hidden_dim=16", "model.embedding_dim=8", "model.attention_dim=8", "model.encoder.feature_dim=8",
        "model.proposal_hidden_dim=8", "decode.max_length=6"]


def tiny_config(estimator: str, *extra: str):
    return load_config(base=config_for_estimator(estimator), overrides=TINY + list(extra))


@pytest.mark.parametrize("estimator,extra", [
    ("wsram", ()),
    ("wsram", ("model.proposal=sequential", "estimator.defensive_weight=0.2",
               "estimator.defensive_component=prior", "estimator.sleep_update=true")),
    ("var", ("estimator.expected_glimpse_probability=0.5",)),
    ("soft", ()),
    # two hard glimpses per word, with the sleep update (model.glimpses_per_word)
    ("wsram", ("model.glimpses_per_word=2", "estimator.sleep_update=true")),
    ("var", ("model.glimpses_per_word=2",)),
    ("vimco", ()),
    # all 5 captions of each image, in 6 length-bucketed batches of 10: both runs stop within epoch 1
    ("wsram", ("train.captions_per_image=0", "train.batch_size=2", "train.length_bucketing=true")),
    ("soft", ("train.length_bucketing=true",)),
])
def test_resume_is_exact(tmp_path, estimator, extra):
    """N steps straight == N/2 steps, save, resume in a new trainer, N/2 steps: identical parameters.
    The epoch's order (length-bucketed or not) is a pure function of (seed, epoch), and
    the checkpoint holds the position within it."""
    straight = Trainer(tiny_config(estimator, "train.max_steps=5", *extra), tmp_path / "straight")
    straight.train()
    first = Trainer(tiny_config(estimator, "train.max_steps=2", *extra), tmp_path / "split")
    first.train()
    assert (tmp_path / "split" / "checkpoints" / "latest.pt").is_file()
    resumed = Trainer(tiny_config(estimator, "train.max_steps=5", *extra), tmp_path / "split", resume=True)
    assert resumed.step == 2
    resumed.train()
    assert resumed.step == straight.step == 5
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    if estimator == "var":
        assert torch.equal(straight.baseline.value, resumed.baseline.value)
    # an epoch boundary within the 5 updates (3 batches an epoch) validated in both runs
    assert [r["Bleu_4"] for r in straight.history] == [r["Bleu_4"] for r in resumed.history]


def test_training_writes_logs_checkpoints_and_validation(tmp_path):
    trainer = Trainer(tiny_config("wsram"), tmp_path)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    summary = trainer.train()
    assert summary["epoch"] == 2 and summary["step"] == 6
    assert any(not torch.equal(p, q) for p, q in zip(before, trainer.model.parameters()))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    validation = [r for r in records if r["type"] == "validation"]
    assert len(train) == 6 and len(validation) == 2
    for key in ("loss", "bound", "ess_per_k", "max_weight", "prior_entropy", "proposal_entropy"):
        assert key in train[0]
    for key in ("Bleu_1", "Bleu_4", "attention_accuracy", "bound_prior", "bound_proposal"):
        assert key in validation[0]
    assert 0.0 <= validation[-1]["Bleu_4"] <= 1.0
    assert validation[-1]["bound_prior"] < 0
    assert (tmp_path / "checkpoints" / "latest.pt").is_file()
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_resume_rejects_a_different_model(tmp_path):
    Trainer(tiny_config("wsram", "train.max_steps=1"), tmp_path).train()
    with pytest.raises(ValueError, match="model.hidden_dim"):
        Trainer(tiny_config("wsram", "model.hidden_dim=12"), tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(tiny_config("wsram"), tmp_path / "empty", resume=True)


def test_callbacks_see_every_update_and_every_validation(tmp_path):
    from captioner.train import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self):
            self.steps, self.validations = [], []

        def after_update(self, trainer):
            self.steps.append(trainer.step)

        def after_validation(self, trainer, record):
            self.validations.append((trainer.epoch, record["type"], record["step"]))

    recorder = Recorder()
    trainer = Trainer(tiny_config("wsram"), tmp_path / "run")
    trainer.train([recorder])
    per_epoch = trainer.sampler.batches_per_epoch
    assert recorder.steps == list(range(1, 2 * per_epoch + 1))
    assert recorder.validations == [(1, "validation", per_epoch), (2, "validation", 2 * per_epoch)]
    trainer.synchronize()  # on the CPU: nothing queued, the clock only moves forward
    assert trainer.train_seconds > 0
