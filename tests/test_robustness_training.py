"""Training loses nothing and hides nothing (issue 19): non-finite updates are skipped and counted,
too many in a row stop the run with an error that names the last good checkpoint, nothing
non-finite is ever written, a loss that blows up is reported, and a run killed at any moment (in
the middle of writing best.pt or latest.pt included) resumes to the same files, bit for bit."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import captioner.train as train_module
from captioner.data.datasets import load_dataset
from captioner.experiment import run_experiment
from captioner.train import CheckpointMismatchError, NonFiniteStateError, SkippedUpdatesError, Trainer
from tests.test_training import TINY, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _strict(text: str):
    """json.loads that refuses NaN and infinities (as any strict JSON reader does)."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _log(folder: Path) -> list[dict]:
    return [_strict(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def _without_clock(value):
    """`value` without the wall-clock fields (and the run folder, which differs between runs)."""
    if isinstance(value, dict):
        return {k: _without_clock(v) for k, v in value.items()
                if k not in ("train_seconds", "wall_seconds", "validation_seconds", "time_seconds", "model_dir")}
    if isinstance(value, list):
        return [_without_clock(v) for v in value]
    return value


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _nan_images(config, images) -> dict:
    """The splits of `config` with NaN pixels in the given training images."""
    splits = load_dataset(config.data, config.model)
    for index in images:
        splits["train"].inputs[index] = float("nan")
    return splits


# ---- non-finite updates ------------------------------------------------------------------------
def test_skipped_updates_are_counted_in_the_log_and_the_summary(tmp_path):
    config = tiny_config("wsram")
    trainer = Trainer(config, tmp_path, splits=_nan_images(config, [0]))
    summary = trainer.train()
    assert summary["step"] == 6
    skipped = summary["skipped_updates"]
    assert 1 <= skipped <= 2  # image 0 is in one batch of each epoch
    records = _log(tmp_path)
    train = [r for r in records if r["type"] == "train"]
    assert sum(r["skipped"] for r in train) == skipped
    assert train[-1]["skipped_updates"] == skipped
    for r in train:
        if r["skipped"]:
            assert r["loss"] is None and "loss" in r["non_finite"]
    warnings = [r for r in records if r["type"] == "warning"]
    assert len(warnings) == skipped and all("update skipped" in r["message"] for r in warnings)
    assert summary["warnings"] == [r["message"] for r in warnings]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_too_many_skipped_updates_in_a_row_stop_the_run_naming_the_last_good_checkpoint(tmp_path):
    good = tiny_config("wsram", "train.checkpoint_every=2", "train.max_steps=2")
    Trainer(good, tmp_path).train()
    latest = tmp_path / "checkpoints" / "latest.pt"
    config = tiny_config("wsram", "train.max_skipped_updates_in_a_row=3")
    trainer = Trainer(config, tmp_path, resume=True, splits=_nan_images(config, range(12)))
    with pytest.raises(SkippedUpdatesError) as raised:
        trainer.train()
    message = str(raised.value)
    assert "\n" not in message
    assert "step 5: 3 updates in a row (steps 3-5)" in message and "loss nan" in message
    assert "train.learning_rate" in message
    # the end of epoch 1 (step 3, after one skipped update: a good state) was checkpointed, then no more
    assert f"{latest} (step 3), is left as it was" in message
    state = torch.load(latest, weights_only=False)
    assert state["step"] == 3 and state["skipped_updates"] == 1 and state["skipped_in_a_row"] == 1
    assert trainer.skipped_updates == 3


def test_a_non_finite_state_is_never_written(tmp_path):
    """learning_rate inf: NaN parameters after the first update, then only skipped updates; the
    end-of-epoch checkpoint is refused, the good checkpoint before it left as it was."""
    Trainer(tiny_config("wsram", "train.checkpoint_every=1", "train.max_steps=1"), tmp_path).train()
    latest = tmp_path / "checkpoints" / "latest.pt"
    before = _digest(latest)
    config = tiny_config("wsram", "train.checkpoint_every=1")
    config.train.learning_rate = float("inf")  # (overrides refuse it; a config object may hold it)
    with pytest.raises(NonFiniteStateError) as raised:
        Trainer(config, tmp_path, resume=True).train()
    message = str(raised.value)
    assert "\n" not in message and f"refusing to write {latest}" in message and "step 2" in message
    assert f"{latest} (step 1), is left as it was" in message
    assert _digest(latest) == before
    assert not (tmp_path / "checkpoints" / "best.pt").exists()
    for record in _log(tmp_path):  # every line strict JSON, the NaN losses as null
        assert record["type"] in ("train", "warning")


def test_a_run_with_a_non_finite_model_exports_nothing(tmp_path, monkeypatch):
    config = tiny_config("wsram", "train.epochs=1", "train.max_skipped_updates_in_a_row=0")
    config.train.learning_rate = float("inf")
    with pytest.raises(NonFiniteStateError, match="latest.pt"):
        run_experiment(config, tmp_path)
    assert not (tmp_path / "model").exists() and not (tmp_path / "metrics.json").exists()
    assert not list((tmp_path / "checkpoints").iterdir())
    validation = [r for r in _log(tmp_path) if r["type"] == "validation"]
    assert validation and "bound_prior" in validation[0]["non_finite"]
    # the export checks the model it is about to write, whatever put it there

    def load_nan(trainer):
        with torch.no_grad():
            next(trainer.model.parameters())[0] = float("nan")

    monkeypatch.setattr(Trainer, "load_best", load_nan)
    with pytest.raises(NonFiniteStateError, match="refusing to write .*model.safetensors"):
        run_experiment(tiny_config("wsram", "train.max_steps=1"), tmp_path / "export")
    assert not (tmp_path / "export" / "model").exists() and not (tmp_path / "export" / "metrics.json").exists()


def test_a_loss_that_blows_up_is_reported_once(tmp_path, capsys):
    trainer = Trainer(tiny_config("wsram", "train.learning_rate=1e6"), tmp_path)
    summary = trainer.train()
    assert len(summary["warnings"]) == 1
    message = summary["warnings"][0]
    assert "step 2: the training loss is" in message and "train.learning_rate (now 1e+06)" in message
    assert [r["message"] for r in _log(tmp_path) if r["type"] == "warning"] == [message]
    assert f"captioner: warning: {message}" in capsys.readouterr().err
    calm = Trainer(tiny_config("wsram"), tmp_path / "calm").train()
    assert calm["warnings"] == [] and calm["skipped_updates"] == 0


def test_metrics_json_is_strict_and_counts_skipped_updates(tmp_path, monkeypatch):
    monkeypatch.setattr("captioner.metrics.coco.java_available", lambda: False)  # no METEOR: seconds, not 10
    metrics = run_experiment(tiny_config("wsram", "train.epochs=1"), tmp_path)
    written = _strict((tmp_path / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["skipped_updates"] == 0 and written["warnings"] == [] and "non_finite" not in written
    assert written["best_step"] == 3
    # where the wall-clock time went: the parts add up to the whole, validation inside training
    clock = written["time_seconds"]
    assert set(clock) == {"setup", "training", "validation", "test", "export"} and all(v > 0 for v in clock.values())
    assert clock["validation"] == pytest.approx(sum(r["validation_seconds"] for r in written["validation"]))
    assert clock["validation"] < clock["training"]
    parts = clock["setup"] + clock["training"] + clock["test"] + clock["export"]
    assert parts <= written["wall_seconds"] < parts + 0.5
    # a NaN score goes in as null, named
    from captioner.experiment import _metrics

    summary = {"train_seconds": 1.0, "step": 3, "epoch": 1, "best_val_bleu_4": float("-inf"), "best_step": None,
               "history": [], "skipped_updates": 0, "warnings": []}
    record = _metrics(tiny_config("wsram"), {"Bleu_4": 0.1, "bound_prior": float("nan")}, summary, tmp_path, 2.0,
                      {"setup": 0.5, "training": 1.2, "validation": float("nan"), "test": 0.2, "export": 0.1})
    assert record["bound_prior"] is None and record["best_val_bleu_4"] is None
    assert record["non_finite"] == ["bound_prior", "time_seconds.validation", "best_val_bleu_4"]
    assert record["time_seconds"] == {"setup": 0.5, "training": 1.2, "validation": None, "test": 0.2, "export": 0.1}


# ---- checkpoints: every N updates, stale temporaries, best.pt ------------------------------------
def test_checkpoint_every_changes_no_number(tmp_path):
    every = Trainer(tiny_config("wsram", "train.checkpoint_every=1"), tmp_path / "every")
    epochs = Trainer(tiny_config("wsram"), tmp_path / "epochs")
    assert _without_clock(every.train()) == _without_clock(epochs.train())
    for key, value in epochs.model.state_dict().items():
        assert torch.equal(value, every.model.state_dict()[key]), key
    assert _without_clock(_log(tmp_path / "every")) == _without_clock(_log(tmp_path / "epochs"))


def test_stale_temporary_files_are_removed_when_a_run_starts_or_resumes(tmp_path, capsys):
    def litter():
        (tmp_path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (tmp_path / "model").mkdir(exist_ok=True)
        names = ["checkpoints/latest.pt.tmp", "checkpoints/best.pt.tmp", "model/model.safetensors.tmp",
                 "metrics.json.tmp", "log.jsonl.tmp"]
        for name in names:
            (tmp_path / name).write_bytes(b"half a file")
        return names

    litter()
    Trainer(tiny_config("wsram", "train.max_steps=1"), tmp_path).train()
    assert "removed 5 temporary file(s)" in capsys.readouterr().err
    names = litter()
    Trainer(tiny_config("wsram", "train.max_steps=2"), tmp_path, resume=True)
    assert not [name for name in names if (tmp_path / name).exists()]
    assert (tmp_path / "model").is_dir() and (tmp_path / "checkpoints" / "latest.pt").is_file()


def test_a_best_checkpoint_of_another_step_is_refused(tmp_path):
    trainer = Trainer(tiny_config("wsram"), tmp_path)
    trainer.train()
    best = tmp_path / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=False)
    state["step"] += 1
    torch.save(state, best)
    with pytest.raises(CheckpointMismatchError, match=f"best.pt is from step {trainer.best_step + 1}"):
        trainer.load_best()
    best.unlink()
    with pytest.raises(CheckpointMismatchError, match="best.pt is missing"):
        trainer.load_best()


def test_resume_before_the_first_checkpoint_starts_the_run_again(tmp_path, capsys):
    reference = Trainer(tiny_config("wsram"), tmp_path / "reference")
    reference.train()
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copyfile(reference.out_dir / "config.yaml", folder / "config.yaml")
    (folder / "log.jsonl").write_text('{"type": "train", "step": 1}\n{"type": "tr')  # the killed attempt's
    resumed = Trainer(tiny_config("wsram"), folder, resume=True)
    assert "no checkpoint yet" in capsys.readouterr().err
    resumed.train()
    assert _without_clock(_log(folder)) == _without_clock(_log(reference.out_dir))


# ---- a kill at any moment ------------------------------------------------------------------------
CRASH = ["train.checkpoint_every=2"]  # checkpoints at steps 2 and 4 (mid-epoch), 3 and 6 (epoch ends)


def _snapshots(folder: Path, snapshots: Path, monkeypatch) -> tuple[Trainer, list[tuple[str, Path]]]:
    """An uninterrupted run, with a copy of its folder taken at every moment of interest of every
    checkpoint write: what SIGKILL at that moment would leave (the temporary file as far as it was
    written included)."""
    taken: list[tuple[str, Path]] = []
    wrote = [False]  # whether the file being written has had its first write

    def hook(label: str) -> None:
        if label.endswith("bytes"):  # one point inside each file (all of them leave the same files)
            if wrote[0]:
                return
            wrote[0] = True
        elif label.endswith("temporary opened"):
            wrote[0] = False
        copy = snapshots / f"{len(taken):03d}"
        shutil.copytree(folder, copy)
        taken.append((label, copy))

    monkeypatch.setattr(train_module, "crash_hook", hook)
    trainer = Trainer(tiny_config("wsram", *CRASH), folder)
    trainer.train()
    monkeypatch.setattr(train_module, "crash_hook", None)
    return trainer, taken


def test_a_kill_during_any_checkpoint_write_resumes_to_the_same_run(tmp_path, monkeypatch):
    reference, snapshots = _snapshots(tmp_path / "run", tmp_path / "snapshots", monkeypatch)
    labels = [label for label, _ in snapshots]
    assert any(label.startswith("best.pt: temporary opened") for label in labels)
    assert reference.best_step is not None
    reference.load_best()
    expected_model = reference.model.state_dict()
    expected_summary = _without_clock(reference.summary())
    expected_log = _without_clock(_log(reference.out_dir))
    for label, folder in snapshots:
        resumed = Trainer(tiny_config("wsram", *CRASH), folder, resume=True)
        assert not list(folder.rglob("*.tmp")), label
        assert _without_clock(resumed.train()) == expected_summary, label
        assert _without_clock(_log(folder)) == expected_log, label
        assert torch.load(folder / "checkpoints" / "best.pt", weights_only=False)["step"] == resumed.best_step
        resumed.load_best()
        for key, value in expected_model.items():
            assert torch.equal(value, resumed.model.state_dict()[key]), (label, key)


def _cli(folder: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    overrides = [arg for item in [*TINY, *CRASH] for arg in ("--set", item)]
    # without Java on PATH the test scores skip METEOR (10 s a run) and use the Python tokenizer
    environment = {**os.environ, "PATH": os.path.dirname(sys.executable), "OMP_NUM_THREADS": "1",
                   **(env or {})}
    return subprocess.run([sys.executable, "-m", "captioner.cli", "train", "--out", str(folder), "--quiet",
                           *overrides, *extra], capture_output=True, text=True, env=environment, cwd=ROOT,
                          timeout=600)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_gives_the_same_model_and_metrics(tmp_path):
    """SIGKILL (CAPTIONER_TEST_KILL_AT) at points of every kind: inside latest.pt and best.pt, before
    their renames, between latest.pt and best.pt, after the last checkpoint, during the export."""
    events = tmp_path / "events.txt"
    reference = tmp_path / "reference"
    done = _cli(reference, env={"CAPTIONER_TEST_EVENTS": str(events)})
    assert done.returncode == 0, done.stderr[-3000:]
    labels = [line.split("\t", 1)[1] for line in events.read_text().splitlines()]
    files: list[list[int]] = []  # the events of each checkpoint write
    for index, label in enumerate(labels):
        if label.endswith("temporary opened"):
            files.append([])
        if files and ".pt" in label:
            files[-1].append(index)
    first_best = next(i for i, f in enumerate(files) if labels[f[0]].startswith("best.pt"))
    points = {
        files[0][len(files[0]) // 2],  # inside the first latest.pt: no checkpoint yet
        files[first_best - 1][-1],  # latest.pt in place, best.pt not begun (the case)
        files[first_best][len(files[first_best]) // 2],  # inside best.pt
        files[first_best][-2],  # best.pt complete, not yet renamed
        files[first_best + 1][len(files[first_best + 1]) // 3],  # inside a mid-epoch latest.pt
        files[-1][-1],  # the last checkpoint in place, before the export
        labels.index("model exported"),
        labels.index("metrics ready"),
    }
    expected_metrics = _without_clock(_strict((reference / "metrics.json").read_text()))
    expected_model = (reference / "model" / "model.safetensors").read_bytes()
    expected_log = _without_clock(_log(reference))
    for point in sorted(points):
        folder = tmp_path / f"killed-{point}"
        killed = _cli(folder, env={"CAPTIONER_TEST_KILL_AT": str(point)})
        assert killed.returncode == -9, (point, labels[point], killed.stderr[-2000:])
        resumed = _cli(folder, "--resume")
        assert resumed.returncode == 0, (point, labels[point], resumed.stderr[-3000:])
        assert _without_clock(_strict((folder / "metrics.json").read_text())) == expected_metrics, labels[point]
        assert (folder / "model" / "model.safetensors").read_bytes() == expected_model, labels[point]
        assert _without_clock(_log(folder)) == expected_log, labels[point]
        assert not list(folder.rglob("*.tmp")), labels[point]
