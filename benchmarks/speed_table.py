"""README's speed table, from what bench_train and bench_epoch wrote: the per-step loop, eager, CUDA graphs.

    python -m benchmarks.speed_table --train eval/bench/graphs/bench_train.json \\
        --epoch eval/bench/graphs/epochs/*.json --readme README.md [--check]

Reads bench_train's results.json (`--train`, one or more; a later file's (shape, variant) replaces
an earlier one's) and bench_epoch's JSON (`--epoch`, one or more: a `--variants` run's file, with a
record per variant, or a single-mode file, whose variant is read from its `cuda_graphs` and `layout`,
or for files written before those were recorded from its `--set train.cuda_graphs=` and
`research.layout=`; neither: eager, as before CUDA graphs existed). Renders one markdown table:
a row per update shape and estimator (WS-RAM, VAR, soft at bench_train's Flickr8k and COCO-like
shapes) and per estimator's epoch of the real Trainer; columns the per-step reference loop
(bench_train's wsram-stepwise, bench_epoch's stepwise), eager (WS-RAM with its compiled kernels,
the Trainer's default without graphs) and CUDA graphs, each cell milliseconds (seconds for an
epoch) and caption-samples per second, the fastest of a row in bold. A cell with no record says
"not measured", a failed variant "failed", one that could not run "not available"; VAR and soft
run word by word in every layout, so their per-step cell points at their eager one. Under the
table: the card(s), torch and CUDA versions, and the files read.

With --readme the table replaces whatever is between the lines `<!-- speed-table:start -->` and
`<!-- speed-table:end -->` of that file (an error naming the file if they are missing, repeated or
out of order); --check then writes nothing and exits 1 when the file is not what this would write.
Without --readme the table is printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from captioner.files import atomic_write_text

START = "<!-- speed-table:start -->"
END = "<!-- speed-table:end -->"
COLUMNS = ("stepwise", "eager", "graphed")
HEADERS = {"stepwise": "per-step loop", "eager": "eager", "graphed": "CUDA graphs"}
ESTIMATORS = ("wsram", "var", "soft")
# bench_train's variant for each (estimator, column).
TRAIN_VARIANTS = {
    "wsram": {"stepwise": "wsram-stepwise", "eager": "wsram-fast", "graphed": "wsram-graphed"},
    "var": {"eager": "var", "graphed": "var-graphed"},
    "soft": {"eager": "soft", "graphed": "soft-graphed"},
}
SHAPE_NAMES = {"flickr8k": "Flickr8k shapes", "coco": "COCO-like shapes"}
WORD_BY_WORD = "= eager (word by word)"
NOT_MEASURED = "not measured"


class SpeedTableError(ValueError):
    """An input or README that the table cannot be made from; the message says which and why."""


@dataclass
class Sources:
    """What was read: bench_train results by (shape, variant), bench_epoch results by (estimator,
    variant), and the cards and files behind them."""

    train: dict[tuple[str, str], dict] = field(default_factory=dict)
    epoch: dict[tuple[str, str], dict] = field(default_factory=dict)
    cards: list[str] = field(default_factory=list)
    train_files: list[Path] = field(default_factory=list)
    epoch_files: list[Path] = field(default_factory=list)


def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SpeedTableError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise SpeedTableError(f"{path}: not JSON ({error})") from None


def card_text(record: dict) -> str | None:
    if not record.get("device"):
        return None
    text = f"{record['device']}, torch {record.get('torch', '?')}"
    return text + (f", CUDA {record['cuda']}" if record.get("cuda") else "")


def _add_card(sources: Sources, record: dict) -> None:
    text = card_text(record)
    if text is None:
        return
    # A record without the CUDA version (bench_epoch before it recorded one) is the same card as one
    # with it when the device and torch agree.
    for index, known in enumerate(sources.cards):
        if known == text or known.startswith(text + ","):
            return
        if text.startswith(known + ","):
            sources.cards[index] = text
            return
    sources.cards.append(text)


def epoch_variant(record: dict) -> str:
    """graphed, eager or stepwise: how a single-mode bench_epoch record ran its update."""
    if "cuda_graphs" in record:
        if record.get("layout") == "stepwise":
            return "stepwise"
        return "graphed" if record["cuda_graphs"] else "eager"
    settings = dict(o.split("=", 1) for o in record.get("overrides", []) if "=" in o)
    if settings.get("research.layout", settings.get("estimator.layout")) == "stepwise":
        return "stepwise"
    return "graphed" if settings.get("train.cuda_graphs", "false").lower() == "true" else "eager"


def read_sources(train: list[Path], epoch: list[Path]) -> Sources:
    sources = Sources()
    for path in train:
        record = _read(path)
        if not isinstance(record.get("results"), list):
            raise SpeedTableError(f"{path}: not a bench_train results.json (no 'results' list)")
        _add_card(sources, record)
        for result in record["results"]:
            sources.train[(result["shape"], result["variant"])] = result
        sources.train_files.append(Path(path))
    for path in epoch:
        record = _read(path)
        if isinstance(record.get("results"), list):  # a --variants run
            for result in record["results"]:
                if "estimator" not in result:  # not run: the estimator is the config's
                    result = {**result, "estimator": _config_estimator(record, path)}
                sources.epoch[(result["estimator"], result["variant"])] = {**result, "config": record.get("config")}
                _add_card(sources, result)
            _add_card(sources, record)
        elif "mean_epoch_seconds_after_first" in record:
            sources.epoch[(record["estimator"], epoch_variant(record))] = record
            _add_card(sources, record)
        else:
            raise SpeedTableError(f"{path}: not a bench_epoch JSON (neither 'results' nor "
                                  "'mean_epoch_seconds_after_first')")
        sources.epoch_files.append(Path(path))
    return sources


def _config_estimator(record: dict, path: Path) -> str:
    for result in record["results"]:
        if "estimator" in result:
            return result["estimator"]
    from captioner.config import load_config

    try:
        return load_config(record["config"], record.get("overrides", [])).estimator.name
    except Exception as error:
        raise SpeedTableError(f"{path}: no variant ran and the config {record.get('config')} cannot be read "
                              f"to name the estimator ({error})") from None


def number(value: float) -> str:
    """Three figures (more from 1,000 up), thousands as k: 8.13, 27.3, 101, 98.4k, 11.0k, 2.20k."""
    if value >= 1000:
        return number(value / 1000) + "k"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _missing(result: dict | None) -> str | None:
    if result is None:
        return NOT_MEASURED
    if "error" in result:
        return f"failed in this run ({result['error'].split(':')[0].strip()})"
    if result.get("available") is False:
        return "not available here"
    return None


def train_cell(result: dict | None) -> tuple[str, float | None]:
    missing = _missing(result)
    if missing:
        return missing, None
    seconds = result["seconds_per_update"]
    return f"{number(1000 * seconds)} ms, {number(result['caption_samples_per_second'])}/s", seconds


def epoch_cell(result: dict | None) -> tuple[str, float | None]:
    missing = _missing(result)
    if missing:
        return missing, None
    seconds = result["mean_epoch_seconds_after_first"]
    return f"{number(seconds)} s, {number(result['caption_samples_per_second_after_first'])}/s", seconds


def _row(label: str, cells: list[tuple[str, float | None]]) -> str:
    times = [s for _, s in cells if s is not None]
    best = min(times) if len(times) > 1 else None
    texts = [f"**{text}**" if seconds is not None and seconds == best else text for text, seconds in cells]
    return "| " + " | ".join([label] + texts) + " |"


def estimator_name(estimator: str, samples: int | None) -> str:
    return {"wsram": f"WS-RAM (K = {samples})" if samples else "WS-RAM", "var": "VAR", "soft": "soft"}[estimator]


def shape_name(shape: str) -> str:
    return SHAPE_NAMES.get(shape, f"{shape} shapes")


def shape_note(shape: str, records: list[dict]) -> str | None:
    """What a shape is, from its records: "Flickr8k shapes: L = 49, H = 1024, V = 2,543, 800
    caption-samples an update"."""
    timed = [r for r in records if "seconds_per_update" in r]
    if not timed:
        return None
    r = timed[0]
    return (f"{shape_name(shape)}: L = {r['locations']}, H = {r['hidden_dim']}, V = {r['vocabulary']:,}, "
            f"{r['caption_samples_per_update']:,} caption-samples an update")


def where(path: Path, base: Path) -> str:
    """`path` as the README should show it: relative to `base`, else to the working directory, else
    its name alone (never an absolute path of this machine)."""
    resolved = Path(path).resolve()
    for root in (base.resolve(), Path.cwd().resolve()):
        try:
            return resolved.relative_to(root).as_posix()
        except ValueError:
            continue
    return resolved.name


def _files(paths: list[Path], base: Path) -> str:
    shown: dict[str, int] = {}
    for path in paths:
        folder = where(Path(path).parent, base)
        shown[folder] = shown.get(folder, 0) + 1
    parts = []
    for path in paths:
        folder = where(Path(path).parent, base)
        text = f"`{folder}/`" if shown[folder] > 1 else f"`{where(path, base)}`"
        if text not in parts:
            parts.append(text)
    return ", ".join(parts)


def render(sources: Sources, base: Path = Path(".")) -> str:
    """The markdown table (no trailing newline); `base`: where the README lies, for the file names."""
    lines = ["| | " + " | ".join(HEADERS[c] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    shapes = list(dict.fromkeys(shape for shape, _ in sources.train))
    shape_notes = []
    for shape in shapes:
        records = [r for (s, _), r in sources.train.items() if s == shape]
        note = shape_note(shape, records)
        if note:
            shape_notes.append(note)
        for estimator in ESTIMATORS:
            variants = TRAIN_VARIANTS[estimator]
            found = {c: sources.train.get((shape, v)) for c, v in variants.items()}
            if not any(found.values()):
                continue
            samples = next((r.get("samples_per_caption") for r in found.values() if r and "samples_per_caption" in r),
                           None)
            cells = [(WORD_BY_WORD, None) if column not in variants else train_cell(found[column])
                     for column in COLUMNS]
            label = f"one {estimator_name(estimator, samples)} update, {shape_name(shape)}"
            lines.append(_row(label, cells))
    for estimator in ESTIMATORS:
        found = {c: sources.epoch.get((estimator, c)) for c in COLUMNS}
        if not any(found.values()):
            continue
        timed = [r for r in found.values() if r and "mean_epoch_seconds_after_first" in r]
        samples = timed[0].get("samples_per_caption") if timed else None
        cells = []
        for column in COLUMNS:
            result = found[column]
            if column == "stepwise" and estimator != "wsram" and (result is None or "reason" in result):
                cells.append((WORD_BY_WORD, None))
            else:
                cells.append(epoch_cell(result))
        config = next((r.get("config") for r in found.values() if r and r.get("config")), None)
        about = ", ".join(([f"`{config}`"] if config else [])
                          + ([f"{timed[0]['epochs'][0]['captions']:,} captions"] if timed else []))
        label = f"one epoch of the real Trainer, {estimator_name(estimator, samples)}"
        label += f" ({about})" if about else ""
        lines.append(_row(label, cells))
    if len(lines) == 2:
        raise SpeedTableError("nothing to tabulate: no bench_train or bench_epoch result was read")
    notes = []
    if sources.cards:
        notes.append("Measured on " + "; ".join(sources.cards))
    files = ([f"updates {_files(sources.train_files, base)}"] if sources.train_files else []) + (
        [f"epochs {_files(sources.epoch_files, base)}"] if sources.epoch_files else [])
    if files:
        notes.append("from " + "; ".join(files))
    lines += ["", ", ".join(notes) + ". Each cell: milliseconds per update (seconds per epoch, the mean after "
                                    "the first) and caption-samples per second"
              + "".join(f"; {note}" for note in shape_notes) + "."]
    return "\n".join(lines)


def replace_between_markers(text: str, table: str, name: str = "README") -> str:
    """`text` with what lies between the START and END lines replaced by `table`."""
    starts = [m.start() for m in re.finditer(re.escape(START), text)]
    ends = [m.start() for m in re.finditer(re.escape(END), text)]
    if len(starts) != 1 or len(ends) != 1:
        raise SpeedTableError(f"{name}: needs exactly one {START} line and one {END} line around the speed "
                              f"table (found {len(starts)} and {len(ends)})")
    start, end = starts[0] + len(START), ends[0]
    if end < start:
        raise SpeedTableError(f"{name}: {END} comes before {START}")
    return text[:start] + "\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, nargs="+", action="extend", default=[],
                        help="bench_train results.json file(s)")
    parser.add_argument("--epoch", type=Path, nargs="+", action="extend", default=[],
                        help="bench_epoch JSON file(s)")
    parser.add_argument("--readme", type=Path, help=f"replace the table between {START} and {END} of this file")
    parser.add_argument("--check", action="store_true", help="with --readme: write nothing, exit 1 if it differs")
    args = parser.parse_args(argv)
    if not args.train and not args.epoch:
        parser.error("give --train and/or --epoch files")
    if args.check and not args.readme:
        parser.error("--check needs --readme")
    try:
        sources = read_sources(args.train, args.epoch)
        table = render(sources, args.readme.parent if args.readme else Path("."))
        if not args.readme:
            print(table)
            return 0
        if not args.readme.is_file():
            raise SpeedTableError(f"{args.readme}: no such file")
        old = args.readme.read_text()
        new = replace_between_markers(old, table, str(args.readme))
    except SpeedTableError as error:
        print(f"speed_table: {error}", file=sys.stderr)
        return 2
    if args.check:
        if new != old:
            print(f"{args.readme}: the speed table is not what the files give; rerun without --check",
                  file=sys.stderr)
            return 1
        return 0
    if new != old:
        atomic_write_text(args.readme, new)
    print(f"{args.readme}: speed table {'rewritten' if new != old else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
