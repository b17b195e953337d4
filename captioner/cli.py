"""The `captioner` command: demo, train, evaluate, caption."""

from __future__ import annotations

import time

_IMPORTED_AT = time.perf_counter()  # a fallback start of the process's clock (captioner.extract.process_start)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from captioner.config import ConfigError, DecodeConfig, config_for_estimator, load_config  # noqa: E402
from captioner.errors import CaptionerError  # noqa: E402
from captioner.outputs import check_file_writable, check_folder_writable, output_error, writing  # noqa: E402

DESCRIPTION = """Hard-attention image captioning trained with wake-sleep importance weighting (WS-RAM).

  captioner demo --out demo-run                 train + evaluate on the built-in scenes data (CPU, minutes)
  captioner extract --config flickr8k.yaml      run a pretrained backbone over a data set once, into a feature cache
  captioner train --config my.yaml --out run    train from a YAML config (with --set key=value overrides)
  captioner evaluate run/model --split test     score a saved model on a split (coco-caption metrics)
  captioner evaluate --results r.json --annotations captions.json   score a COCO results file
  captioner caption run/model photo.jpg ...     caption image files, with --attention-dir for pictures
"""


def _common_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file with settings (sections data, model, estimator, "
                        "train, decode); a run's config.yaml is a complete example")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--estimator", choices=("wsram", "var", "vimco", "soft"),
                        help="training objective (default: the config's, else wsram)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: the config's, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _build_config(args: argparse.Namespace):
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.quiet:
        overrides.append("train.progress_bar=false")
    base = config_for_estimator(args.estimator) if args.estimator else None
    return load_config(args.config, overrides, base=base)


def _decode_overrides(args: argparse.Namespace, decode: DecodeConfig) -> DecodeConfig:
    """The model's decoding settings with the command line's on top."""
    given = {key: getattr(args, key) for key in ("beam_size", "max_length", "length_penalty", "attention_mode",
                                                 "block_trigrams")
             if getattr(args, key, None) is not None}
    return dataclasses.replace(decode, **given)


def _add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam-size", type=int, help="beam size (1 = greedy); default: the model's decoding.json")
    parser.add_argument("--max-length", type=int, help="longest caption in words")
    parser.add_argument("--length-penalty", type=float, help="rank finished beams by log p / length**penalty")
    parser.add_argument("--attention-mode", choices=("argmax", "sample", "expected", "marginal"),
                        help="where the model looks at test time: argmax of pi_t, a sample, the expected glimpse, "
                             "or every location with the words scored by their probability summed over it")
    parser.add_argument("--block-trigrams", action=argparse.BooleanOptionalAction, default=None,
                        help="never repeat a word trigram within a caption (default: the model's decoding.json)")


def command_demo(args: argparse.Namespace) -> int:
    from captioner import distributed
    from captioner.experiment import format_scores, run_experiment

    config = _build_config(args)
    check_folder_writable(args.out)
    main_process = distributed.Distributed.from_environment().is_main
    if main_process:
        print(f"captioner demo: training {config.estimator.name} on the built-in scenes data "
              f"({config.data.scenes.train_size} training images, {config.train.epochs} epochs, {config.train.device})",
              file=sys.stderr)
    try:
        metrics = run_experiment(config, args.out, examples=args.examples)
    finally:
        distributed.shutdown()
    if not main_process:
        return 0
    print(f"test split, beam size {config.decode.beam_size}:")
    print(format_scores({k: metrics[k] for k in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "attention_accuracy",
                                                   "bound_prior", "wall_seconds")}))
    print(f"wrote {args.out}/metrics.json, {args.out}/model, {args.out}/learning_curves.png, "
          f"{args.out}/captions.jsonl and {args.out}/attention/")
    return 0


def command_extract(args: argparse.Namespace) -> int:
    # Imported here, not at the top: the other commands need none of torch's start-up, and extract
    # none of training's, metrics' or plotting's (captioner.extract pulls in only what it runs).
    from captioner.data.feature_cache import ExtractionOptions, resolve_decoder
    from captioner.extract import default_batch_size, run_extraction

    overrides = list(args.overrides)
    key = "mirrored_features" if args.mirror else "features"  # --mirror: the cache of mirrored images
    if args.out:
        overrides.append(f"data.{key}={args.out}")
    config = load_config(args.config, overrides)
    out = getattr(config.data, key)
    if not out:
        raise ConfigError(f"data.{key}: name the cache folder to " + ("check" if args.verify else "write") +
                          " (or pass --out)")
    if args.verify:
        return _verify_cache(out, args.workers)
    check_folder_writable(out, "feature cache folder")
    device = args.device or "cpu"
    decoder = resolve_decoder(args.decode, device)
    batch_size = args.batch_size or default_batch_size(device)
    options = ExtractionOptions(precision=args.precision, channels_last=args.channels_last, prefetch=args.prefetch,
                                early_read=args.early_read, warmup=args.warmup, device_quantize=args.device_quantize,
                                async_copy=args.async_copy, background_write=args.background_write)
    print(f"captioner extract: {config.model.encoder.name} {config.model.encoder.layer or '(default layer)'} at "
          f"{config.model.encoder.image_size} px on {device}, {args.storage}, images decoded by {decoder}"
          f"{', mirrored left to right' if args.mirror else ''}, into {out}", file=sys.stderr)
    report = run_extraction(config, out, storage=args.storage, shard_size=args.shard_size, batch_size=batch_size,
                            device=device, workers=args.workers, decoder=decoder, progress=not args.quiet,
                            options=options, early_cuda=args.early_cuda, mirror=args.mirror)
    if report.written:
        speed = (f"{report.images_per_second:.1f} images/s, {report.images_per_second_after_first_batch:.1f} after the "
                 f"first batch's {report.first_batch_seconds:.2f} s; decoder {report.decoder}")
    else:
        speed = "nothing left to encode"
    print(f"{report.images} images: {report.written} encoded in this run ({speed}), {report.shards_skipped} shard(s) "
          f"already done; {report.skipped.summary()}")
    for path, problem in report.damaged.items():
        print(f"  redid a damaged shard: {path}: {problem}")
    print(f"wrote {out}/manifest.json and {out}/extraction.json")
    return 0


def _verify_cache(out: str, workers: int) -> int:
    """`captioner extract --verify`: every checksum of the cache recomputed; 1 if anything is damaged."""
    from captioner.data.feature_cache import REPAIR, verify_cache

    report = verify_cache(out, workers)
    for path, problem in report.damaged.items():
        print(f"DAMAGED {path}: {problem}")
    print(f"{out}: {report.shards} shard(s), {report.bytes_checked / 1e6:.1f} MB checked in {report.seconds:.1f} s; "
          + (f"{len(report.damaged)} damaged file(s)" if report.damaged else "no damage found")
          + ("" if report.complete else "; the cache is incomplete (extraction was interrupted)"))
    if report.unchecked:
        print(f"  {len(report.unchecked)} shard(s) were written before shards carried checksums "
              f"({', '.join(report.unchecked[:3])}{', ...' if len(report.unchecked) > 3 else ''}): checked for "
              "truncation, their headers and NaN or infinite values only; extract into a new folder to add checksums")
    if report.damaged or not report.complete:
        print(f"to repair: {REPAIR}", file=sys.stderr)
        return 1
    return 0


def command_train(args: argparse.Namespace) -> int:
    """Train in this process, or, started by torchrun, in every process it started (one per GPU)."""
    from captioner import distributed
    from captioner.experiment import format_scores, run_experiment

    config = _build_config(args)
    if args.check_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        print("the settings are valid; nothing was trained (--check-config)", file=sys.stderr)
        return 0
    check_folder_writable(args.out)
    try:
        metrics = run_experiment(config, args.out, resume=args.resume)
    finally:
        distributed.shutdown()
    if not distributed.Distributed.from_environment().is_main:
        return 0
    print(f"test split, beam size {config.decode.beam_size}:")
    print(format_scores({k: v for k, v in metrics.items() if k.startswith("Bleu") or k in (
        "attention_accuracy", "bound_prior", "bound_proposal", "wall_seconds")}))
    print(f"wrote {args.out}/metrics.json and the model to {args.out}/model")
    return 0


_MODEL_ONLY = ("config", "overrides", "samples", "device", "beam_size", "max_length", "length_penalty",
               "attention_mode")
_RESULTS_ONLY = ("annotations", "flickr8k", "allow_missing", "allow_empty")


def _option(name: str) -> str:
    return {"overrides": "--set", "flickr8k": "--flickr8k"}.get(name, "--" + name.replace("_", "-"))


def _check_evaluate_arguments(args: argparse.Namespace) -> None:
    """Exactly one of MODEL and --results, each with only the options that apply to it."""
    from captioner.metrics.results import EvaluationInputError

    if args.tokenizer == "java":
        from captioner.data.ptb import java_available

        if not java_available():
            raise EvaluationInputError("--tokenizer java needs Java (a `java` executable on PATH), which was not "
                                       "found; use --tokenizer python (same tokens) or auto")
    _metrics(args)  # an unknown name fails now, not after decoding a whole split
    if (args.model is None) == (args.results is None):
        raise EvaluationInputError(
            "give either MODEL (a saved model folder: decode and score a split) or --results RESULTS.json (score "
            "captions already generated, with --annotations or --flickr8k)" + ("" if args.model is None else
                                                                                  ", not both"))
    if args.results is not None:
        wrong = [_option(name) for name in _MODEL_ONLY if getattr(args, name) not in (None, [])]
        if wrong:
            raise EvaluationInputError(f"{', '.join(wrong)} only appl{'y' if len(wrong) > 1 else 'ies'} to scoring a "
                                       "MODEL, not to --results")
        if (args.annotations is None) == (args.flickr8k is None):
            raise EvaluationInputError("--results needs the references: give --annotations ANNOTATIONS.json (COCO "
                                       "caption format) or --flickr8k ROOT (with --split)" +
                                       ("" if args.annotations is None else ", not both"))
    else:
        wrong = [_option(name) for name in _RESULTS_ONLY if getattr(args, name) not in (None, False)]
        if wrong:
            raise EvaluationInputError(f"{', '.join(wrong)} only appl{'y' if len(wrong) > 1 else 'ies'} to --results, "
                                       "not to scoring a MODEL")


def _metrics(args: argparse.Namespace) -> list[str]:
    from captioner.metrics.results import EvaluationInputError

    names = [name.strip() for name in args.metrics.split(",") if name.strip()]
    known = ("bleu", "meteor", "rouge", "cider", "spice")
    unknown = [name for name in names if name.lower().replace("-", "_") not in known + ("rouge_l",)]
    if unknown or not names:
        raise EvaluationInputError(f"--metrics: unknown {unknown or 'empty list'}; choose from {', '.join(known)}")
    return names


def _evaluate_results_file(args: argparse.Namespace) -> dict:
    from captioner.metrics.results import _sha256_json, command_line, evaluate_results, flickr8k_annotations

    provenance: dict = {"command": command_line()}
    if args.flickr8k is not None:
        split = args.split or "test"
        annotations = flickr8k_annotations(args.flickr8k, split)
        provenance["annotations"] = {"path": None, **annotations["info"], "sha256": _sha256_json(annotations),
                                     "note": "built from the Flickr8k release by captioner.metrics.results."
                                             "flickr8k_annotations; sha256 of its JSON serialisation (sorted keys, "
                                             "compact separators), files: sha256 of each file read"}
    else:
        split, annotations = args.split, args.annotations
    return evaluate_results(args.results, annotations, tokenizer=args.tokenizer, metrics=_metrics(args),
                            allow_missing=args.allow_missing, allow_empty=args.allow_empty, split=split,
                            provenance=provenance)


def _evaluate_model(args: argparse.Namespace) -> dict:
    import torch

    import captioner
    from captioner.data.datasets import load_dataset
    from captioner.evaluation import evaluate_split
    from captioner.metrics.results import command_line, score_report, sha256_file
    from captioner.models.captioner import load_decoding

    model_dir = Path(args.model)
    split_name = args.split or "test"
    samples = 20 if args.samples is None else args.samples
    data_config = args.config or (model_dir / "training_config.yaml")
    if not Path(data_config).is_file():
        raise ConfigError(f"{data_config}: no data config; pass --config with the data section to evaluate on")
    config = load_config(data_config, args.overrides)
    device = torch.device(args.device or "cpu")
    model = captioner.load(model_dir, device)
    decode = _decode_overrides(args, load_decoding(model_dir))
    split = load_dataset(config.data, config.model)[split_name]
    seed = 1234  # evaluate_split's default: decoding and the bound draw from it
    scores, captions = evaluate_split(model, split, decode, device, samples, seed=seed)
    hypotheses = {i: c.text for i, c in zip(split.image_ids, captions)}
    references = {i: list(refs) for i, refs in zip(split.image_ids, split.captions)}
    provenance = {
        "command": command_line(),
        "model": {"path": str(model_dir.resolve()),
                  "files": {p.name: sha256_file(p) for p in sorted(model_dir.iterdir()) if p.is_file()}},
        "config": {"path": str(Path(data_config).resolve()), "sha256": sha256_file(data_config),
                   "overrides": list(args.overrides),
                   "resolved": json.loads(json.dumps(dataclasses.asdict(config), default=str))},
        "decoding": dataclasses.asdict(decode),
        "evaluation": {"device": str(device), "bound_samples": samples, "seed": seed},
        "data": {"dataset": config.data.dataset, "split": split_name, "images": len(split)},
    }
    report = score_report(hypotheses, references, tokenizer=args.tokenizer, metrics=_metrics(args), allow_empty=True,
                          split=split_name, provenance=provenance)
    # the model's own scores (attention accuracy, likelihood bounds); its BLEU is superseded by coco-caption's
    model_scores = {k: v for k, v in scores.items() if not k.startswith("Bleu_")}
    report["model_scores"] = model_scores
    # the flat keys that earlier versions of this command wrote come first, then the report
    return {"dataset": config.data.dataset, "split": split_name, "estimator": config.estimator.name,
            "beam_size": decode.beam_size, "attention_mode": decode.attention_mode, **report["corpus"],
            **model_scores, "model": str(model_dir), "decoding": dataclasses.asdict(decode), **report,
            "captions": [{"image_id": i, "caption": c.text} for i, c in zip(split.image_ids, captions)]}


def command_evaluate(args: argparse.Namespace) -> int:
    from captioner.metrics.results import EvaluationInputError, format_report, write_report

    try:
        _check_evaluate_arguments(args)
        if args.out:
            check_file_writable(args.out, "report file")  # before the scoring, not after it
        result = _evaluate_results_file(args) if args.results is not None else _evaluate_model(args)
    except EvaluationInputError as error:
        print(f"captioner evaluate: error: {error}", file=sys.stderr)
        return 2
    print(format_report(result))
    if "model_scores" in result:
        from captioner.experiment import format_scores

        print(f"model ({result['estimator']}, beam size {result['beam_size']}):")
        print(format_scores(result["model_scores"]))
    if args.out:
        with writing(args.out):
            write_report(result, args.out)
        print(f"wrote {args.out}")
    return 0


def command_caption(args: argparse.Namespace) -> int:
    import torch

    import captioner
    from captioner.data.records import SkipReport
    from captioner.inference import caption_files, find_image_files

    if args.output:
        check_file_writable(args.output, "output file")
    if args.attention_dir:
        check_folder_writable(args.attention_dir, "attention picture folder")
    device = torch.device(args.device or "cpu")
    model = captioner.load(args.model, device)
    decode = _decode_overrides(args, model.decoding)
    not_images = SkipReport()
    paths = find_image_files(args.paths, not_images)
    for details in not_images.details.values():
        for detail in details:
            print(f"skipped: {detail}", file=sys.stderr)
    if not paths:
        print("captioner caption: no image files found in the given paths", file=sys.stderr)
        return 1
    errors: list[str] = []
    output = open(args.output, "w") if args.output else sys.stdout
    count, good = 0, 0
    try:
        for record in caption_files(model, paths, decode, device, args.batch_size, args.attention_dir, errors):
            output.write(json.dumps(record.to_json()) + "\n")
            if args.output:
                output.flush()
                good = output.tell()
            count += 1
    except OSError:
        if args.output:  # keep the lines written whole: no half line at the end
            try:
                output.truncate(good)
            except OSError:
                pass
        raise
    finally:
        if args.output:
            try:
                output.close()
            except OSError:
                pass
    left_out = f", {not_images.total} not image files ({', '.join(sorted(not_images.counts))})" \
        if not_images.total else ""
    print(f"captioned {count} image(s); skipped {len(errors)} unreadable{left_out}", file=sys.stderr)
    return 0 if count else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="train and evaluate on the built-in scenes data (minutes on a CPU)",
                          description="Train a captioner on the built-in scenes data, evaluate it on the test "
                          "split with beam search, caption a few test images and write OUT/metrics.json, "
                          "OUT/model, OUT/learning_curves.png and attention pictures.")
    demo.add_argument("--out", type=Path, default=Path("demo-run"), help="output folder (default: demo-run)")
    demo.add_argument("--examples", type=int, default=4, help="test images to caption with pictures (default 4)")
    _common_training_arguments(demo)
    demo.set_defaults(handler=command_demo)

    extract = sub.add_parser("extract", help="encode a data set once with a pretrained backbone, into a feature cache",
                             description="Run the config's pretrained backbone (model.encoder) over every image of "
                             "the config's data set (data section), writing a sharded, memory-mappable cache with a "
                             "manifest to data.features (or --out). Resumable: a re-run skips finished shards. "
                             "Unreadable images are skipped and counted.")
    extract.add_argument("--config", type=Path, help="YAML with the data and model.encoder sections")
    extract.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    extract.add_argument("--out", help="cache folder (default: data.features; with --mirror, data.mirrored_features)")
    extract.add_argument("--mirror", action="store_true",
                         help="encode every image mirrored left to right: the cache that flip augmentation reads "
                              "(data.flip_probability, data.mirrored_features)")
    extract.add_argument("--storage", choices=("float16", "int8"), default="float16",
                         help="float16, or int8 with a scale per image and channel (half the size)")
    extract.add_argument("--shard-size", type=int, default=1024, help="images per shard (bounds RAM)")
    extract.add_argument("--batch-size", type=int, default=None, help="images per batch (default 64)")
    extract.add_argument("--workers", type=int, default=4,
                         help="image-reading threads (with --decode pil they also decode)")
    extract.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    extract.add_argument("--decode", choices=("auto", "pil", "gpu"), default="auto",
                         help="how images are decoded: pil (CPU threads), or gpu (JPEGs in batches with "
                         "torchvision on --device: nvjpeg on a GPU, torchvision's CPU decoder on the CPU; other "
                         "files with PIL); auto (default): gpu when --device is a GPU, else pil. The caches are "
                         "interchangeable")
    extract.add_argument("--quiet", action="store_true")
    speed = extract.add_argument_group("speed switches (defaults: the fastest measured; the --no- forms and "
                                       "--prefetch 1 give the behaviour before issue 17; the cache is the same)")
    speed.add_argument("--precision", choices=("bf16", "fp16", "fp32"),
                       help="autocast dtype on a GPU (default bf16; a CPU always runs fp32)")
    speed.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels_last memory layout (default: on a GPU)")
    speed.add_argument("--prefetch", type=int, help="batches whose files are read ahead (default 8 on a GPU, 2 on "
                       "a CPU; 1 before)")
    speed.add_argument("--early-read", action=argparse.BooleanOptionalAction, default=True,
                       help="into a new folder, start reading files while the backbone is built (default on)")
    speed.add_argument("--early-cuda", action=argparse.BooleanOptionalAction, default=True,
                       help="start CUDA, cuDNN and nvjpeg in a thread while records are read and the backbone "
                       "is built (default on)")
    speed.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                       help="one dummy batch through the decoder and backbone before the loop (default: on a GPU)")
    speed.add_argument("--device-quantize", action=argparse.BooleanOptionalAction, default=None,
                       help="float16 conversion, finiteness and int8 quantisation on the device (same values; "
                       "default: on a GPU)")
    speed.add_argument("--async-copy", action=argparse.BooleanOptionalAction, default=None,
                       help="no per-batch host sync: pinned non-blocking copies, the previous batch finished "
                       "while the GPU runs the next (default: on a GPU)")
    speed.add_argument("--background-write", action=argparse.BooleanOptionalAction, default=True,
                       help="write and hash shards in a background thread (default on)")
    extract.add_argument("--verify", action="store_true",
                         help="check the cache (--out or data.features) instead of writing it: recompute every "
                         "shard's checksum, name each damaged file, exit 1 if any (a re-run of the extract "
                         "command that made it redoes only the damaged shards)")
    extract.set_defaults(handler=command_extract)

    train = sub.add_parser("train", help="train from a config; writes checkpoints, logs, the model and metrics",
                           description="Train, keeping checkpoints/latest.pt and checkpoints/best.pt (best "
                           "validation BLEU-4) and log.jsonl under OUT; then export OUT/model and score the test "
                           "split into OUT/metrics.json. Under torchrun (torchrun --standalone --nproc-per-node N "
                           "-m captioner.cli train ...) every process trains on its share of each batch, one GPU "
                           "each, and rank 0 writes the files.")
    train.add_argument("--out", type=Path, required=True, help="output folder")
    train.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoints/latest.pt")
    train.add_argument("--check-config", action="store_true",
                       help="check the settings (the config file, every --set and how they combine), print them "
                       "as YAML and exit: nothing is read, trained or written (exit 2 with the reason if refused)")
    _common_training_arguments(train)
    train.set_defaults(handler=command_train)

    evaluate = sub.add_parser(
        "evaluate", help="score a saved model on a split, or a COCO results file against references",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score captions with coco-caption's metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D; SPICE when its "
        "Java dependencies are present), pycocoevalcap's scorers on PTB-tokenised text (the Java tokenizer when Java "
        "is present, an identical Python port otherwise), with sacreBLEU beside (a different tokenisation).\n\n"
        "  captioner evaluate RUN/model --split test --out scores.json\n"
        "      decode every image of a split with a saved model; also attention accuracy and the bound L_K\n"
        "  captioner evaluate --results results.json --annotations captions_val2017.json --out scores.json\n"
        "      score a COCO results file [{\"image_id\", \"caption\"}] against COCO caption annotations\n"
        "  captioner evaluate --results results.json --flickr8k data/flickr8k --split test\n"
        "      the same against a Flickr8k split (image ids are the file stems)\n\n"
        "Give exactly one of MODEL and --results. Every image of the annotations needs a result unless "
        "--allow-missing (then only the images with results are scored, and the report lists the others).")
    evaluate.add_argument("model", type=Path, nargs="?", help="saved model folder (e.g. RUN/model); leave out "
                          "with --results")
    evaluate.add_argument("--split", choices=("train", "val", "test"),
                          help="split to decode (MODEL) or of --flickr8k (default test); with --annotations only a "
                          "label in the report")
    evaluate.add_argument("--out", type=Path, help="write the report (scores, per-image scores, provenance) to this "
                          "JSON file")
    evaluate.add_argument("--tokenizer", choices=("auto", "java", "python"), default="auto",
                          help="PTB tokenizer: pycocoevalcap's Java one, the Python port, or auto (Java if present)")
    evaluate.add_argument("--metrics", default="bleu,meteor,rouge,cider,spice",
                          help="comma-separated metrics (default all: bleu,meteor,rouge,cider,spice); METEOR takes "
                          "about 10 s to start")
    given = evaluate.add_argument_group("scoring a results file")
    given.add_argument("--results", type=Path, help='COCO results JSON: [{"image_id": ..., "caption": "..."}, ...]')
    given.add_argument("--annotations", type=Path, help='COCO caption annotations JSON: {"images": [...], '
                       '"annotations": [{"image_id": ..., "caption": "..."}, ...]}')
    given.add_argument("--flickr8k", type=Path, metavar="ROOT", help="use a split of the Flickr8k release at ROOT "
                       "(Flicker8k_Dataset/, Flickr8k_text/) as the references, instead of --annotations")
    given.add_argument("--allow-missing", action="store_true", help="score only the annotated images that have a "
                       "result (default: an error names the images without one)")
    given.add_argument("--allow-empty", action="store_true", help="score empty result captions as empty (default: "
                       "an error)")
    model_options = evaluate.add_argument_group("scoring a MODEL")
    model_options.add_argument("--config", type=Path, help="config whose data section names the data "
                               "(default: MODEL/training_config.yaml)")
    model_options.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    model_options.add_argument("--samples", type=int, help="K of the likelihood bound (default 20)")
    model_options.add_argument("--device", help="cpu, cuda or cuda:N")
    _add_decode_arguments(model_options)
    evaluate.set_defaults(handler=command_evaluate)

    caption = sub.add_parser("caption", help="caption image files",
                             description="Caption image files, folders (recursively) or glob patterns. Writes one "
                             "JSON line per image: file, caption, and for every word its location, the location's "
                             "probability and the word's probability. Unreadable files are reported and skipped.")
    caption.add_argument("model", help="saved model folder (or a Hugging Face Hub repository id)")
    caption.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    caption.add_argument("--output", type=Path, help="JSON lines file (default: standard output)")
    caption.add_argument("--attention-dir", type=Path, help="write one attention picture per image here")
    caption.add_argument("--batch-size", type=int, default=32)
    caption.add_argument("--device", help="cpu, cuda or cuda:N")
    _add_decode_arguments(caption)
    caption.set_defaults(handler=command_caption)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"captioner {args.command}: error: {error}", file=sys.stderr)
        return 2
    except CaptionerError as error:
        print(f"captioner {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as error:
        # A full disk, a quota, no permission, a read-only file system, wherever it happened: the
        # path and the cause in one line (files already written are whole: writes are atomic).
        said = output_error(error, _output_of(args))
        if said is None:
            raise
        print(f"captioner {args.command}: error: {_one_line(said)}", file=sys.stderr)
        return 1


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _output_of(args: argparse.Namespace) -> Path | None:
    """Where the command writes, for an error that names no file."""
    for name in ("out", "output", "attention_dir"):
        if getattr(args, name, None):
            return Path(getattr(args, name))
    return None


if __name__ == "__main__":
    sys.exit(main())
