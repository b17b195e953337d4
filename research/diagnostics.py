"""How noisy an estimator's gradient is because of the sampled attention locations alone.

`gradient_variance` takes one minibatch and fixed parameters, and computes the training gradient
`draws` times, each time with new location samples (a fresh generator seed) but the same dropout
masks (the global generator is reset to the same state before every draw) and the same VAR
baseline (restored before every draw). What varies between the draws is therefore only the
attention samples. For each group of parameters it reports the total variance (the trace of the
gradient's covariance over the draws, summed over the group's coordinates), the squared norm of
the mean gradient, and their ratio. Soft attention draws nothing: its variance is exactly zero.

Groups: `prior` (the attention network pi: the decoder's attend_feature, attend_hidden and
attend_score), `decoder` (the rest of the decoder: embedding, initial state, LSTM, word output),
`proposal` (q_phi, where the model has one) and `encoder` (trainable encoder parameters).
"""

from __future__ import annotations

import copy

import torch

from captioner.config import EstimatorConfig, ResearchConfig
from captioner.data.batching import CaptionText
from captioner.estimators import ReinforceBaseline, compute_loss

PRIOR_MODULES = ("attend_feature", "attend_hidden", "attend_score")


def parameter_groups(model) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """The model's trainable parameters by role (see the module docstring), as (name, parameter)."""
    groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {"prior": [], "decoder": [], "proposal": [],
                                                                "encoder": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("decoder."):
            module = name.split(".")[1]
            groups["prior" if module in PRIOR_MODULES else "decoder"].append((name, parameter))
        elif name.startswith("proposal."):
            groups["proposal"].append((name, parameter))
        else:
            groups["encoder"].append((name, parameter))
    return {group: members for group, members in groups.items() if members}


def gradient_variance(model, inputs: torch.Tensor, input_kind: str | None, rows: torch.Tensor, text: CaptionText,
                      estimator: EstimatorConfig, baseline: ReinforceBaseline | None = None, draws: int = 20,
                      seed: int = 0, research: ResearchConfig | None = None) -> dict[str, dict[str, float]]:
    """Per parameter group: {"variance": sum over coordinates of the variance over `draws` gradients,
    "mean_squared_norm": |mean gradient|^2, "relative": variance / mean_squared_norm, "parameters": count}.

    inputs are the M images' model inputs (grids or pixels, encoded with model.encode_inputs(inputs,
    input_kind)), or with input_kind None the decoder's features (M, L, D) themselves; rows (N,) the
    image of each of the N captions of `text`. The model's mode (train/eval) is used as it is; its parameters and
    `baseline` are left unchanged."""
    if draws < 2:
        raise ValueError(f"gradient_variance needs at least 2 draws, got {draws}")
    groups = parameter_groups(model)
    device = inputs.device
    baseline = baseline if baseline is not None else ReinforceBaseline()
    dropout_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    # Welford's running mean and sum of squared deviations per coordinate: exact for equal draws.
    means = {g: [torch.zeros_like(p, dtype=torch.float64) for _, p in members] for g, members in groups.items()}
    deviations = {g: [torch.zeros_like(p, dtype=torch.float64) for _, p in members] for g, members in groups.items()}
    for draw in range(draws):
        torch.random.set_rng_state(dropout_state)  # the same dropout masks in every draw
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + draw)
        model.zero_grad(set_to_none=True)
        features = inputs if input_kind is None else model.encode_inputs(inputs, input_kind)
        result = compute_loss(model, features, text, estimator, copy.deepcopy(baseline), generator, rows, research)
        result.loss.backward()
        for group, members in groups.items():
            for mean, m2, (_, parameter) in zip(means[group], deviations[group], members):
                gradient = parameter.grad.double() if parameter.grad is not None else torch.zeros_like(mean)
                delta = gradient - mean
                mean += delta / (draw + 1)
                m2 += delta * (gradient - mean)
    model.zero_grad(set_to_none=True)
    torch.random.set_rng_state(dropout_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)
    report = {}
    for group, members in groups.items():
        mean_squared_norm = sum(float(mean.square().sum()) for mean in means[group])
        variance = sum(float(m2.sum()) for m2 in deviations[group]) / (draws - 1)  # Bessel's correction
        report[group] = {
            "variance": variance,
            "mean_squared_norm": mean_squared_norm,
            "relative": variance / mean_squared_norm if mean_squared_norm > 0 else float("inf"),
            "parameters": sum(p.numel() for _, p in members),
        }
    return report
