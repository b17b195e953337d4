"""Check on a GPU that the CUDA-graphed update (captioner/graphs.py) is the eager update.

    python -m benchmarks.check_graphs --out eval/bench/graphs [--estimators wsram,var,soft]

For each estimator, at the Flickr8k model's shapes (eval/flickr8k/*.yaml, random grids and
captions, bf16, compiled kernels): one eager update to warm up, then from the same parameters,
optimiser state, baseline and seeds, (a) an eager update and (b) the graphed update (capture, then
replay), twice, on two batches of one shape (the second replay reads a new batch through the
graph's input copies). Reports the largest differences of the loss, every statistic, every
gradient and every parameter after the step, and whether they are bit-identical; then the time of
an update, eager and graphed, over `--updates` updates. Writes check.json under --out. A check,
not a test: the CPU suite cannot run CUDA graphs.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from benchmarks.bench_train import FLICKR8K_CONFIG, SHAPES, caption_lengths, make_text
from captioner.config import load_config
from captioner.data.vocabulary import SPECIAL_TOKENS, Vocabulary
from captioner.estimators import ReinforceBaseline
from captioner.graphs import GraphedUpdates
from captioner.models import fused
from captioner.models.captioner import CaptionModel
from captioner.step import make_optimizer, set_learning_rate, training_update


def _snapshot(model, optimizer, baseline):
    return ([p.detach().clone() for p in model.parameters()],
            {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()},
            None if baseline.value is None else baseline.value.clone())


def _restore(model, optimizer, baseline, snapshot):
    """In place: a captured graph reads and writes these very tensors."""
    parameters, state, value = snapshot
    with torch.no_grad():
        for p, saved in zip(model.parameters(), parameters):
            p.copy_(saved)
        for p, s in optimizer.state.items():
            for k, v in s.items():
                v.copy_(state[id(p)][k])
        if value is not None:
            baseline.value.copy_(value)


def _difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def check(estimator: str, args, device, lengths) -> dict:
    shape = SHAPES["flickr8k"]
    overrides = [f"estimator.name={estimator}", "train.device=cuda", "model.encoder.pretrained=false"]
    if estimator == "soft":
        overrides += ["model.attention=soft", "model.proposal=none"]
    if estimator == "var":
        overrides.append("model.proposal=none")
    config = load_config(str(FLICKR8K_CONFIG), overrides)
    vocabulary = Vocabulary(list(SPECIAL_TOKENS) + [f"w{i}" for i in range(shape.vocabulary_size - 4)])
    torch.manual_seed(0)
    model = CaptionModel(config.model, vocabulary, 224, pretrained_backbone=False).to(device).train()
    optimizer = make_optimizer([{"params": [p for n, p in model.named_parameters()
                                            if p.requires_grad and not n.startswith("encoder.backbone")]}],
                               1e-3, 0.0, device, capturable=True)
    baseline = ReinforceBaseline()
    samples = config.estimator.samples if estimator == "wsram" else 1
    captions = shape.samples_per_update // samples if estimator == "wsram" else shape.images * shape.captions_per_image
    images = shape.images
    generator = torch.Generator().manual_seed(1)
    fixed = max(int(lengths.max()) if lengths is not None else shape.max_words, 1)
    batches = []
    for _ in range(3):
        text = make_text(captions, shape.max_words, shape.vocabulary_size, lengths, generator, device)
        while text.inputs.shape[1] != fixed + 1:  # one padded length for every batch: one graph
            text = make_text(captions, shape.max_words, shape.vocabulary_size, lengths, generator, device)
        grids = torch.randn(images, shape.locations, shape.backbone_channels, generator=generator).to(device)
        rows = torch.arange(images, device=device).repeat_interleave(captions // images)
        batches.append((grids, rows, text))
    noise = torch.Generator(device=device)

    def step(inputs, rows, text):
        return training_update(model, optimizer, inputs, "features", rows, text, config.estimator, baseline,
                               config.train.grad_clip, True, noise, research=config.research)

    def seed(i: int) -> None:
        torch.manual_seed(1000 + i)
        noise.manual_seed(2000 + i)

    report = {"estimator": estimator, "captions": captions, "images": images,
              "padded_length": int(batches[0][2].inputs.shape[1]), "comparisons": []}
    with fused.compiled_kernels(True, config.research.attention_kernel):
        seed(0)
        set_learning_rate(optimizer.param_groups[0], 1e-3)
        step(*batches[0])  # warm-up: compiles, creates the optimiser state and VAR's baseline
        graphed = GraphedUpdates(step, [noise], warmup=0)
        for index in (1, 2):
            before = _snapshot(model, optimizer, baseline)
            seed(index)
            eager = {k: v.clone() for k, v in step(*batches[index]).items()}
            eager_grads = [p.grad.detach().clone() for p in optimizer.param_groups[0]["params"]]
            eager_after = [p.detach().clone() for p in model.parameters()]
            _restore(model, optimizer, baseline, before)
            seed(index)
            replayed = graphed(*batches[index])
            graph_grads = [p.grad.detach().clone() for p in optimizer.param_groups[0]["params"]]
            graph_after = [p.detach().clone() for p in model.parameters()]
            stats = {k: _difference(eager[k], replayed[k]) for k in eager}
            grads = [_difference(a, b) for a, b in zip(eager_grads, graph_grads)]
            params = [_difference(a, b) for a, b in zip(eager_after, graph_after)]
            scale = max(float(g.double().abs().max()) for g in eager_grads)
            report["comparisons"].append({
                "batch": index, "loss_eager": float(eager["loss"]), "loss_graphed": float(replayed["loss"]),
                "max_stat_difference": max(stats.values()), "stat_differences": stats,
                "max_gradient_difference": max(grads), "largest_gradient": scale,
                "max_parameter_difference": max(params),
                "bit_identical": max(stats.values()) == 0 and max(grads) == 0 and max(params) == 0})
        # Time: eager and graphed updates alike, new seeds every update.
        timings = {}
        for name, run in (("eager", step), ("graphed", graphed)):
            for i in range(3):
                seed(i)
                run(*batches[i % 3])
            torch.cuda.synchronize(device)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for i in range(args.updates):
                seed(i)
                run(*batches[i % 3])
            end.record()
            torch.cuda.synchronize(device)
            timings[name] = begin.elapsed_time(end) / args.updates
        report["ms_per_update"] = timings
        report["speed_up"] = timings["eager"] / timings["graphed"]
        report["caption_samples_per_second_graphed"] = captions * samples * 1000 / timings["graphed"]
        report["graphs"] = len(graphed.graphs)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--estimators", default="wsram,var,soft")
    parser.add_argument("--flickr8k", default=None, help="Flickr8k root, for real caption lengths")
    parser.add_argument("--updates", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("check_graphs needs a CUDA GPU")
    device = torch.device("cuda")
    lengths = caption_lengths(args.flickr8k, SHAPES["flickr8k"].max_words)
    results = []
    for estimator in args.estimators.split(","):
        try:
            result = check(estimator, args, device, lengths)
        except Exception as error:  # one failing estimator must not lose the others' numbers
            result = {"estimator": estimator, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(result), flush=True)
        results.append(result)
        torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "check.json").write_text(json.dumps({
        "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
