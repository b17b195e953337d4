"""scripts/reproduce_flickr8k.sh end to end on the CPU, on 24 images of each split and a tiny model (a
smoke run: the real one needs a GPU): every step runs and writes what the README's tables come from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ("data.limit_images=24 train.epochs=1 train.batch_size=8 model.hidden_dim=32 model.embedding_dim=16 "
        "model.attention_dim=16 model.encoder.feature_dim=16 model.proposal_hidden_dim=8")


def _refuses_bad_arguments(script: str, tmp_path: Path) -> None:
    path = str(ROOT / "scripts" / script)
    result = subprocess.run(["bash", path, str(tmp_path), str(tmp_path / "c"), str(tmp_path / "o")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "not a Flickr8k release folder" in result.stderr
    usage = subprocess.run(["bash", path], capture_output=True, text=True)
    assert usage.returncode == 2 and f"usage: bash scripts/{script}" in usage.stdout


def _run_tiny(script: str, flickr8k_root: Path, tmp_path: Path, **settings: str) -> Path:
    """Runs scripts/SCRIPT on the CPU with the tiny settings (and `settings` as environment); returns OUT."""
    env = {**os.environ, "DEVICE": "cpu", "RUNS_AT_ONCE": "2", "SPREAD_IMAGES": "4", "EXTRA_SETS": TINY,
           "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           **settings}
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(ROOT / "scripts" / script), str(flickr8k_root), str(tmp_path / "cache"),
                             str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_script_refuses_a_folder_that_is_not_flickr8k(tmp_path):
    _refuses_bad_arguments("reproduce_flickr8k.sh", tmp_path)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_the_reproduction_script_runs_every_step_on_a_tiny_cpu_setting(flickr8k_root, tmp_path):
    out = _run_tiny("reproduce_flickr8k.sh", flickr8k_root, tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["arms"]) == ["soft", "var", "wsram"] and all(a["finished"] == 3 for a in summary["arms"].values())
    assert summary["timing_alone_seconds_per_update"].keys() == {"wsram", "var", "soft"}
    for name in ("wsram-s0", "wsram-s1", "wsram-s2", "var-s0", "var-s1", "var-s2"):
        assert json.loads((out / "post" / f"spread-{name}.json").read_text())["images"] == 4
    assert (out / "post" / "var-signal-var-s0.json").is_file() and (out / "post" / "var-signal-wsram-s0.json").is_file()
    assert len(list((out / "post" / "attention").glob("*.png"))) == 4
    assert (out / "bound_vs_updates.png").stat().st_size > 5000
    if shutil.which("java"):
        assert (out / "test_scores_java.json").is_file()


def test_the_attention_script_refuses_bad_arguments(tmp_path):
    _refuses_bad_arguments("reproduce_flickr8k_attention.sh", tmp_path)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_the_attention_script_runs_every_step_on_a_tiny_cpu_setting(flickr8k_root, tmp_path):
    out = _run_tiny("reproduce_flickr8k_attention.sh", flickr8k_root, tmp_path, ARMS="soft k40 k40flip k40tuneq k40qema", SEEDS="0",
                    EXTRA_SETS=TINY + " train.log_every=1")
    table = json.loads((out / "table.json").read_text())
    assert sorted(table) == ["k40", "k40flip", "k40qema", "k40tuneq", "soft"]
    ema_config = (out / "runs" / "k40qema-s0" / "config.yaml").read_text()
    assert "ema_decay: 0.999" in ema_config and "proposal_encoder_gradient: false" in ema_config
    assert "tune_to: ''" in ema_config
    assert "ema_decay: 0.0" in (out / "runs" / "k40-s0" / "config.yaml").read_text()
    tune_config = (out / "runs" / "k40tuneq-s0" / "config.yaml").read_text()
    assert "tune_to: block20" in tune_config and "proposal_encoder_gradient: false" in tune_config
    assert "ema_decay: 0.0" in tune_config  # the arm redoes lite2-tune/'s runs; its config now averages
    assert json.loads((tmp_path / "cache" / "lite2-block14" / "manifest.json").read_text())["encoder"]["layer"] == "block14"
    assert table["k40tuneq"]["runs"][0]["spread"]["marginal"]["images"] == 4
    flip_config = (out / "runs" / "k40flip-s0" / "config.yaml").read_text()
    assert "flip_probability: 0.5" in flip_config and "lite2-block20-mirror" in flip_config
    assert json.loads((tmp_path / "cache" / "lite2-block20-mirror" / "manifest.json").read_text())["mirrored"] is True
    assert "flip_probability: 0.0" in (out / "runs" / "k40-s0" / "config.yaml").read_text()
    k40 = table["k40"]["runs"][0]
    assert k40["attention_mode"] == "marginal" and k40["spread"]["marginal"]["images"] == 4
    assert "log_q_minus_log_prior" in k40
    config = (out / "runs" / "k40-s0" / "config.yaml").read_text()
    assert "samples: 40" in config and "efficientnet-lite2" in config
    for split in ("val", "test"):
        rows = json.loads((out / "runs" / "k40-s0" / f"decodes-{split}" / "study.json").read_text())["rows"]
        assert [r["attention_mode"] for r in rows] == ["argmax", "expected", "marginal"]
    assert len(list((out / "runs" / "k40-s0" / "pictures" / "marginal").glob("*.png"))) == 4
    assert "| k40 | 0 |" in (out / "table.md").read_text()
    kinds = json.loads((out / "word_classes.json").read_text())["arms"]
    assert sorted(kinds) == sorted(table) and "colour" in kinds["k40"]["runs"]["k40-s0"]
    if shutil.which("java"):
        assert (out / "test_scores_java.json").is_file()


@pytest.mark.parametrize("variants, complaints", [
    ("isd025", ["is not NAME:KEY=VALUE"]),                                  # no overrides
    ("isd-025:model.initial_state_dropout=0.25", ["is not NAME:KEY=VALUE"]),  # a dash would blur -sSEED
    ("a:model.dropout=0.1 a:model.dropout=0.2", ["each name once"]),
    ("- -", ["each name once"]),
    ("a:model.dropout", ["'model.dropout' in 'a:model.dropout' is not KEY=VALUE"]),
    # well formed, but refused by the settings check of `captioner train --check-config`, naming the run
    ("g2:model.glimpses_per_word=2", ["soft attention's glimpse is already the expectation",  # soft: one glimpse
                                      "the settings of softtuneema-g2 are refused"]),
    ("b:model.dropout=1.5", ["model.dropout: must lie in [0, 1), got 1.5", "the settings of k40tuneqema-b are refused"]),
])
def test_the_attention_script_refuses_malformed_variants(flickr8k_root, tmp_path, variants, complaints):
    result = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce_flickr8k_attention.sh"), str(flickr8k_root),
                             str(tmp_path / "c"), str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "VARIANTS": variants, "ARMS": "k40tuneqema softtuneema",
                                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 2 and all(complaint in result.stderr for complaint in complaints), result.stderr
    assert not (tmp_path / "o").exists()  # refused before anything is written


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_the_attention_script_runs_variants_of_the_arms_in_one_job(flickr8k_root, tmp_path):
    out = _run_tiny("reproduce_flickr8k_attention.sh", flickr8k_root, tmp_path, ARMS="soft k40", SEEDS="0",
                    DECODES="no", VARIANTS="- isd025:model.initial_state_dropout=0.25 "
                                           "late:train.initial_state_dropout_decay=0.5,model.dropout=0.1")
    table = json.loads((out / "table.json").read_text())
    assert sorted(table) == ["k40", "k40-isd025", "k40-late", "soft", "soft-isd025", "soft-late"]
    config = {name: yaml.safe_load((out / "runs" / f"{name}-s0" / "config.yaml").read_text()) for name in table}
    for arm in ("soft", "k40"):
        plain, isd, late = config[arm], config[f"{arm}-isd025"], config[f"{arm}-late"]
        assert (plain["model"]["initial_state_dropout"], plain["train"]["initial_state_dropout_decay"]) == (0.75, 0.0)
        assert (isd["model"]["initial_state_dropout"], isd["train"]["initial_state_dropout_decay"]) == (0.25, 0.0)
        assert (late["model"]["initial_state_dropout"], late["train"]["initial_state_dropout_decay"]) == (0.75, 0.5)
        assert (plain["model"]["dropout"], isd["model"]["dropout"], late["model"]["dropout"]) == (0.5, 0.5, 0.1)
        assert {c["model"]["hidden_dim"] for c in (plain, isd, late)} == {32}  # EXTRA_SETS reach every variant
    assert json.loads((out / "runs" / "k40-isd025-s0" / "spread-marginal.json").read_text())["images"] == 4
    kinds = json.loads((out / "word_classes.json").read_text())["arms"]
    assert sorted(kinds) == sorted(table)
