#!/usr/bin/env python3
"""How much does REINFORCE (VAR, Show-Attend-Tell's hard attention) tell the prior, at a trained model?

For captions of a split, draws `--paths` location sequences from the prior for each (as VAR's
training does, step by step), and measures:

- the reward r = log p(y | a, x) / length (VAR's, per word): its spread across locations for one
  caption (within-caption std) against its spread across captions (what the moving-average
  baseline b, one number for the whole batch, leaves in the advantage r - b);
- the prior's REINFORCE gradient lambda_r (r - b) grad log pi(a) on the attention parameters, as a
  minibatch of `--batch` captions with one path each would estimate it: the norm of its mean over
  the draws (the signal), the root of its total variance (the noise of one update), their ratio,
  and the same with a per-caption baseline (the mean reward of the caption's own paths), which
  removes the across-caption part;
- the entropy bonus's gradient lambda_e grad H(pi) on the same parameters.

    python -m research.var_signal MODEL_DIR [--config TRAINING_CONFIG.yaml] [--split val]
        [--captions 160] [--paths 16] [--device cpu] [--out signal.json] [--set KEY=VALUE ...]

The data comes from the model's training_config.yaml unless --config is given (--set overrides it,
e.g. data.root=... data.features=...).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

import captioner
from captioner.config import load_config
from captioner.data.datasets import load_dataset
from captioner.estimators import masked_sum, step_entropy
from captioner.models.decoder import location_log_probs, word_log_probs


def _prior_parameters(model) -> list[torch.nn.Parameter]:
    decoder = model.decoder
    return [p for m in (decoder.attend_feature, decoder.attend_hidden, decoder.attend_score) for p in m.parameters()]


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def measure(model, split, device, captions: int = 160, paths: int = 16, reinforce_weight: float = 0.1,
            entropy_weight: float = 0.002, seed: int = 0) -> dict:
    model.eval()  # the question is what the gradient is at these weights, without dropout noise
    decoder = model.decoder
    images, count = [], 0
    while count < captions and len(images) < len(split):
        images.append(len(images))
        count += len(split.captions[len(images) - 1])
    batch = split.batch(images, model.vocabulary, None).to(device)
    text = batch.text.rows(0, min(captions, len(batch.text)))
    image_index = batch.image_index[: len(text)]
    n = len(text)
    parameters = _prior_parameters(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    rewards, gradients, gradients_own_baseline = [], [], []
    features_all = model.encode_inputs(batch.inputs, batch.input_kind).detach()
    features = features_all[image_index]
    lengths = text.lengths.clamp_min(1).to(features.dtype)
    draws = []
    with torch.no_grad():
        for _ in range(paths):
            output = decoder.forward_stepwise(features, text.inputs, "prior", generator=generator)
            reward = masked_sum(word_log_probs(output.word_logits, text.targets), text.mask) / lengths
            draws.append(output.locations)
            rewards.append(reward)
    rewards = torch.stack(rewards)  # (paths, n)
    baseline = rewards.mean()  # what a moving average over batches settles on
    own = rewards.mean(0)  # per-caption baseline
    entropy_gradient = None
    for m in range(paths):
        output = decoder.forward_stepwise(features, text.inputs, "given", locations=draws[m])
        log_p_locations = masked_sum(location_log_probs(output.attention_logits, draws[m]), text.mask)
        advantage = rewards[m] - baseline
        surrogate = reinforce_weight * (advantage * log_p_locations).mean()
        gradients.append(_flat(torch.autograd.grad(surrogate, parameters, retain_graph=True)))
        own_advantage = rewards[m] - own
        surrogate = reinforce_weight * (own_advantage * log_p_locations).mean()
        gradients_own_baseline.append(_flat(torch.autograd.grad(surrogate, parameters, retain_graph=m == 0)))
        if m == 0:
            entropy = (masked_sum(step_entropy(output.attention_logits), text.mask)).mean()
            entropy_gradient = _flat(torch.autograd.grad(entropy_weight * entropy, parameters))
    gradients = torch.stack(gradients)
    gradients_own_baseline = torch.stack(gradients_own_baseline)

    def signal_noise(g: torch.Tensor) -> dict:
        # |mean of the draws|^2 overstates |E g|^2 by the variance of the mean, trace(Var) / draws
        variance = float(g.var(0).sum())
        signal = math.sqrt(max(0.0, float(g.mean(0).square().sum()) - variance / len(g)))
        noise = math.sqrt(variance)
        return {"signal_norm": signal, "noise_norm": noise,
                "signal_to_noise": signal / noise if noise > 0 else float("inf")}

    with torch.no_grad():
        prior = decoder.forward_stepwise(features, text.inputs, "argmax")
        prior_entropy = float((masked_sum(step_entropy(prior.attention_logits), text.mask) / lengths).mean())
    return {
        "captions": n, "paths": paths, "grid_locations": features.shape[1],
        "prior_entropy": prior_entropy, "max_entropy": math.log(features.shape[1]),
        "reward_mean": float(baseline),
        "reward_std_within_caption": float(rewards.std(0).mean()),
        "reward_std_across_captions": float(own.std()),
        "within_over_across": float(rewards.std(0).mean() / own.std()),
        "reinforce_moving_average_baseline": signal_noise(gradients),
        "reinforce_per_caption_baseline": signal_noise(gradients_own_baseline),
        "entropy_bonus_gradient_norm": float(entropy_gradient.norm()),
        "reinforce_weight": reinforce_weight, "entropy_weight": entropy_weight,
        "note": f"gradients on the prior's attention parameters, of a minibatch of {n} captions with one path each",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--split", default="val")
    parser.add_argument("--captions", type=int, default=160)
    parser.add_argument("--paths", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    config = load_config(args.config or args.model / "training_config.yaml", args.overrides)
    device = torch.device(args.device)
    model = captioner.load(args.model, device)
    split = load_dataset(config.data, config.model)[args.split]
    e = config.estimator
    report = {"model": str(args.model), "split": args.split,
              **measure(model, split, device, args.captions, args.paths, e.reinforce_weight, e.entropy_weight,
                        args.seed)}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
