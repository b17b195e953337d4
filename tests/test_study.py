"""The efficiency study command (research/study.py, research/efficiency_study.py) on the scenes data:
the files it writes and their schema, resuming a grid and an interrupted run, and bad study files."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.config import ConfigError
from research.study import _Run, load_study, run_study

ROOT = Path(__file__).resolve().parents[1]

STUDY = """
set: [data.scenes.train_size=40, data.scenes.val_size=6, data.scenes.test_size=6, train.batch_size=10, train.epochs=2,
      train.log_every=2, train.validation_samples=2, model.hidden_dim=16, model.embedding_dim=8,
      model.attention_dim=8, model.encoder.feature_dim=8, model.proposal_hidden_dim=8, decode.max_length=6]
eval_every: 2
bound_samples: 4
dev_images: 4
variance_points: [0.0, 1.0]
variance_draws: 3
test_beam: 2
arms:
  - {name: wsram, estimator: wsram, seeds: [0]}
  - {name: var, estimator: var, seeds: [0]}
"""


def _study(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(STUDY)
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_study_writes_curves_variance_summary_and_figures_and_resumes(tmp_path, monkeypatch):
    study = load_study(_study(tmp_path))
    study.save_models = True
    out = tmp_path / "out"
    run_study(study, out, max_runs=1)  # a grid spread over two calls
    assert (out / "runs" / "wsram-s0" / "result.json").is_file()
    assert not (out / "runs" / "var-s0").exists()

    # Interrupt the VAR run after update 5 (its checkpoint is at update 4, the end of epoch 1).
    original = _Run.after_update

    def interrupted(self, trainer):
        original(self, trainer)
        if trainer.step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(_Run, "after_update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, out)
    assert [r["step"] for r in _lines(out / "runs" / "var-s0" / "curve.jsonl")] == [0, 2, 4]
    monkeypatch.setattr(_Run, "after_update", original)
    wsram_result = (out / "runs" / "wsram-s0" / "result.json").read_text()
    summary = run_study(study, out)
    assert (out / "runs" / "wsram-s0" / "result.json").read_text() == wsram_result  # kept, not redone

    for name in ("wsram-s0", "var-s0"):
        curve = _lines(out / "runs" / name / "curve.jsonl")
        assert [r["step"] for r in curve] == [0, 2, 4, 6, 8]  # resumed without gaps or repeats
        assert all(r["gpu_seconds"] >= 0 for r in curve)
        assert [r["gpu_seconds"] for r in curve] == sorted(r["gpu_seconds"] for r in curve)
        for record in curve:
            assert {"step", "epoch", "gpu_seconds", "dev_bound_prior", "dev_bound_prior_per_word",
                    "dev_bleu_4_greedy"} <= set(record)
            assert record["dev_bound_prior"] < 0
        variance = _lines(out / "runs" / name / "variance.jsonl")
        assert [v["step"] for v in variance] == [0, 8]
        assert {"prior", "decoder"} <= set(variance[0]["groups"])
        assert all(v["groups"]["prior"]["variance"] > 0 for v in variance)
        result = json.loads((out / "runs" / name / "result.json").read_text())
        assert result["steps"] == 8 and result["test_beam"] == 2 and "Bleu_4" in result["test"]
        captions = json.loads((out / "runs" / name / "test_captions.json").read_text())
        assert len(captions) == 6 and {"image_id", "caption"} <= set(captions[0])  # COCO results format
        model = out / "runs" / name / "model"
        assert {"config.json", "model.safetensors", "training_config.yaml"} <= {p.name for p in model.iterdir()}
    wsram_curve = _lines(out / "runs" / "wsram-s0" / "curve.jsonl")
    assert "dev_bound_proposal" in wsram_curve[0] and "train_ess_per_k" in wsram_curve[-1]
    log = [r for r in _lines(out / "runs" / "wsram-s0" / "log.jsonl") if r["type"] == "train"]
    last = next(r for r in log if r["step"] == wsram_curve[-1]["step"])  # the diagnostics of that very update
    assert wsram_curve[-1]["train_ess_per_k"] == last["ess_per_k"]
    wsram_variance = _lines(out / "runs" / "wsram-s0" / "variance.jsonl")
    assert "without_control_variates" in wsram_variance[0] and "with_prior_control_variate" in wsram_variance[0]
    # by default only q's control variate is on, and it does not touch the prior's gradient
    assert wsram_variance[0]["without_control_variates"]["prior"] == wsram_variance[0]["groups"]["prior"]
    assert "proposal" in wsram_variance[0]["groups"]

    assert set(summary) == {"runs", "arms", "targets"}
    assert {r["arm"] for r in summary["runs"]} == {"wsram", "var"} and all(r["finished"] for r in summary["runs"])
    assert summary["targets"]["var_best_dev_bound_prior_mean"] is not None
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for figure in ("bound_vs_updates.png", "bound_vs_gpu_seconds.png", "bleu_vs_updates.png",
                   "gradient_variance.png", "ess_per_k.png"):
        assert (out / figure).stat().st_size > 5000, figure


@pytest.mark.slow
def test_the_command_summarises_an_existing_study(tmp_path):
    study_path = _study(tmp_path)
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-m", "research.efficiency_study", str(study_path), "--out",
                             str(out), "--summarise"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [r["finished"] for r in summary["runs"]] == [False, False]


@pytest.mark.parametrize("text,message", [
    ("arms: []", "no arms"),
    ("arms:\n  - {name: a, estimator: reinforce}", "estimator must be one of"),
    ("arms:\n  - {name: a, estimator: var}\n  - {name: a, estimator: wsram}", "used twice"),
    ("arms:\n  - {name: a, estimator: var, seeds: []}", "seeds"),
    ("arms:\n  - {name: a, estimator: var}\nevaluate_every: 3", "unknown study keys"),
    ("arms:\n  - {name: a, estimator: var}\nvariance_points: [2]", "fractions"),
    ("- arms", "expected a mapping"),
    ("arms: [", "not valid YAML"),
])
def test_bad_study_files_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_study(path)
    assert str(path) in str(error.value)


@pytest.mark.slow
def test_every_arm_of_the_flickr8k_grid_runs_on_a_tiny_scenes_model(tmp_path):
    """The arms of eval/efficiency/flickr8k.yaml (estimators and overrides), one seed each, with the
    shared config swapped for a tiny scenes one: each trains, is measured and is scored."""
    grid = load_study(ROOT / "eval" / "efficiency" / "flickr8k.yaml")
    tiny = load_study(_study(tmp_path))
    tiny.arms = [dataclasses.replace(arm, seeds=[0]) for arm in grid.arms]
    tiny.overrides = tiny.overrides + ["train.epochs=1"]
    tiny.variance_points, tiny.variance_draws = [0.5], 2
    summary = run_study(tiny, tmp_path / "out")
    assert [r["arm"] for r in summary["runs"]] == [arm.name for arm in grid.arms]
    assert all(r["finished"] and r["test_bleu_4"] is not None for r in summary["runs"])
    soft = next(r for r in summary["runs"] if r["arm"] == "soft")
    assert soft["variance_points"][0]["prior_variance"] == 0.0  # nothing sampled


@pytest.mark.slow
def test_only_trains_the_named_runs_and_workers_can_skip_the_summary(tmp_path):
    """Parallel workers share one --out: each trains only its runs and writes no summary; a later
    summarise sees both runs."""
    study = load_study(_study(tmp_path))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no run named wsram-s7"):
        run_study(study, out, only=["wsram-s7"])
    assert run_study(study, out, only=["var-s0"], write_summary=False) is None
    assert (out / "runs" / "var-s0" / "result.json").is_file()
    assert not (out / "runs" / "wsram-s0").exists() and not (out / "summary.json").exists()
    listing = subprocess.run([sys.executable, "-m", "research.efficiency_study", str(_study(tmp_path)),
                              "--out", str(out), "--list"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert listing.stdout.split() == ["wsram-s0", "var-s0"]
    summary = run_study(study, out, only=["wsram-s0"])
    assert [r["finished"] for r in summary["runs"]] == [True, True]


def _fake_run(out: Path, name: str, bounds: list[float], seconds_per_update: float) -> None:
    folder = out / "runs" / name
    folder.mkdir(parents=True)
    steps = [100 * i for i in range(len(bounds))]
    folder.joinpath("curve.jsonl").write_text("".join(
        json.dumps({"step": s, "gpu_seconds": s * seconds_per_update, "dev_bound_prior": b, "dev_bleu_4_greedy": 0.1})
        + "\n" for s, b in zip(steps, bounds)))
    folder.joinpath("result.json").write_text(json.dumps(
        {"steps": steps[-1], "gpu_seconds": steps[-1] * seconds_per_update, "test": {"Bleu_4": 0.2}}))


def test_targets_when_wsram_peaks_lower_and_the_clocks_of_runs_that_shared_a_gpu(tmp_path):
    """WS-RAM climbs faster but overfits below VAR's best: the target is missed (not left out), and the
    common level (the lowest best bound of all runs) is reached at the first update each arm gets
    there; a timing file alone on the GPU turns updates into seconds at each estimator's cost."""
    from research.study import load_timing, summarise
    from research.study_plots import plot_study

    study = load_study(_study(tmp_path))
    out = tmp_path / "out"
    _fake_run(out, "wsram-s0", [-90.0, -40.0, -33.0, -34.0, -35.0], 0.5)
    _fake_run(out, "var-s0", [-90.0, -50.0, -38.0, -33.5, -32.0], 0.1)
    timing_file = tmp_path / "timing.jsonl"
    timing_file.write_text('{"estimator": "wsram", "seconds_per_update": 0.02}\n'
                           '{"estimator": "var", "seconds_per_update": 0.08, "device": "x"}\n')
    timing = load_timing(timing_file)
    summary = summarise(study, out, timing)
    targets = summary["targets"]
    assert targets["wsram_reaches_var_best"] == [None]
    assert targets["met_updates_at_most_one_third"] is False
    common = targets["common_level"]
    assert common["level"] == -33.0
    assert (common["wsram_updates"], common["var_updates"]) == (200, 400)
    assert common["gpu_seconds_ratio_wsram_over_var"] == pytest.approx(100 / 40)  # the shared clocks
    assert common["alone_seconds_ratio_wsram_over_var"] == pytest.approx(200 * 0.02 / (400 * 0.08))
    assert [r["alone_seconds"] for r in summary["runs"]] == [pytest.approx(8.0), pytest.approx(32.0)]
    assert targets["var_alone_seconds_to_its_best"] == pytest.approx(32.0)
    written = plot_study(study, out, summary)
    assert out / "bound_vs_alone_seconds.png" in written

    timing_file.write_text('{"estimator": "wsram"}\n')
    with pytest.raises(ConfigError, match=r"timing.jsonl:1: not a timing line"):
        load_timing(timing_file)
