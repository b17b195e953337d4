#!/usr/bin/env python3
"""Why does a run on the built-in scenes data fall into the "look-away" mode? Train the demo
configuration and, every `--every` updates, measure on the validation split (reference captions,
teacher forcing, eval mode) what the prior, the proposal and the decoder do at the object words
(colour, size and shape words, whose object's cell the data records):

- prior_accuracy / proposal_accuracy: argmax pi_t / argmax q_t at the object's cell;
- prior_entropy_object / proposal_entropy_object, and the same at the other words;
- log_q_minus_log_prior: log q(a|y,x) - log pi(a|x) of paths drawn from q, per caption;
- posterior_true / posterior_empty / posterior_other_object: the exact posterior p(a_t = i | y, x,
  a_{-t}) of one object word's glimpse (every cell i tried, the other glimpses on an "oracle" path:
  each word at the cell of its object, or of the last object named), summed over the true cell,
  the empty cells and the other objects' cells; posterior_accuracy: its argmax is the true cell;
- glimpse_gain_true_vs_empty / glimpse_gain_true_vs_other: mean log p(object word) with its glimpse
  at the true cell minus at an empty cell / another object (the rest of the path oracle);
- h0_gain: log p(y | oracle path) with h_0, c_0 from the mean feature minus with the mean feature
  replaced by zeros (how much of the caption the initial state carries).

    python -m research.lookaway_probe --out runs/probe-s4 [--every 100] [--set train.seed=4 ...]
    python -m research.lookaway_probe --plot figure.png runs/probe-s1=good runs/probe-s4=bad ...

Writes OUT/probe.jsonl (one record per probe) beside the run's own files (it is `captioner train`
on the demo configuration, with the test-split scoring), and prints one line per probe. Training is
unchanged by the probes (every update reseeds its own random streams), so a probed run is the run
of that seed. --plot draws the probes of several runs side by side (RUN=LABEL).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from captioner.config import load_config
from captioner.estimators import draw_locations, step_entropy
from captioner.evaluation import evaluate_split
from captioner.models.decoder import word_log_probs, location_log_probs
from captioner.train import Trainer, TrainerCallback


def oracle_path(cells: torch.Tensor) -> torch.Tensor:
    """Each word at its object's cell, other words at the cell of the last object named (the first
    object's before any): cells (N, T) with -1 for non-object words -> (N, T)."""
    path = cells.clone()
    first = torch.where(cells >= 0, cells, torch.full_like(cells, 10**6)).min(1).values.clamp_max(10**6 - 1)
    current = torch.where(first < 10**6 - 1, first, torch.zeros_like(first))
    for t in range(cells.shape[1]):
        current = torch.where(cells[:, t] >= 0, cells[:, t], current)
        path[:, t] = current
    return path


@torch.no_grad()
def probe(model, split, device, images: int = 100, samples: int = 5, seed: int = 0) -> dict:
    was_training = model.training
    model.eval()
    decoder = model.decoder
    batch = split.batch(range(min(images, len(split))), model.vocabulary, None).to(device)
    text = batch.text
    grids = model.encode_inputs(batch.inputs, batch.input_kind)
    features = grids[batch.image_index]
    n, steps = text.inputs.shape
    locations_count = features.shape[1]
    cells = text.word_cells
    scored = (cells >= 0) & text.mask
    occupied = torch.zeros(n, locations_count, dtype=torch.bool, device=device)
    named = (cells >= 0).nonzero()  # every caption names every object of its image
    occupied[named[:, 0], cells[named[:, 0], named[:, 1]]] = True
    out: dict[str, float] = {}

    # prior at the teacher-forced argmax path (as attention_accuracy), proposal's factorised q
    prior = decoder.forward_stepwise(features, text.inputs, "argmax")
    prior_logits = prior.attention_logits
    out["prior_accuracy"] = float((prior_logits.argmax(-1)[scored] == cells[scored]).float().mean())
    entropy = step_entropy(prior_logits)
    other = text.mask & ~scored
    out["prior_entropy_object"] = float(entropy[scored].mean())
    out["prior_entropy_other"] = float(entropy[other].mean())
    if model.proposal is not None and not model.proposal.sequential:
        log_q = model.proposal.log_probs(features, text.targets, text.lengths)
        out["proposal_accuracy"] = float((log_q.argmax(-1)[scored] == cells[scored]).float().mean())
        q_entropy = -(log_q.exp() * log_q).sum(-1)
        out["proposal_entropy_object"] = float(q_entropy[scored].mean())
        out["proposal_entropy_other"] = float(q_entropy[other].mean())
        drawn = draw_locations(model, features, text, samples, "model",
                               generator=torch.Generator(device=device).manual_seed(seed))
        out["log_q_minus_log_prior"] = float((drawn.log_q - drawn.log_p_locations).mean())

    # the exact posterior of one object word's glimpse, the others on the oracle path
    path = oracle_path(cells)
    positions = scored.nonzero()  # (P, 2): caption, step
    generator = torch.Generator(device="cpu").manual_seed(seed)
    keep = torch.randperm(len(positions), generator=generator)[:300].to(device)
    positions = positions[keep]
    rows, steps_at = positions[:, 0], positions[:, 1]
    p = len(positions)
    trial = path[rows].repeat_interleave(locations_count, 0)  # (P * L, T)
    cell_index = torch.arange(locations_count, device=device).repeat(p)
    trial[torch.arange(p * locations_count, device=device), steps_at.repeat_interleave(locations_count)] = cell_index
    trial_rows = rows.repeat_interleave(locations_count)
    output = decoder.forward_given_locations(features[trial_rows], text.inputs[trial_rows], trial)
    mask = text.mask[trial_rows]
    word_terms = torch.where(mask, word_log_probs(output.word_logits, text.targets[trial_rows]), 0.0)
    location_terms = torch.where(mask, location_log_probs(output.attention_logits, trial), 0.0)
    joint = (word_terms.sum(1) + location_terms.sum(1)).view(p, locations_count)
    posterior = joint.softmax(-1)
    true_cell = cells[rows, steps_at]
    is_true = torch.nn.functional.one_hot(true_cell, locations_count).bool()
    is_other = occupied[rows] & ~is_true
    is_empty = ~occupied[rows]
    out["posterior_true"] = float((posterior * is_true).sum(-1).mean())
    out["posterior_empty"] = float((posterior * is_empty).sum(-1).mean())
    out["posterior_other_object"] = float((posterior * is_other).sum(-1).mean())
    out["posterior_accuracy"] = float((posterior.argmax(-1) == true_cell).float().mean())
    # glimpse gains: the object word's own log-probability with its glimpse at each kind of cell
    word_at_t = word_terms.view(p, locations_count, -1).gather(
        2, steps_at.view(p, 1, 1).expand(p, locations_count, 1)).squeeze(-1)  # (P, L)
    true_value = (word_at_t * is_true).sum(-1)
    empty_value = (word_at_t * is_empty).sum(-1) / is_empty.sum(-1).clamp_min(1)
    has_other = is_other.any(-1)
    other_value = (word_at_t * is_other).sum(-1) / is_other.sum(-1).clamp_min(1)
    out["word_log_prob_true"] = float(true_value.mean())
    out["glimpse_gain_true_vs_empty"] = float((true_value - empty_value)[is_empty.any(-1)].mean())
    out["glimpse_gain_true_vs_other"] = float((true_value - other_value)[has_other].mean()) if has_other.any() else 0.0

    # how much of the caption h_0, c_0 carry
    oracle = decoder.forward_given_locations(features, text.inputs, path)
    with_h0 = torch.where(text.mask, word_log_probs(oracle.word_logits, text.targets), 0.0).sum(1)
    h_real, c_real = decoder.initial_state(features)
    blank = torch.zeros(1, 1, features.shape[-1], dtype=features.dtype, device=device)
    h_blank, c_blank = decoder.initial_state(blank)
    original = decoder.initial_state
    decoder.initial_state = lambda f, group=1: (h_blank.expand(f.shape[0], -1), c_blank.expand(f.shape[0], -1))
    try:
        blind = decoder.forward_given_locations(features, text.inputs, path)
    finally:
        decoder.initial_state = original
    without_h0 = torch.where(text.mask, word_log_probs(blind.word_logits, text.targets), 0.0).sum(1)
    out["oracle_log_p_words"] = float(with_h0.mean())
    out["h0_gain"] = float((with_h0 - without_h0).mean())
    model.train(was_training)
    return out


PANELS = (("prior_accuracy", "prior's argmax at the object (object words)"),
          ("proposal_accuracy", "proposal's argmax at the object"),
          ("posterior_empty", "posterior mass on empty cells"),
          ("glimpse_gain_true_vs_empty", "log p(word): glimpse at the object - at an empty cell"),
          ("log_q_minus_log_prior", "log q - log pi of q's samples (nats per caption)"),
          ("prior_entropy_object", "prior entropy at object words (nats)"))


def plot(figure: Path, runs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for spec in runs:
        folder, _, label = spec.partition("=")
        records = [json.loads(line) for line in (Path(folder) / "probe.jsonl").read_text().splitlines() if line]
        style = "--" if "look-away" in label or "bad" in label else "-"
        for axis, (key, title) in zip(axes.flat, PANELS):
            axis.plot([r["epoch"] for r in records], [r.get(key, float("nan")) for r in records], style,
                      label=label or folder)
            axis.set_title(title, fontsize=10)
            axis.set_xlabel("epoch")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figure, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plot", type=Path, metavar="FIGURE.png", help="draw the probes of RUN=LABEL ... and exit")
    parser.add_argument("runs", nargs="*", help="with --plot: probed run folders, each RUN or RUN=LABEL")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-test", action="store_true", help="skip the test-split scoring at the end")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot, args.runs)
        return 0
    if args.out is None:
        parser.error("--out is needed (or --plot)")
    config = load_config(args.config, ["train.progress_bar=false", *args.overrides])
    if config.data.dataset != "scenes":
        raise SystemExit("lookaway_probe.py: the probe needs word cells: the built-in scenes data")
    trainer = Trainer(config, args.out)
    records = args.out / "probe.jsonl"
    records.write_text("")

    class Probe(TrainerCallback):
        def after_update(self, t: Trainer) -> None:
            if t.step % args.every and t.step != 1:
                return
            record = {"step": t.step, "epoch": t.epoch + t.batch_in_epoch / t.sampler.batches_per_epoch,
                      **probe(t.model, t.splits["val"], t.device, seed=t.step)}
            with open(records, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            keys = ("prior_accuracy", "proposal_accuracy", "posterior_true", "posterior_empty",
                    "glimpse_gain_true_vs_empty", "glimpse_gain_true_vs_other", "h0_gain", "log_q_minus_log_prior")
            print(f"step {t.step:5d} " + " ".join(f"{k}={record.get(k, float('nan')):.3f}" for k in keys), flush=True)

    trainer.train([Probe()])
    if not args.no_test:
        trainer.load_best()
        scores, _ = evaluate_split(trainer.model, trainer.splits["test"], config.decode, trainer.device,
                                   config.train.validation_samples)
        (args.out / "test_scores.json").write_text(json.dumps(scores, indent=2))
        print(f"test BLEU-4 {scores['Bleu_4']:.3f} attention accuracy {scores['attention_accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
