"""Training throughput: caption-samples per second of the full update, and its peak GPU memory.

    python -m benchmarks.bench_train --out eval/bench/h200 [--flickr8k ../shared/data/flickr8k]
    python -m benchmarks.bench_train --out DIR --shapes flickr8k,coco \
        --variants wsram-graphed,wsram-fast,wsram-stepwise,var-graphed,var,soft-graphed,soft

A benchmark, not a test. For two shapes,
- `flickr8k`: the model of eval/flickr8k/wsram.yaml (EfficientNet-Lite0 block15 grids, 7x7x320;
  feature 512, hidden 1024, embedding/attention 512, proposal reader 256; vocabulary 2,543),
  32 images x 5 captions an update; caption lengths drawn from the real training captions when
  --flickr8k points at the data (otherwise every caption is 16 words long, the worst case);
- `coco`: COCO-like sizes (ResNet-101 grids at 448 px, 14x14x2048 -> L = 196, D = 512, H = 1024,
  embedding/attention 512, V = 10,000, T = 16), 1,600 caption-samples an update (WS-RAM: 320
  captions x K = 5; VAR and soft: 1,600 captions),
it times the whole update (proposal, sampling, decoder, prior, loss, backward, clipping, fused
AdamW; `captioner.step.training_update`, the Trainer's own) on cached grids resident on the GPU:
- `wsram-fast`: WS-RAM K = 5, fused layout, bf16, Triton attention kernels
  (captioner/models/attention_kernels.py) and torch.compile'd word scores (the Trainer's default);
- `wsram-inductor`: the same with the attention scores as torch.compile'd reductions instead;
- `wsram-eager`: the same without torch.compile;
- `wsram-stepwise`: the per-step reference loop of the same model (the decoder run word by word,
  as REINFORCE must; eager, bf16), in the same process so that the ratio is on one card;
- `var` and `soft`: the baselines (inherently step by step; eager, bf16);
- `wsram-graphed`, `var-graphed`, `soft-graphed`: the same updates captured in CUDA graphs
  (captioner/graphs.py, the Trainer's default on CUDA; compiled kernels as wsram-fast), replayed.
Each variant runs `--warmup` untimed updates (compilation included) then `--updates` timed ones
between CUDA events. Writes results.json and table.txt under --out (after every shape, so that a run
cut short keeps what it measured), both naming the card (torch.cuda.get_device_name, its memory) and
the torch and CUDA versions. A variant that fails is recorded with its error (in both files) and the
others still run; a graphed variant where graphs cannot run (the CPU, torchrun) is recorded as not
available, with the reason, never timed as an eager update under the graphed name.
`python -m benchmarks.speed_table` renders README's speed table from results.json.

Started by torchrun (`torchrun --standalone --nproc-per-node 2 -m benchmarks.bench_train ...`), every
process takes the update above as its share (weak scaling: the global batch is N times the one-GPU
batch), through the Trainer's own DistributedDataParallel objective and batch sharing, and rank 0
reports the caption-samples per second of the whole group.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from torch.nn.parallel import DistributedDataParallel

from captioner import distributed
from captioner.config import load_config
from captioner.data.batching import CaptionText
from captioner.data.vocabulary import SPECIAL_TOKENS, Vocabulary
from captioner.estimators import ReinforceBaseline
from captioner.files import write_json
from captioner.graphs import GraphedUpdates, graphable
from captioner.models import fused
from captioner.models.captioner import CaptionModel
from captioner.models.noise import BatchShare
from captioner.step import make_optimizer, training_update
from captioner.train import TrainingObjective
from benchmarks.timing import card

FLICKR8K_CONFIG = REPO / "eval" / "flickr8k" / "wsram.yaml"
VARIANTS = ("wsram-graphed", "wsram-fast", "wsram-inductor", "wsram-eager", "wsram-stepwise",
            "var-graphed", "var", "soft-graphed", "soft")


class NotAvailable(RuntimeError):
    """A variant that cannot run here (CUDA graphs without CUDA, or under torchrun): recorded with the
    reason, not timed. The same on every process, so torchrun's processes skip it together."""


@dataclasses.dataclass
class Shape:
    name: str
    overrides: list[str]
    vocabulary_size: int
    images: int  # per update
    captions_per_image: int  # WS-RAM
    samples_per_update: int  # caption-samples an update, every estimator
    max_words: int
    backbone_channels: int
    locations: int


SHAPES = {
    "flickr8k": Shape("flickr8k", [], 2543, 32, 5, 800, 16, 320, 49),
    "coco": Shape("coco", ["model.encoder.name=resnet101", "model.encoder.layer=layer4",
                           "model.encoder.image_size=448", "model.encoder.pretrained=false",
                           "model.proposal_hidden_dim=512"], 10_000, 64, 5, 1600, 15, 2048, 196),
}


def caption_lengths(flickr8k_root: str | None, max_words: int) -> torch.Tensor | None:
    """Word counts (PTB tokens, cut at max_words) of the real Flickr8k training captions, read from
    Flickr8k_text/ alone (the images need not be there), or None."""
    if not flickr8k_root:
        return None
    from captioner.data.vocabulary import tokenize

    text = Path(flickr8k_root) / "Flickr8k_text"
    train = set((text / "Flickr_8k.trainImages.txt").read_text().split())
    lengths = []
    for line in (text / "Flickr8k.token.txt").read_text().splitlines():
        name, _, caption = line.partition("\t")
        if name.split("#")[0] in train:
            lengths.append(min(len(tokenize(caption)), max_words))
    return torch.tensor(lengths)


def make_text(captions: int, max_words: int, vocabulary_size: int, pool: torch.Tensor | None,
              generator: torch.Generator, device: torch.device) -> CaptionText:
    """Random word ids with real (or maximal) lengths, then <eos>, padded to the longest."""
    words = (torch.full((captions,), max_words) if pool is None
             else pool[torch.randint(len(pool), (captions,), generator=generator)])
    steps = int(words.max()) + 1
    targets = torch.randint(len(SPECIAL_TOKENS), vocabulary_size, (captions, steps), generator=generator)
    position = torch.arange(steps)
    targets[position == words.unsqueeze(1)] = 2  # <eos>
    targets[position > words.unsqueeze(1)] = 0  # <pad>
    inputs = torch.cat([torch.ones(captions, 1, dtype=torch.long), targets[:, :-1]], 1)
    inputs[inputs == 2] = 0
    mask = targets != 0
    return CaptionText(inputs, targets, mask, mask.sum(1)).to(device)


def run_variant(shape: Shape, variant: str, args, lengths_pool, device, place: distributed.Distributed) -> dict:
    estimator = variant.split("-")[0]
    graphed = variant.endswith("-graphed")
    if graphed and device.type != "cuda":
        raise NotAvailable(f"{variant} needs CUDA: CUDA graphs need a CUDA device (this run is on {device.type})")
    if graphed and place.active:
        raise NotAvailable(f"{variant}: CUDA graphs are not used under torchrun (one process only)")
    compiled = (variant in ("wsram-fast", "wsram-inductor") or graphed) and device.type == "cuda"
    attention_kernel = "inductor" if variant == "wsram-inductor" else "triton"
    if args.samples_per_update:
        shape = dataclasses.replace(shape, samples_per_update=args.samples_per_update)
    overrides = shape.overrides + list(args.set) + [f"estimator.name={estimator}", "train.device=cuda" if device.type == "cuda"
                                   else "train.device=cpu", "model.encoder.pretrained=false"]
    if variant == "wsram-stepwise":
        overrides.append("research.layout=stepwise")
    if estimator == "soft":
        overrides += ["model.attention=soft", "model.proposal=none"]
    if estimator == "var":
        overrides.append("model.proposal=none")
    config = load_config(str(FLICKR8K_CONFIG), overrides)
    if graphed:
        ok, reason = graphable(config)
        if not ok:
            raise NotAvailable(f"{variant}: {reason}")
    generator = torch.Generator().manual_seed(0)
    vocabulary = Vocabulary(list(SPECIAL_TOKENS) + [f"w{i}" for i in range(shape.vocabulary_size - 4)])
    torch.manual_seed(0)
    model = CaptionModel(config.model, vocabulary, 224, pretrained_backbone=False).to(device)
    model.train()
    optimizer = make_optimizer([{"params": [p for n, p in model.named_parameters()
                                            if p.requires_grad and not n.startswith("encoder.backbone")]}],
                               1e-4, 0.0, device, capturable=graphed)
    samples = config.estimator.samples if estimator == "wsram" else 1
    captions = shape.samples_per_update // samples
    images = max(captions // shape.captions_per_image, 1)
    # A resident pool of cached grids (fp16, as the feature cache stores them), batches gathered on the GPU.
    pool = torch.randn(args.pool_images, shape.locations, shape.backbone_channels, generator=generator,
                       dtype=torch.float32).to(device, torch.float16)
    batches = []
    for _ in range(4):
        text = make_text(captions, shape.max_words, shape.vocabulary_size, lengths_pool, generator, device)
        image_ids = torch.randint(args.pool_images, (images,), generator=generator).to(device)
        rows = torch.arange(images, device=device).repeat_interleave(shape.captions_per_image)[:captions]
        if len(rows) < captions:
            rows = torch.arange(captions, device=device) % images
        batches.append((image_ids, rows, text))
    baseline = distributed.AllReducedBaseline() if place.active else ReinforceBaseline()
    cuda_generator = torch.Generator(device=device).manual_seed(0)
    host_generator = torch.Generator().manual_seed(0)
    objective = None
    if place.active:  # the Trainer's objective and sharing: this process's captions of a global batch
        objective = DistributedDataParallel(TrainingObjective(model, config.estimator, baseline, place.world_size,
                                                              config.research),
                                            device_ids=None)

    def step(inputs: torch.Tensor, rows: torch.Tensor, text: CaptionText) -> dict:
        randomness = cuda_generator
        if objective is not None:
            randomness = BatchShare(cuda_generator, host_generator, place.rank * captions,
                                    (place.rank + 1) * captions, place.world_size * captions)
        return training_update(model, optimizer, inputs, "features", rows, text, config.estimator, baseline,
                               grad_clip=5.0, bf16=True, generator=randomness, loss_module=objective,
                               research=config.research)

    run = GraphedUpdates(step, [cuda_generator]) if graphed else step

    def update(i: int) -> dict:
        image_ids, rows, text = batches[i % len(batches)]
        return run(pool.index_select(0, image_ids).float(), rows, text)

    with fused.compiled_kernels(compiled, attention_kernel):
        start = time.perf_counter()
        for i in range(args.warmup):
            stats = update(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        place.barrier()
        warmup_seconds = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        start = time.perf_counter()
        for i in range(args.updates):
            stats = update(i)
        if device.type == "cuda":
            end.record()
            torch.cuda.synchronize(device)
            seconds = begin.elapsed_time(end) / 1000.0
        else:
            seconds = time.perf_counter() - start
    if args.profile and device.type == "cuda" and not place.active:
        from torch.profiler import ProfilerActivity, profile

        with fused.compiled_kernels(compiled, attention_kernel), profile(activities=[ProfilerActivity.CPU,
                                                                                   ProfilerActivity.CUDA]) as prof:
            for i in range(3):
                update(i)
            torch.cuda.synchronize(device)
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
        (Path(args.out) / f"profile-{shape.name}-{variant}.txt").write_text(table)
    mean_words = sum(float(b[2].lengths.float().mean()) for b in batches) / len(batches)
    return {
        "shape": shape.name, "variant": variant, "estimator": estimator, "layout": config.research.layout,
        "compiled": compiled, "attention_kernel": attention_kernel if compiled else "eager",
        "cuda_graphs": graphed, "graphs_captured": len(run.graphs) if graphed else 0,
        "captions_per_update": captions, "samples_per_caption": samples,
        "caption_samples_per_update": captions * samples * place.world_size, "images_per_update": images,
        "processes": place.world_size, "caption_samples_per_update_per_process": captions * samples,
        "mean_steps_per_caption": mean_words, "updates": args.updates,
        "seconds_per_update": seconds / args.updates,
        "caption_samples_per_second": captions * samples * place.world_size * args.updates / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "warmup_seconds": warmup_seconds, "final_loss": float(stats["loss"]),
        "vocabulary": shape.vocabulary_size, "locations": shape.locations,
        "hidden_dim": config.model.hidden_dim, "feature_dim": config.model.encoder.feature_dim,
    }


def write_records(out: Path, results: list[dict], lines: list[str], place: distributed.Distributed,
                  device: torch.device) -> None:
    launcher = f"torchrun --nproc-per-node {place.world_size}" if distributed.launched_by_torchrun() else "python"
    record = {"command": " ".join([launcher, "-m", "benchmarks.bench_train"] + sys.argv[1:]),
              "processes": place.world_size, **card(device), "results": results}
    write_json(out / "results.json", record, indent=1)
    memory = f" ({record['device_memory_gib']:.0f} GiB)" if record["device_memory_gib"] else ""
    (out / "table.txt").write_text("\n".join([f"# {record['command']}", f"# {record['device']}{memory}, torch "
                                              f"{record['torch']}, CUDA {record['cuda']}"] + lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", default="flickr8k,coco")
    parser.add_argument("--variants", default="wsram-graphed,wsram-fast,wsram-inductor,wsram-eager,wsram-stepwise,"
                                              "var-graphed,var,soft-graphed,soft")
    parser.add_argument("--flickr8k", default=None, help="Flickr8k root, for real caption lengths")
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--pool-images", type=int, default=1024)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every variant (e.g. model.hidden_dim=64 for a smoke run)")
    parser.add_argument("--samples-per-update", type=int, help="caption-samples an update (default: the shape's)")
    parser.add_argument("--profile", action="store_true", help="write a torch.profiler table per variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    unknown = sorted(set(args.shapes.split(",")) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    place = distributed.setup(args.device)
    device = place.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if place.is_main else (lambda *a, **k: None)
    results = []
    lines = []
    header = (f"{'shape':9} {'variant':15} {'samples/update':>14} {'ms/update':>10} {'caption-samples/s':>18} "
              f"{'peak GiB':>9} {'vs stepwise':>11}")
    say(header, flush=True)
    lines.append(header)
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        pool = caption_lengths(args.flickr8k, shape.max_words) if shape_name == "flickr8k" else None
        reference = None
        shape_results = []
        for variant in args.variants.split(","):
            try:
                result = run_variant(shape, variant, args, pool, device, place)
            except NotAvailable as reason:  # the same on every process: recorded, not timed
                say(f"{shape_name:9} {variant:15} not available: {reason}", flush=True)
                shape_results.append({"shape": shape_name, "variant": variant, "estimator": variant.split("-")[0],
                                      "available": False, "reason": str(reason)})
                continue
            except Exception as error:  # one failing variant must not lose the others' numbers
                if place.active:
                    raise
                say(f"{shape_name:9} {variant:15} FAILED: {type(error).__name__}: {error}", flush=True)
                shape_results.append({"shape": shape_name, "variant": variant, "estimator": variant.split("-")[0],
                                      "error": f"{type(error).__name__}: {error}"})
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            result["caption_lengths"] = "real Flickr8k training captions" if pool is not None else f"all {shape.max_words} words"
            shape_results.append(result)
            if variant == "wsram-stepwise":
                reference = result["caption_samples_per_second"]
        for result in shape_results:
            if "seconds_per_update" not in result:
                why = f"not available: {result['reason']}" if "reason" in result else f"FAILED: {result['error']}"
                lines.append(f"{shape_name:9} {result['variant']:15} {why}")
                continue
            result["ratio_to_stepwise_reference"] = (result["caption_samples_per_second"] / reference
                                                     if reference else None)
            ratio = f"{result['ratio_to_stepwise_reference']:.2f}x" if reference else "-"
            memory = f"{result['peak_memory_gib']:.2f}" if result["peak_memory_gib"] is not None else "-"
            line = (f"{shape_name:9} {result['variant']:15} {result['caption_samples_per_update']:>14} "
                    f"{1000 * result['seconds_per_update']:>10.2f} {result['caption_samples_per_second']:>18,.0f} "
                    f"{memory:>9} {ratio:>11}")
            say(line, flush=True)
            lines.append(line)
        results.extend(shape_results)
        if place.is_main:  # after every shape, so that a run cut short keeps what it measured
            write_records(out, results, lines, place, device)
    distributed.shutdown()


if __name__ == "__main__":
    main()
