"""README's speed table (benchmarks/speed_table.py): rendered from the benchmarks' JSON, written
between its markers only, refused without them; the committed measurements give README's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import speed_table
from benchmarks.speed_table import END, START, SpeedTableError

REPO = Path(__file__).resolve().parents[1]
GRAPHS = REPO / "eval" / "bench" / "graphs"


def committed() -> tuple[list[Path], list[Path]]:
    return [GRAPHS / "bench_train.json"], sorted((GRAPHS / "epochs").glob("*.json"))


def rows(table: str) -> dict[str, list[str]]:
    """The table's rows by label: their cells."""
    out = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


def test_the_committed_measurements_give_the_numbers_readme_had():
    train, epoch = committed()
    table = speed_table.render(speed_table.read_sources(train, epoch), REPO)
    got = rows(table)
    assert got["one WS-RAM (K = 5) update, Flickr8k shapes"] == ["not measured", "27.3 ms, 29.3k/s",
                                                                "**8.13 ms, 98.4k/s**"]
    assert got["one WS-RAM (K = 5) update, COCO-like shapes"][1:] == ["40.3 ms, 39.7k/s", "**20.2 ms, 79.1k/s**"]
    assert got["one soft update, COCO-like shapes"][1:] == ["94.5 ms, 16.9k/s", "**73.3 ms, 21.8k/s**"]
    var = got["one VAR update, Flickr8k shapes"]
    assert var[0] == speed_table.WORD_BY_WORD and var[1].startswith("72.9 ms") and "failed" in var[2]
    epochs = {label.split(",")[1].split("(")[0].strip(): cells for label, cells in got.items() if "epoch" in label}
    assert epochs["WS-RAM"][1:] == ["5.23 s, 28.7k/s", "**1.54 s, 97.4k/s**"]
    assert [c.split(",")[0].strip("*") for c in epochs["VAR"][1:]] == ["13.6 s", "1.87 s"]
    assert [c.split(",")[0].strip("*") for c in epochs["soft"][1:]] == ["13.5 s", "2.04 s"]
    assert "NVIDIA H200, torch 2.11.0+cu130, CUDA 13.0" in table
    assert "`eval/bench/graphs/bench_train.json`" in table and "`/" not in table  # no absolute paths


def test_readme_holds_the_table_the_committed_files_give():
    """README's table: the one-run variants measurement (2026-12-02), the earlier epochs beside."""
    variants = REPO / "eval" / "bench" / "variants"
    train = [variants / "train" / "results.json"]
    epoch = committed()[1] + [variants / "epochs" / "epoch-wsram.json"]
    argv = ["--train", *map(str, train), "--epoch", *map(str, epoch), "--readme", str(REPO / "README.md"), "--check"]
    assert speed_table.main(argv) == 0


def _train_file(path: Path) -> Path:
    def timed(variant: str, ms: float, samples: int = 1) -> dict:
        return {"shape": "flickr8k", "variant": variant, "estimator": variant.split("-")[0],
                "seconds_per_update": ms / 1000, "caption_samples_per_second": 800 / (ms / 1000),
                "samples_per_caption": samples, "locations": 49, "hidden_dim": 1024, "vocabulary": 2543,
                "caption_samples_per_update": 800}

    results = [timed("wsram-stepwise", 50.0, 5), timed("wsram-fast", 20.0, 5),
               {"shape": "flickr8k", "variant": "wsram-graphed", "estimator": "wsram", "available": False,
                "reason": "wsram-graphed needs CUDA"},
               timed("var", 70.0),
               {"shape": "flickr8k", "variant": "var-graphed", "estimator": "var", "error": "RuntimeError: boom"}]
    path.write_text(json.dumps({"device": "Some GPU", "torch": "2.0", "cuda": "12.0", "results": results}))
    return path


def _epoch_record(variant: str, seconds: float) -> dict:
    return {"variant": variant, "available": True, "estimator": "wsram", "samples_per_caption": 5,
            "config": "eval/flickr8k/wsram.yaml", "device": "Some GPU", "torch": "2.0", "cuda": "12.0",
            "epochs": [{"captions": 300, "seconds": 9.0}, {"captions": 300, "seconds": seconds}],
            "mean_epoch_seconds_after_first": seconds, "caption_samples_per_second_after_first": 1500 / seconds}


def test_cells_say_measured_failed_not_available_or_not_measured(tmp_path):
    epoch = tmp_path / "epoch.json"
    epoch.write_text(json.dumps({"config": "eval/flickr8k/wsram.yaml", "device": "Some GPU", "torch": "2.0",
                                 "cuda": "12.0", "results": [
                                     {"variant": "graphed", "available": False, "reason": "needs CUDA"},
                                     _epoch_record("eager", 2.0), _epoch_record("stepwise", 4.0)]}))
    table = speed_table.render(speed_table.read_sources([_train_file(tmp_path / "results.json")], [epoch]), tmp_path)
    got = rows(table)
    assert got["one WS-RAM (K = 5) update, Flickr8k shapes"] == ["50.0 ms, 16.0k/s", "**20.0 ms, 40.0k/s**",
                                                                "not available here"]
    assert got["one VAR update, Flickr8k shapes"] == [speed_table.WORD_BY_WORD, "70.0 ms, 11.4k/s",
                                                     "failed in this run (RuntimeError)"]
    assert "one soft update, Flickr8k shapes" not in got  # nothing measured: no row
    label = "one epoch of the real Trainer, WS-RAM (K = 5) (`eval/flickr8k/wsram.yaml`, 300 captions)"
    assert got[label] == ["4.00 s, 375/s", "**2.00 s, 750/s**", "not available here"]
    assert "Measured on Some GPU, torch 2.0, CUDA 12.0" in table
    assert str(tmp_path) not in table  # file names relative to the README's folder


def test_single_mode_epoch_files_are_read_by_their_settings(tmp_path):
    def single(name: str, seconds: float, **extra) -> Path:
        record = {key: value for key, value in _epoch_record("", seconds).items()
                  if key not in ("variant", "available")}
        path = tmp_path / name
        path.write_text(json.dumps({**record, **extra}))
        return path

    files = [single("old-graphs.json", 1.0, overrides=["train.cuda_graphs=true"]),
             single("old-eager.json", 3.0, overrides=["data.features=CACHE", "train.cuda_graphs=false"]),
             single("new-stepwise.json", 6.0, cuda_graphs=False, layout="stepwise")]
    got = rows(speed_table.render(speed_table.read_sources([], files), tmp_path))
    (cells,) = got.values()
    assert [c.split(",")[0].strip("*") for c in cells] == ["6.00 s", "3.00 s", "1.00 s"]
    assert speed_table.epoch_variant({"overrides": []}) == "eager"  # written before CUDA graphs existed


def test_only_the_text_between_the_markers_is_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n\n{START}\nold table\n{END}\n\nafter\n")
    train = _train_file(tmp_path / "results.json")
    assert speed_table.main(["--train", str(train), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# Title\n\nbefore\n\n{START}\n| | per-step loop | eager | CUDA graphs |")
    assert text.endswith(f"\n{END}\n\nafter\n") and "old table" not in text
    assert speed_table.main(["--train", str(train), "--readme", str(readme), "--check"]) == 0
    readme.write_text(text.replace("20.0 ms", "19.0 ms"))
    assert speed_table.main(["--train", str(train), "--readme", str(readme), "--check"]) == 1


@pytest.mark.parametrize("text", ["no markers at all\n", f"{START}\nonly the start\n", f"{END}\n{START}\n",
                                  f"{START}\n{END}\n{START}\n{END}\n"])
def test_a_readme_without_its_markers_is_refused(tmp_path, capsys, text):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    assert speed_table.main(["--train", str(_train_file(tmp_path / "results.json")), "--readme", str(readme)]) == 2
    assert "speed-table" in capsys.readouterr().err
    assert readme.read_text() == text
    with pytest.raises(SpeedTableError, match="speed-table"):
        speed_table.replace_between_markers(text, "table")


def test_inputs_that_are_not_benchmark_json_are_refused(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(SpeedTableError, match="bench_train"):
        speed_table.read_sources([other], [])
    with pytest.raises(SpeedTableError, match="bench_epoch"):
        speed_table.read_sources([], [other])
    with pytest.raises(SpeedTableError, match="no such file"):
        speed_table.read_sources([tmp_path / "missing.json"], [])
