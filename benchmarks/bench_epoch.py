"""Seconds for one training epoch of the real Trainer on a real feature cache (a benchmark, not a test).

    python -m benchmarks.bench_epoch eval/flickr8k/wsram.yaml --set data.features=CACHE --epochs 3 --out epoch.json
    python -m benchmarks.bench_epoch eval/flickr8k/wsram.yaml --set data.features=CACHE --epochs 2 \\
        --variants graphed,eager,stepwise --out epoch-wsram.json

Builds the Trainer of a config (its data, vocabulary, GPU-resident cache, length-bucketed sampler,
compiled kernels, fused optimiser) and runs `--epochs` whole epochs through the same calls as
`Trainer.train` (sampler plan, grid gather, `Trainer.train_shard`), without validation. Each epoch is
timed between device synchronisations, so its seconds are the wall time the GPU needed for it,
launch overheads included. The first epoch includes torch.compile, Triton autotuning and the
capture of the CUDA graphs: it is reported, and the mean is over the others. Prints and writes one
JSON record, naming the card and the torch and CUDA versions.

With `--variants`, one run times several ways of running the same config's update, each in a child
process of its own (this command with the variant's settings added), and writes one JSON with a
record per variant (`results`) and the card:
- `graphed`: the update in CUDA graphs (`train.cuda_graphs=true`, the Trainer's default on CUDA);
- `eager`: the same update launched kernel by kernel (`train.cuda_graphs=false`; compiled kernels);
- `stepwise`: the per-step reference loop (`research.layout=stepwise`: the decoder run word by word,
  as REINFORCE must; `train.compile=false`, no graphs), as bench_train's wsram-stepwise. WS-RAM
  only: VAR and soft run word by word in every layout, so their eager epoch is their per-step loop.
Child processes, not one process, because the Trainer sets state that outlives it: the compiled
kernels it selects (`fused.use_compiled_kernels`), torch.compile's caches and recompilation
limits, the CUDA graphs' memory pool and the peak-memory counter; a variant timed after another in
the same process would inherit them. A variant that cannot run here (graphed without CUDA, or with a
setting that graphs cannot hold: `captioner.graphs.graphable`) is recorded as not available with
the reason, one that fails with its error, and the others still run; the JSON is rewritten after
every variant. `python -m benchmarks.speed_table` renders README's speed table from it.

Started by torchrun (`torchrun --standalone --nproc-per-node 2 -m benchmarks.bench_epoch ...`), the
Trainer shares every batch across the processes as in `captioner train` (the same global batch:
strong scaling), and rank 0 reports (one mode per run: `--variants` is refused under torchrun).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from captioner import distributed
from captioner.config import load_config
from captioner.files import write_json
from captioner.graphs import graphable
from benchmarks.timing import card, sync

REPO = Path(__file__).resolve().parents[1]
# The settings each variant adds to the config and the --set overrides (after them: they win).
VARIANTS = {
    "graphed": ["train.cuda_graphs=true"],
    "eager": ["train.cuda_graphs=false"],
    "stepwise": ["train.cuda_graphs=false", "research.layout=stepwise", "train.compile=false"],
}


def command_line(processes: int) -> str:
    launcher = f"torchrun --nproc-per-node {processes}" if distributed.launched_by_torchrun() else "python"
    return " ".join([launcher, "-m", "benchmarks.bench_epoch"] + sys.argv[1:])


def time_epochs(config_path: str, overrides: list[str], epochs: int, work: Path) -> dict | None:
    """Run `epochs` epochs of the Trainer of the config; the record (None on ranks other than 0)."""
    from captioner.train import Trainer

    config = load_config(config_path, overrides + ["train.progress_bar=false"])
    trainer = Trainer(config, work)
    device = trainer.device
    samples = config.estimator.samples if config.estimator.name == "wsram" else 1
    trainer.model.train()
    records = []
    for epoch in range(epochs):
        plan = trainer.sampler.plan(epoch, device)
        sync(device)
        trainer.distributed.barrier()
        start = time.perf_counter()
        captions = 0
        for index in range(len(plan)):
            shard = plan.batch(index)
            trainer.train_shard(shard)
            captions += shard.total
        sync(device)
        seconds = time.perf_counter() - start
        record = {"epoch": epoch + 1, "seconds": seconds, "updates": len(plan), "captions": captions,
                  "caption_samples": captions * samples, "caption_samples_per_second": captions * samples / seconds}
        if trainer.distributed.is_main:
            print(json.dumps(record), flush=True)
        records.append(record)
    distributed.shutdown()
    if not trainer.distributed.is_main:
        return None
    timed = records[1:]
    return {
        "command": command_line(trainer.distributed.world_size),
        "processes": trainer.distributed.world_size, "config": config_path, "overrides": overrides,
        "estimator": config.estimator.name, "samples_per_caption": samples,
        "batch_size": config.train.batch_size, "captions_per_image": config.train.captions_per_image,
        "length_bucketing": config.train.length_bucketing, "compile": config.train.compile,
        "attention_kernel": config.research.attention_kernel, "bf16": config.train.bf16,
        "layout": config.research.layout, "cuda_graphs": trainer.graphs is not None,
        "cuda_graphs_off_reason": trainer.graphs_off_reason if trainer.graphs is None else "",
        "graphs_captured": len(trainer.graphs.graphs) if trainer.graphs is not None else 0,
        **card(device),
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "epochs": records, "mean_epoch_seconds_after_first": sum(e["seconds"] for e in timed) / len(timed),
        "caption_samples_per_second_after_first": sum(e["caption_samples"] for e in timed) / sum(
            e["seconds"] for e in timed),
    }


def not_available(config_path: str, variant: str, overrides: list[str]) -> str:
    """Why `variant` cannot run with this config here ("" when it can)."""
    config = load_config(config_path, overrides)
    if variant == "graphed":
        ok, reason = graphable(config)
        if ok and not torch.cuda.is_available():
            ok, reason = False, "CUDA graphs need a CUDA device (none here)"
        return "" if ok else f"graphed needs CUDA graphs: {reason}"
    if variant == "stepwise" and config.estimator.name != "wsram":
        return (f"{config.estimator.name} runs word by word in every layout: its eager epoch is its "
                "per-step loop")
    return ""


def run_child(config_path: str, overrides: list[str], epochs: int, work: Path, out: Path) -> str:
    """This command in a process of its own, one mode; "" or the error (the end of its stderr)."""
    command = [sys.executable, "-m", "benchmarks.bench_epoch", config_path, "--epochs", str(epochs),
               "--work", str(work), "--out", str(out)]
    for override in overrides:
        command += ["--set", override]
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [environment.get("PYTHONPATH")] if p])
    done = subprocess.run(command, env=environment, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode == 0 and out.is_file():
        return ""
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return f"exit status {done.returncode}: {lines[-1].strip() if lines else 'no message'}"


def run_variants(args, variants: list[str]) -> dict:
    """Every variant in a child process; one record with a result per variant (written after each)."""
    # The card as the children saw it (the parent never touches the GPU: no context of its own on it
    # while they run); this process's own view only when no child ran.
    keys = list(card(torch.device("cpu")))
    record = {"command": command_line(1), "config": args.config, "overrides": args.overrides,
              "variants": variants, "epochs": args.epochs, **dict.fromkeys(keys), "results": []}
    with tempfile.TemporaryDirectory() as scratch:
        for variant in variants:
            overrides = VARIANTS[variant] + args.overrides
            print(f"# {variant}: {' '.join('--set ' + o for o in VARIANTS[variant])}", flush=True)
            reason = not_available(args.config, variant, overrides)
            if reason:
                print(f"# {variant}: not available: {reason}", flush=True)
                result = {"variant": variant, "available": False, "reason": reason}
            else:
                out = Path(scratch) / f"{variant}.json"
                error = run_child(args.config, overrides, args.epochs, args.work / variant, out)
                if error:
                    print(f"# {variant}: FAILED: {error}", flush=True)
                    result = {"variant": variant, "error": error}
                else:
                    child = json.loads(out.read_text())
                    child.pop("command")  # the child's command names scratch paths; this run's is above
                    result = {"variant": variant, "available": True, **child}
                    if record["device"] is None:
                        record.update({key: child[key] for key in keys})
            record["results"].append(result)
            if args.out:
                write_json(args.out, record, indent=1)
    if record["device"] is None:
        record.update(card(torch.device("cuda" if torch.cuda.is_available() else "cpu")))
        if args.out:
            write_json(args.out, record, indent=1)
    return record


def summary(result: dict) -> str:
    if "mean_epoch_seconds_after_first" not in result:
        return f"{result['variant']:9} " + (f"not available: {result['reason']}" if "reason" in result
                                            else f"FAILED: {result['error']}")
    return (f"{result['variant']:9} {result['mean_epoch_seconds_after_first']:8.2f} s/epoch "
            f"{result['caption_samples_per_second_after_first']:>12,.0f} caption-samples/s "
            f"(first epoch {result['epochs'][0]['seconds']:.2f} s, {result['graphs_captured']} graphs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to run; the first is the warm-up")
    parser.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)}: each in a child process")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-epoch"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first one compiles)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.variants is None:  # one mode, in this process (the child of a --variants run, too)
        result = time_epochs(args.config, args.overrides, args.epochs, args.work)
        if result is None:
            return
        print(json.dumps({k: v for k, v in result.items() if k != "epochs"}), flush=True)
        if args.out:
            write_json(args.out, result, indent=1)
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser.error(f"unknown variant(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(VARIANTS)}")
    if distributed.launched_by_torchrun():
        parser.error("--variants starts its own processes: run it with python, not torchrun")
    record = run_variants(args, variants)
    print(f"# {record['device']}, torch {record['torch']}, CUDA {record['cuda']}")
    for result in record["results"]:
        print(summary(result), flush=True)


if __name__ == "__main__":
    main()
