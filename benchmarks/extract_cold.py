"""A cold `captioner extract`, whole process, old against new (issue 17, item 3; a benchmark, not a test).

    python -m benchmarks.extract_cold --config eval/flickr8k/wsram.yaml --set data.root=DATA \\
        --out-dir /tmp/x --json OUT/extract_cold.json --device cuda --repeats 2 [--storage int8] \\
        [--variants before,default,...] [--workers N] [--timeout S] [--keep]

For each repeat and each variant, runs a FRESH `python -m captioner.cli extract` process into a new,
empty folder (nothing is resumed), times it from outside (wall seconds of the subprocess, interpreter
exit included) and reads the `phases` of its extraction.json (seconds since that process started:
imports, records, backbone, CUDA, first batch read / decoded / encoded, loop end, files written).
The very first run of the job is the "fresh machine" one (cold page cache, CUDA and cuDNN never
started since boot of this job): `--fresh-variant` (default "default") goes first; every later run is
"warm". `--warm-machine` says the machine has done this work before, and no run is marked fresh.
A variant that fails is recorded with its stderr tail and the rest still run. Writes one
JSON with every run and the card of the machine, and prints a table. A run that skips an image for
non-finite features fails (real photos give none). With `--compare-to VARIANT` every run's cache is kept
until the end and its features are compared with that variant's first run, image by image (relative L2 difference; bf16 rounding gives about 1e-2, a corrupted image about
1): a run with an image beyond `--tolerance` fails, so a speed switch cannot buy speed with wrong
features.

Variants (flags of `captioner extract`; env CAPTIONER_EXTRACT_IMPORT_TORCHVISION=1 is the old import):
  before            everything as before issue 17: torchvision imported, batch 64, 1 batch read ahead,
                    nothing started early, no warm-up, host sync/quantise per batch, shards written inline
  default           the new defaults
  torchvision-import, no-early-read, no-early-cuda, no-warmup, no-device-quantize, no-async-copy,
  no-background-write, prefetch1, batch64, batch256, batch512, workers8: default with one switch
  changed (batch64 is the default batch on CUDA since the decode barrier; batch256 the one before)
  bf16-contiguous, fp16, fp16-contiguous, fp32, fp32-channels-last: the first-batch candidates
  pil: default with PIL decoding in the reader threads (--decode pil)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OLD_IMPORT = {"CAPTIONER_EXTRACT_IMPORT_TORCHVISION": "1"}
BEFORE = ["--batch-size", "64", "--prefetch", "1", "--no-early-read", "--no-early-cuda", "--no-warmup",
          "--no-device-quantize", "--no-async-copy", "--no-background-write", "--precision", "bf16",
          "--channels-last"]
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "before": (BEFORE, OLD_IMPORT),
    "default": ([], {}),
    "torchvision-import": ([], OLD_IMPORT),
    "no-early-read": (["--no-early-read"], {}),
    "no-early-cuda": (["--no-early-cuda"], {}),
    "no-warmup": (["--no-warmup"], {}),
    "no-device-quantize": (["--no-device-quantize"], {}),
    "no-async-copy": (["--no-async-copy"], {}),
    "no-background-write": (["--no-background-write"], {}),
    "prefetch1": (["--prefetch", "1"], {}),
    "batch64": (["--batch-size", "64"], {}),
    "batch256": (["--batch-size", "256"], {}),
    "batch512": (["--batch-size", "512"], {}),
    "workers8": (["--workers", "8"], {}),
    "bf16-contiguous": (["--precision", "bf16", "--no-channels-last"], {}),
    "fp16": (["--precision", "fp16", "--channels-last"], {}),
    "fp16-contiguous": (["--precision", "fp16", "--no-channels-last"], {}),
    "fp32": (["--precision", "fp32", "--no-channels-last"], {}),
    "fp32-channels-last": (["--precision", "fp32", "--channels-last"], {}),
    "pil": (["--decode", "pil"], {}),
}


def run_one(name: str, args: argparse.Namespace, out: Path, job_index: int, repeat: int) -> dict:
    flags, env = VARIANTS[name]
    command = [sys.executable, "-m", "captioner.cli", "extract", "--config", str(args.config), "--out", str(out),
               "--quiet", "--storage", args.storage, "--device", args.device]
    for item in args.overrides:
        command += ["--set", item]
    if args.workers is not None and "--workers" not in flags:
        command += ["--workers", str(args.workers)]
    command += flags
    record = {"variant": name, "repeat": repeat, "job_index": job_index,
              "fresh_machine": job_index == 0 and not args.warm_machine,
              "command": command, "env": env, "flags": flags}
    begin = time.perf_counter()
    try:
        done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=args.timeout)
        record["rc"], stderr, stdout = done.returncode, done.stderr, done.stdout
    except subprocess.TimeoutExpired as error:
        record["rc"] = "timeout"
        stderr = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else (error.stderr or "")
        stdout = ""
    record["wall_seconds"] = round(time.perf_counter() - begin, 4)
    report_path = out / "extraction.json"
    if record["rc"] == 0 and report_path.is_file():
        report = json.loads(report_path.read_text())
        record["ok"] = True
        record["extraction"] = report
        phases = report.get("phases") or {}
        record["whole_process_seconds"] = phases.get("whole_process_seconds")
        written = report.get("written_this_run") or 0
        record["images"] = written
        record["images_per_second_wall"] = written / record["wall_seconds"] if record["wall_seconds"] > 0 else None
        record["images_per_second_whole_process"] = phases.get("images_per_second_whole_process")
        record["images_per_second_loop"] = phases.get("images_per_second_loop")
        record["first_batch_seconds"] = report.get("first_batch_seconds")
        record["stdout_tail"] = stdout[-1000:]
        counts = (report.get("skipped") or {}).get("counts") or {}
        record["non_finite_skips"] = sum(n for reason, n in counts.items() if reason.startswith("non-finite"))
        if record["non_finite_skips"]:
            record["ok"] = False
            record["stderr_tail"] = f"{record['non_finite_skips']} images skipped for non-finite features"
    else:
        record["ok"] = False
        record["stderr_tail"] = stderr[-4000:]
        record["stdout_tail"] = stdout[-1000:]
    record["cache"] = str(out)
    if not args.keep and args.compare_to is None:  # with --compare-to, removed after the comparisons
        shutil.rmtree(out, ignore_errors=True)
    return record


def compare_caches(reference: Path, other: Path, tolerance: float) -> dict:
    """Image by image, the relative L2 difference of `other`'s features from `reference`'s."""
    import numpy as np

    from captioner.data.feature_cache import FeatureCache

    ref, new = FeatureCache(reference), FeatureCache(other)
    ids = sorted(ref.index)
    present = [i for i in ids if i in new]
    worst: list[tuple[float, str]] = []
    beyond = 0
    for first in range(0, len(present), 256):
        chunk = present[first:first + 256]
        a = ref.get(chunk).flatten(1).double()
        b = new.get(chunk).flatten(1).double()
        rel = ((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)).numpy()
        beyond += int((rel > tolerance).sum())
        worst += [(float(r), i) for r, i in zip(rel, chunk)]
    worst.sort(reverse=True)
    values = np.array([r for r, _ in worst]) if worst else np.zeros(1)
    return {"reference": str(reference.name), "images": len(present), "missing": len(ids) - len(present),
            "tolerance": tolerance, "beyond_tolerance": beyond, "median_relative_l2": float(np.median(values)),
            "max_relative_l2": float(values.max()), "worst": worst[:5]}


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(runs: list[dict]) -> str:
    lines = [f"{'variant':22s} {'rep':>3s} {'fresh':>5s} {'wall s':>7s} {'proc s':>7s} {'img/s wall':>10s} "
             f"{'img/s proc':>10s} {'img/s loop':>10s} {'1st batch s':>11s}  phases (s since start)"]
    for run in runs:
        if not run["ok"]:
            tail = (run.get("stderr_tail") or "").strip().splitlines()[-1:] or [""]
            lines.append(f"{run['variant']:22s} {run['repeat']:3d} {str(run['fresh_machine']):>5s} "
                         f"{_fmt(run['wall_seconds']):>7s}  FAILED rc={run['rc']}: {tail[0][:100]}")
            continue
        phases = (run["extraction"].get("phases") or {}).get("seconds_since_process_start") or {}
        short = " ".join(f"{key.split('_')[0][:6]}{'_' + key.split('_')[-1][:4] if '_' in key else ''}={value:.2f}"
                         for key, value in phases.items())
        lines.append(f"{run['variant']:22s} {run['repeat']:3d} {str(run['fresh_machine']):>5s} "
                     f"{_fmt(run['wall_seconds']):>7s} {_fmt(run['whole_process_seconds']):>7s} "
                     f"{_fmt(run['images_per_second_wall'], 0):>10s} {_fmt(run['images_per_second_whole_process'], 0):>10s} "
                     f"{_fmt(run['images_per_second_loop'], 0):>10s} {_fmt(run['first_batch_seconds']):>11s}  {short}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out-dir", type=Path, required=True, help="a new folder per run is made under it")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--fresh-variant", default="default", help="the variant run first (the fresh-machine run)")
    parser.add_argument("--warm-machine", action="store_true",
                        help="the machine has run this job's work before (page cache, CUDA): mark no run fresh")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--storage", choices=("float16", "int8"), default="float16")
    parser.add_argument("--workers", type=int, help="--workers of every run (default: captioner extract's)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a run may take")
    parser.add_argument("--keep", action="store_true", help="keep each run's cache folder")
    parser.add_argument("--compare-to", help="a variant whose cache every later run's features are compared with")
    parser.add_argument("--tolerance", type=float, default=0.1, help="relative L2 difference allowed per image")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if args.compare_to is not None and args.compare_to not in names:
        parser.error(f"--compare-to {args.compare_to!r} is not one of the variants run ({', '.join(names)})")
    if args.fresh_variant in names:
        names.remove(args.fresh_variant)
        names.insert(0, args.fresh_variant)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs: list[dict] = []
    started = time.time()

    def save() -> None:
        result = {"benchmark": "extract_cold", "started": started, "seconds": time.time() - started,
                  "argv": sys.argv, "device_arg": args.device, "storage": args.storage, "config": str(args.config),
                  "overrides": args.overrides, "variants": {n: {"flags": VARIANTS[n][0], "env": VARIANTS[n][1]}
                                                            for n in names},
                  "card": card, "runs": runs}
        args.json.write_text(json.dumps(result, indent=1))

    card = None
    job_index = 0
    for repeat in range(args.repeats):
        for name in names:
            out = args.out_dir / f"{stamp}-{job_index:03d}-{name}-r{repeat}"
            if out.exists():
                shutil.rmtree(out)
            run = run_one(name, args, out, job_index, repeat)
            runs.append(run)
            job_index += 1
            print(table([run]).splitlines()[-1], flush=True)
            save()
    try:  # the card after the runs: importing torch and starting CUDA here must not warm the first run
        import torch

        from benchmarks.timing import card as machine_card

        card = machine_card(torch.device(args.device))
    except Exception as error:  # noqa: BLE001
        card = {"error": repr(error)}
    save()
    if args.compare_to is not None:
        reference = next((run for run in runs if run["variant"] == args.compare_to and run["ok"]), None)
        for run in runs:
            if reference is None:
                break
            if run is reference or not run["ok"]:
                continue
            run["comparison"] = compare_caches(Path(reference["cache"]), Path(run["cache"]), args.tolerance)
            if run["comparison"]["beyond_tolerance"] or run["comparison"]["missing"]:
                run["ok"] = False
                run["stderr_tail"] = (f"{run['comparison']['beyond_tolerance']} images beyond tolerance, "
                                      f"{run['comparison']['missing']} missing, against {args.compare_to}")
            print(f"{run['variant']} r{run['repeat']} against {args.compare_to}: {run['comparison']['images']} images, "
                  f"median relative L2 {run['comparison']['median_relative_l2']:.2e}, max "
                  f"{run['comparison']['max_relative_l2']:.2e}, {run['comparison']['beyond_tolerance']} beyond "
                  f"{args.tolerance}", flush=True)
        if reference is None:
            print(f"no successful {args.compare_to} run to compare with", flush=True)
        if not args.keep:
            for run in runs:
                shutil.rmtree(run["cache"], ignore_errors=True)
        save()
    print(table(runs))
    print(f"wrote {args.json}")
    return 0 if all(run["ok"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
