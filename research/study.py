"""The efficiency study: does WS-RAM reach a given quality in fewer updates and less GPU time than
REINFORCE-style training (VAR)? A grid of training runs, one yardstick for all of them, the gradient
variance that the attention samples cause, and the figures (issue 8).

A study is one YAML file (`eval/efficiency/*.yaml` are examples):

    config: eval/flickr8k/wsram.yaml   # the shared experiment config (a path, relative to the YAML's
                                        # folder or the working directory), or leave it out for the defaults
    set: [train.epochs=12]              # overrides for every run
    eval_every: 100                     # updates between two dev evaluations (plus one at update 0 and at the end)
    bound_samples: 100                  # K of the dev bound L_K
    dev_images: 0                       # images of the dev split for the bound and BLEU-4 (0: all)
    variance_points: [0.05, 0.5, 1.0]   # fractions of the run's updates at which to measure gradient variance
    variance_draws: 20
    test_beam: 3
    arms:
      - {name: wsram, estimator: wsram, seeds: [0, 1, 2]}
      - {name: var, estimator: var, seeds: [0, 1, 2]}
      - {name: wsram-no-cv, estimator: wsram, seeds: [0], set: [estimator.control_variates=false]}

`run_study` trains every (arm, seed) in OUT/runs/ARM-sSEED/ with the project's Trainer and writes:
- `curve.jsonl`: at fixed update counts, the dev bound L_K from the prior (importance sampling
  from the model's own prior with K = bound_samples, the same for every hard-attention model), the
  proposal's bound where there is a proposal, dev BLEU-4 with greedy decoding, the training
  diagnostics of the last logged update (ESS/K for WS-RAM) and the GPU seconds of training so far
  (device synchronised before the clock is read, evaluation time excluded);
- `variance.jsonl`: at the variance points, on one fixed training minibatch and the parameters of
  that moment, the gradient variance from the attention samples alone for the prior's, the
  decoder's and the proposal's parameters (captioner.diagnostics), for this run's estimator and,
  for WS-RAM runs, also with no control variates and with the prior's control variate c^p on (same
  parameters, same minibatch);
- `result.json` when the run is done: test scores with beam `test_beam` of the best-by-dev model,
  and `test_captions.json`, its test captions in the COCO results format (to score them again, e.g.
  with METEOR where Java is); with `save_models: true`, also that model's folder `model/`.
An interrupted study resumes: finished runs are kept, an unfinished run continues from its last
checkpoint (its curve lines past that update are dropped and measured again).

Then OUT/study.json (the study as run), OUT/summary.json (per arm and seed, and the targets) and
the figures OUT/*.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from captioner.config import (ConfigError, DecodeConfig, ExperimentConfig, config_for_estimator, load_config,
                              read_yaml_mapping)
from research.diagnostics import gradient_variance
from captioner.evaluation import evaluate_split, generate, mean_bound
from captioner.metrics.bleu import corpus_bleu
from captioner.train import Trainer, TrainerCallback

ESTIMATORS = ("wsram", "var", "soft")


@dataclasses.dataclass
class Arm:
    name: str
    estimator: str
    seeds: list[int]
    overrides: list[str] = dataclasses.field(default_factory=list)

    def timed_cost(self, timing: dict[str, float]) -> float | None:
        """Seconds per update alone on the GPU: timed under the arm's own name, else its estimator's
        timing when the arm changes nothing else (an ablation's K or proposal changes the cost)."""
        if self.name in timing:
            return timing[self.name]
        return timing.get(self.estimator) if not self.overrides else None


@dataclasses.dataclass
class Study:
    arms: list[Arm]
    config: str | None = None
    overrides: list[str] = dataclasses.field(default_factory=list)
    eval_every: int = 100
    bound_samples: int = 100
    dev_images: int = 0
    variance_points: list[float] = dataclasses.field(default_factory=lambda: [0.05, 0.5, 1.0])
    variance_draws: int = 20
    test_beam: int = 3
    save_models: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_study(path: str | Path) -> Study:
    """Read and check a study YAML; ConfigError naming the file and the problem otherwise."""
    path = Path(path)
    data = read_yaml_mapping(path, "study")
    known = {f.name for f in dataclasses.fields(Study)} | {"set"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown study keys {unknown}; known: {sorted(known)}")
    arms = []
    names = set()
    for i, entry in enumerate(data.get("arms") or []):
        if not isinstance(entry, dict) or "name" not in entry or "estimator" not in entry:
            raise ConfigError(f"{path}: arms[{i}] needs `name` and `estimator`")
        if entry["estimator"] not in ESTIMATORS:
            raise ConfigError(f"{path}: arms[{i}] estimator must be one of {ESTIMATORS}, got {entry['estimator']!r}")
        if entry["name"] in names:
            raise ConfigError(f"{path}: arm name {entry['name']!r} is used twice")
        names.add(entry["name"])
        seeds = entry.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise ConfigError(f"{path}: arms[{i}] seeds must be a non-empty list of integers")
        arms.append(Arm(str(entry["name"]), entry["estimator"], seeds, list(entry.get("set", []))))
    if not arms:
        raise ConfigError(f"{path}: the study has no arms")
    config = data.get("config")
    if config is not None:
        candidate = (path.parent / config)
        config = str(candidate if candidate.is_file() else Path(config))
    study = Study(arms, config, list(data.get("set", [])), int(data.get("eval_every", 100)),
                  int(data.get("bound_samples", 100)), int(data.get("dev_images", 0)),
                  [float(f) for f in data.get("variance_points", [0.05, 0.5, 1.0])],
                  int(data.get("variance_draws", 20)), int(data.get("test_beam", 3)),
                  bool(data.get("save_models", False)))
    if study.eval_every < 1 or study.bound_samples < 1 or study.variance_draws < 2:
        raise ConfigError(f"{path}: eval_every and bound_samples must be >= 1 and variance_draws >= 2")
    if not all(0.0 <= f <= 1.0 for f in study.variance_points):
        raise ConfigError(f"{path}: variance_points are fractions of the run, in [0, 1]")
    return study


def run_config(study: Study, arm: Arm, seed: int) -> ExperimentConfig:
    """The experiment config of one run: the study's config file, the arm's estimator (VAR and soft
    without a proposal, soft with soft attention), the study's and the arm's overrides, the seed."""
    base = config_for_estimator(arm.estimator, read_yaml_mapping(study.config) if study.config else {})
    forced = {"var": ["model.proposal=none"], "soft": ["model.attention=soft", "model.proposal=none"]}
    return load_config(base=base, overrides=study.overrides + forced.get(arm.estimator, []) + arm.overrides
                       + [f"train.seed={seed}", "train.progress_bar=false"])


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


class _Run(TrainerCallback):
    """One (arm, seed) of a study: trains, measures at fixed updates, resumes."""

    def __init__(self, study: Study, arm: Arm, seed: int, folder: Path):
        self.study, self.arm, self.seed, self.folder = study, arm, seed, folder
        self.config = run_config(study, arm, seed)
        resume = (folder / "checkpoints" / "latest.pt").is_file()
        self.trainer = Trainer(self.config, folder, resume=resume)
        trainer = self.trainer
        t = self.config.train
        self.total_steps = t.epochs * trainer.sampler.batches_per_epoch
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)
        self.variance_steps = sorted({round(f * self.total_steps) for f in study.variance_points})
        # Measurements past the checkpoint were made by the part of the run that is being redone.
        self.curve = [r for r in _read_jsonl(folder / "curve.jsonl") if r["step"] <= trainer.step]
        self.variance = [r for r in _read_jsonl(folder / "variance.jsonl") if r["step"] <= trainer.step]
        _write_jsonl(folder / "curve.jsonl", self.curve)
        _write_jsonl(folder / "variance.jsonl", self.variance)
        plan = trainer.sampler.plan(0, trainer.device)
        self.fixed = plan.batch(0)  # the fixed minibatch of the variance measurements
        self.last_train: dict = {}

    # -- measurements -------------------------------------------------------------------------
    def _dev_point(self) -> dict:
        trainer, study = self.trainer, self.study
        model, device = trainer.model, trainer.device
        dev = trainer.splits["val"]
        images = min(study.dev_images or len(dev), len(dev))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            # Images per chunk so that a chunk holds about 4,000 sequences (5 captions x K samples each):
            # at K = 100 a chunk of 32 images took 20-27 GiB of GPU memory, too much for runs sharing a GPU.
            chunk = max(1, min(32, 4096 // (5 * study.bound_samples)))
            prior = mean_bound(model, dev, study.bound_samples, "prior", device, images=images,
                               distributed=trainer.distributed, batch_size=chunk)
            record = {"dev_bound_prior": prior["bound"], "dev_bound_prior_per_word": prior["bound_per_word"]}
            if model.proposal is not None:
                record["dev_bound_proposal"] = mean_bound(model, dev, study.bound_samples, "model", device,
                                                          images=images, distributed=trainer.distributed,
                                                          batch_size=chunk)["bound"]
            greedy = DecodeConfig(beam_size=1, max_length=self.config.decode.max_length)
            captions = trainer.distributed.gather(generate(model, dev, greedy, device,
                                                           images=trainer.distributed.share(images)))
            hypotheses = {dev.image_ids[i]: c.text for i, c in enumerate(captions)}
            references = {dev.image_ids[i]: dev.captions[i] for i in range(images)}
            record["dev_bleu_4_greedy"] = corpus_bleu(hypotheses, references)["Bleu_4"]
        model.train(was_training)
        return record

    def _variance_point(self) -> dict:
        trainer = self.trainer
        shard = self.fixed
        inputs = trainer.gather_inputs(shard)
        estimator, research = self.config.estimator, self.config.research
        record = {"step": trainer.step, "estimator": estimator.name,
                  "groups": gradient_variance(trainer.model, inputs, trainer.splits["train"].input_kind,
                                              shard.image_index, shard.text, estimator, trainer.baseline,
                                              self.study.variance_draws, seed=trainer.step, research=research)}
        if estimator.name == "wsram":
            # The same parameters and minibatch under the other control-variate settings: none at all,
            # and the prior's c^p switched on (by default only the proposal's c^q is on, and c^q does not
            # touch the prior's gradient).
            variants = {"without_control_variates": (dataclasses.replace(estimator, control_variates=False), research),
                        "with_prior_control_variate": (dataclasses.replace(estimator, control_variates=True),
                                                       dataclasses.replace(research, prior_control_variate=True))}
            for key, (variant, variant_research) in variants.items():
                if (variant, variant_research) != (estimator, research):
                    record[key] = gradient_variance(
                        trainer.model, inputs, trainer.splits["train"].input_kind, shard.image_index, shard.text,
                        variant, trainer.baseline, self.study.variance_draws, seed=trainer.step,
                        research=variant_research)
        return record

    def after_update(self, trainer: Trainer) -> None:
        """The Trainer callback (also called once before training): dev point and variance point."""
        step = trainer.step
        need_curve = (step % self.study.eval_every == 0 or step == self.total_steps) and not any(
            r["step"] == step for r in self.curve)
        need_variance = step in self.variance_steps and not any(r["step"] == step for r in self.variance)
        if not (need_curve or need_variance):
            return
        trainer.synchronize()  # the GPU work queued by training is training time
        if need_curve:
            record = {"step": step, "epoch": trainer.epoch, "gpu_seconds": trainer.train_seconds,
                      **self._dev_point(), **self._train_diagnostics()}
            self.curve.append(record)
            if trainer.distributed.is_main:
                with open(self.folder / "curve.jsonl", "a") as handle:
                    handle.write(json.dumps(record) + "\n")
        if need_variance:
            record = self._variance_point()
            self.variance.append(record)
            if trainer.distributed.is_main:
                with open(self.folder / "variance.jsonl", "a") as handle:
                    handle.write(json.dumps(record) + "\n")

    def _train_diagnostics(self) -> dict:
        records = [r for r in _read_jsonl(self.folder / "log.jsonl") if r.get("type") == "train"]
        if not records:
            return {}
        last = records[-1]
        return {f"train_{k}": v for k, v in last.items() if k not in ("type", "step", "epoch", "train_seconds")}

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict:
        trainer = self.trainer
        self.after_update(trainer)  # update 0 (or the resumed update, if it is due)
        trainer.train([self])
        trainer.load_best()
        decode = dataclasses.replace(self.config.decode, beam_size=self.study.test_beam)
        test = trainer.splits["test"]
        scores, captions = evaluate_split(trainer.model, test, decode, trainer.device,
                                          self.config.train.validation_samples, distributed=trainer.distributed)
        if trainer.distributed.is_main:
            (self.folder / "test_captions.json").write_text(json.dumps(
                [{"image_id": i, "caption": c.text} for i, c in zip(test.image_ids, captions)], indent=0))
            if self.study.save_models:
                trainer.model.save_pretrained(self.folder / "model", decode)
                (self.folder / "model" / "training_config.yaml").write_text((self.folder / "config.yaml").read_text())
        result = {"arm": self.arm.name, "estimator": self.arm.estimator, "seed": self.seed,
                  "steps": trainer.step, "gpu_seconds": trainer.train_seconds, "test_beam": self.study.test_beam,
                  "test": scores, "config": self.config.to_dict()}
        if trainer.distributed.is_main:
            (self.folder / "result.json").write_text(json.dumps(result, indent=1))
        return result


def run_names(study: Study) -> list[str]:
    """The runs of `study`, as named under out/runs: ARM-sSEED, in the study's order."""
    return [f"{arm.name}-s{seed}" for arm in study.arms for seed in arm.seeds]


def run_study(study: Study, out: str | Path, max_runs: int | None = None, only: list[str] | None = None,
              write_summary: bool = True, timing: dict[str, float] | None = None) -> dict | None:
    """Run every unfinished (arm, seed) of `study` under `out` (at most `max_runs` of them in this
    call; only the runs named in `only`, ARM-sSEED, when given), then write study.json, summary.json
    and the figures (unless `write_summary` is false, as for several processes sharing one `out`:
    summarise once they are done). Returns the summary, or None without one."""
    out = Path(out)
    if only is not None:
        unknown = sorted(set(only) - set(run_names(study)))
        if unknown:
            raise ValueError(f"no run named {', '.join(unknown)} in the study (its runs: {', '.join(run_names(study))})")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(study.to_dict(), indent=1))
    done = 0
    for arm in study.arms:
        for seed in arm.seeds:
            folder = out / "runs" / f"{arm.name}-s{seed}"
            if (folder / "result.json").is_file():
                continue
            if only is not None and folder.name not in only:
                continue
            if max_runs is not None and done >= max_runs:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            run_config(study, arm, seed).save(folder / "run_config.yaml")
            _Run(study, arm, seed, folder).run()
            done += 1
    if not write_summary:
        return None
    summary = summarise(study, out, timing)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    from research.study_plots import plot_study

    plot_study(study, out, summary)
    return summary


def _first_reaching(curve: list[dict], key: str, target: float) -> dict | None:
    for record in curve:
        if record.get(key) is not None and record[key] >= target:
            return record
    return None


def load_timing(path: str | Path) -> dict[str, float]:
    """Seconds per update of each estimator measured alone on the GPU (benchmarks/time_training.py's JSON
    lines, keys `estimator` and `seconds_per_update`), for studies whose runs shared a GPU."""
    path = Path(path)
    timing: dict[str, float] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            timing[str(record["estimator"])] = float(record["seconds_per_update"])
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}:{number}: not a timing line with 'estimator' and 'seconds_per_update' "
                              f"({error})") from None
    if not timing:
        raise ConfigError(f"{path}: no timing lines")
    return timing


def timed_cost(arm: Arm, timing: dict[str, float]) -> float | None:
    """An arm's seconds per update alone on the GPU (`Arm.timed_cost`)."""
    return arm.timed_cost(timing)


def summarise(study: Study, out: Path, timing: dict[str, float] | None = None) -> dict:
    """Per run: final test scores, best dev bound and BLEU-4, GPU seconds; per arm: means; and the
    targets of issue 8 as measured (None where a needed run is missing). With `timing` (seconds per
    update of each estimator alone on the GPU), every clock is also given as updates x that cost
    (`alone_seconds`), the fair clock when several runs shared one GPU."""
    runs = []
    for arm in study.arms:
        for seed in arm.seeds:
            folder = out / "runs" / f"{arm.name}-s{seed}"
            curve = _read_jsonl(folder / "curve.jsonl")
            variance = _read_jsonl(folder / "variance.jsonl")
            result = json.loads((folder / "result.json").read_text()) if (folder / "result.json").is_file() else None
            bounds = [r["dev_bound_prior"] for r in curve]
            runs.append({
                "arm": arm.name, "estimator": arm.estimator, "seed": seed, "finished": result is not None,
                "points": len(curve),
                "best_dev_bound_prior": max(bounds) if bounds else None,
                "best_dev_bleu_4_greedy": max((r["dev_bleu_4_greedy"] for r in curve), default=None),
                "steps": result["steps"] if result else (curve[-1]["step"] if curve else 0),
                "gpu_seconds": result["gpu_seconds"] if result else (curve[-1]["gpu_seconds"] if curve else 0.0),
                "test_bleu_4": result["test"]["Bleu_4"] if result else None,
                "test_bound_prior": result["test"].get("bound_prior") if result else None,
                "variance_points": [{"step": v["step"], **{f"{g}_variance": s["variance"] for g, s in v["groups"].items()},
                                     **{f"{g}_relative_variance": s["relative"] for g, s in v["groups"].items()},
                                     **{f"{g}_variance_without_cv": s["variance"]
                                        for g, s in v.get("without_control_variates", {}).items()},
                                     **{f"{g}_variance_with_prior_cv": s["variance"]
                                        for g, s in v.get("with_prior_control_variate", {}).items()}}
                                    for v in variance],
            })
    costs = {arm.name: timed_cost(arm, timing) for arm in study.arms} if timing else {}
    if timing:
        for run in runs:
            cost = costs[run["arm"]]
            run["alone_seconds"] = run["steps"] * cost if cost is not None else None
    summary = {"runs": runs, "arms": _arm_means(runs), "targets": _targets(study, out, runs, costs)}
    if timing:
        summary["timing_alone_seconds_per_update"] = timing
    return summary


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def _arm_means(runs: list[dict]) -> dict:
    arms: dict[str, dict] = {}
    for run in runs:
        arms.setdefault(run["arm"], []).append(run)
    return {name: {"seeds": len(members), "finished": sum(r["finished"] for r in members),
                   "test_bleu_4": _mean([r["test_bleu_4"] for r in members]),
                   "best_dev_bound_prior": _mean([r["best_dev_bound_prior"] for r in members]),
                   "gpu_seconds": _mean([r["gpu_seconds"] for r in members])}
            for name, members in arms.items()}


def _reaching(out: Path, runs: list[dict], level: float) -> list[dict | None]:
    """For each run, the first curve point whose dev bound is at least `level` (None if none is)."""
    points = []
    for run in runs:
        point = _first_reaching(_read_jsonl(out / "runs" / f"{run['arm']}-s{run['seed']}" / "curve.jsonl"),
                                "dev_bound_prior", level)
        points.append(None if point is None else {"seed": run["seed"], "step": point["step"],
                                                  "gpu_seconds": point["gpu_seconds"]})
    return points


def _common_level(out: Path, wsram: list[dict], var: list[dict], costs: dict[str, float | None]) -> dict | None:
    """The best dev bound that every WS-RAM and every VAR run reaches (the lowest of their best bounds),
    and the updates and seconds each arm needs to first reach it (means over seeds): a speed yardstick
    that does not depend on which arm ends higher (where they overfit at different times)."""
    bests = [r["best_dev_bound_prior"] for r in wsram + var]
    if not wsram or not var or any(b is None for b in bests):
        return None
    level = min(bests)
    result: dict[str, Any] = {"level": level}
    for name, members in (("wsram", wsram), ("var", var)):
        points = _reaching(out, members, level)
        result[f"{name}_updates"] = _mean([p["step"] for p in points])
        result[f"{name}_gpu_seconds"] = _mean([p["gpu_seconds"] for p in points])
        if costs.get(name) is not None:
            result[f"{name}_alone_seconds"] = result[f"{name}_updates"] * costs[name]
    result["update_ratio_wsram_over_var"] = result["wsram_updates"] / result["var_updates"]
    result["gpu_seconds_ratio_wsram_over_var"] = result["wsram_gpu_seconds"] / result["var_gpu_seconds"]
    if "wsram_alone_seconds" in result and "var_alone_seconds" in result:
        result["alone_seconds_ratio_wsram_over_var"] = result["wsram_alone_seconds"] / result["var_alone_seconds"]
    return result


def _targets(study: Study, out: Path, runs: list[dict], costs: dict[str, float | None] | None = None) -> dict:
    """Issue 8's targets, from the arms named `wsram` and `var` (where present): the updates and GPU
    seconds WS-RAM needs to reach VAR's best dev bound (mean over VAR's seeds) against those VAR
    needed to reach it; the test BLEU-4 difference; the prior's gradient variance without control
    variates over that with them (as configured, and with the prior's c^p on)."""
    by_arm = {}
    for run in runs:
        by_arm.setdefault(run["arm"], []).append(run)
    targets: dict[str, Any] = {}
    wsram, var = by_arm.get("wsram", []), by_arm.get("var", [])
    var_best = _mean([r["best_dev_bound_prior"] for r in var])
    # VAR's cost of its best bound: the updates and GPU seconds at which each VAR seed first reached
    # its own best dev bound, averaged over seeds.
    var_points = []
    for run in var:
        curve = _read_jsonl(out / "runs" / f"{run['arm']}-s{run['seed']}" / "curve.jsonl")
        if curve and run["best_dev_bound_prior"] is not None:
            var_points.append(_first_reaching(curve, "dev_bound_prior", run["best_dev_bound_prior"]))
    var_steps = _mean([point["step"] for point in var_points])
    var_seconds = _mean([point["gpu_seconds"] for point in var_points])
    targets["var_updates_to_its_best"] = var_steps
    targets["var_gpu_seconds_to_its_best"] = var_seconds
    alone = costs or {}  # each arm's seconds per update alone on the GPU, where timed
    if alone.get("var") is not None and var_steps is not None:
        targets["var_alone_seconds_to_its_best"] = var_steps * alone["var"]
    if wsram and var_best is not None:
        reach = _reaching(out, wsram, var_best)
        reached = [r for r in reach if r is not None]
        targets["var_best_dev_bound_prior_mean"] = var_best
        targets["wsram_reaches_var_best"] = reach
        if reached and len(reached) == len(reach):
            updates = _mean([r["step"] for r in reached])
            seconds = _mean([r["gpu_seconds"] for r in reached])
            targets["update_ratio_wsram_over_var"] = updates / var_steps if var_steps else None
            targets["gpu_seconds_ratio_wsram_over_var"] = seconds / var_seconds if var_seconds else None
            targets["met_updates_at_most_one_third"] = targets["update_ratio_wsram_over_var"] <= 1 / 3
            targets["met_gpu_seconds_at_most_one_tenth"] = targets["gpu_seconds_ratio_wsram_over_var"] <= 0.1
            if alone.get("wsram") is not None and alone.get("var") is not None and var_steps:
                ratio = updates * alone["wsram"] / (var_steps * alone["var"])
                targets["alone_seconds_ratio_wsram_over_var"] = ratio
                targets["met_alone_seconds_at_most_one_tenth"] = ratio <= 0.1
        else:
            targets["met_updates_at_most_one_third"] = False
            targets["met_gpu_seconds_at_most_one_tenth"] = False
        targets["common_level"] = _common_level(out, wsram, var, alone)
        wsram_bleu = _mean([r["test_bleu_4"] for r in wsram])
        var_bleu = _mean([r["test_bleu_4"] for r in var])
        if wsram_bleu is not None and var_bleu is not None:
            targets["test_bleu_4_wsram_minus_var"] = wsram_bleu - var_bleu
    ratios = []
    for run in wsram:
        for point in run["variance_points"]:
            without = point.get("prior_variance_without_cv")
            configured = point.get("prior_variance")
            with_prior_cv = point.get("prior_variance_with_prior_cv", configured)
            if without is None or not configured or not with_prior_cv:
                continue
            ratios.append({"seed": run["seed"], "step": point["step"],
                           "as_configured": without / configured, "with_prior_control_variate": without / with_prior_cv})
    if ratios:
        targets["control_variates_prior_variance_reduction"] = ratios
        targets["met_control_variates_cut_prior_variance_10x"] = {
            key: all(r[key] >= 10 for r in ratios) for key in ("as_configured", "with_prior_control_variate")}
    return targets
