"""The benchmarks' variants on the CPU (no timing checked): bench_epoch times several variants in one
run and records graphed as not available; bench_train records a failing variant with its error and
runs the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_train, speed_table

REPO = Path(__file__).resolve().parents[1]
TINY = """\
data:
  scenes: {train_size: 12, val_size: 4, test_size: 4}
model:
  hidden_dim: 16
  embedding_dim: 8
  attention_dim: 8
  proposal_hidden_dim: 8
  encoder: {feature_dim: 8}
estimator: {name: wsram, samples: 2}
train: {batch_size: 4, device: cpu}
"""


def bench_epoch(tmp_path: Path, *args: str) -> dict:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "epoch.json"
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "benchmarks.bench_epoch", str(config), "--epochs", "2",
                    "--work", str(tmp_path / "work"), "--out", str(out), *args],
                   check=True, cwd=tmp_path, env=environment)
    return json.loads(out.read_text())


@pytest.mark.slow  # three processes, about 20 s
def test_bench_epoch_times_every_variant_in_one_run(tmp_path):
    record = bench_epoch(tmp_path, "--variants", "graphed,eager,stepwise")
    results = {r["variant"]: r for r in record["results"]}
    assert list(results) == ["graphed", "eager", "stepwise"]
    assert results["graphed"]["available"] is False and "CUDA" in results["graphed"]["reason"]
    for variant, layout in (("eager", "fused"), ("stepwise", "stepwise")):
        result = results[variant]
        assert result["available"] is True and result["layout"] == layout and result["cuda_graphs"] is False
        assert len(result["epochs"]) == 2 and result["mean_epoch_seconds_after_first"] > 0
        assert "command" not in result  # the child's command names scratch paths
    assert results["stepwise"]["compile"] is False
    assert record["device"] and record["torch"] and record["command"].startswith("python -m benchmarks.bench_epoch")
    # The file is what the README's table is made from.
    table = speed_table.render(speed_table.read_sources([], [tmp_path / "epoch.json"]), tmp_path)
    (cells,) = [line for line in table.splitlines() if "epoch of the real Trainer, WS-RAM (K = 2)" in line]
    assert cells.endswith("| not available here |")


def test_bench_epoch_still_runs_one_mode(tmp_path):
    record = bench_epoch(tmp_path, "--set", "train.cuda_graphs=false")
    assert "results" not in record and record["cuda_graphs"] is False and len(record["epochs"]) == 2
    assert speed_table.epoch_variant(record) == "eager"


def test_bench_train_records_a_failing_variant_and_runs_the_others(tmp_path, monkeypatch):
    real = bench_train.run_variant

    def run_variant(shape, variant, *args):
        if variant == "var":
            raise RuntimeError("a CPU tensor among CUDA ones (made up)")
        return real(shape, variant, *args)

    monkeypatch.setattr(bench_train, "run_variant", run_variant)
    tiny = ["model.hidden_dim=16", "model.embedding_dim=8", "model.attention_dim=8", "model.encoder.feature_dim=8",
            "model.proposal_hidden_dim=8"]
    monkeypatch.setattr(sys, "argv", ["bench_train", "--out", str(tmp_path), "--shapes", "flickr8k", "--variants",
                                      "wsram-graphed,wsram-fast,var,soft", "--updates", "1", "--warmup", "1",
                                      "--pool-images", "8", "--samples-per-update", "20", "--device", "cpu"]
                        + [a for o in tiny for a in ("--set", o)])
    bench_train.main()
    record = json.loads((tmp_path / "results.json").read_text())
    results = {r["variant"]: r for r in record["results"]}
    assert list(results) == ["wsram-graphed", "wsram-fast", "var", "soft"]
    assert results["wsram-graphed"]["available"] is False and "needs CUDA" in results["wsram-graphed"]["reason"]
    assert results["var"]["error"] == "RuntimeError: a CPU tensor among CUDA ones (made up)"
    assert results["wsram-fast"]["seconds_per_update"] > 0 and results["soft"]["seconds_per_update"] > 0
    assert record["device"] and record["torch"] and "cuda" in record
    table = (tmp_path / "table.txt").read_text()
    assert "wsram-graphed   not available" in table and "var             FAILED: RuntimeError" in table
    assert f"# {record['device']}" in table
