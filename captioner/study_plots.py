"""The efficiency study's figures (captioner.study): one PNG per question, written under the study's folder.

- bound_vs_updates.png, bound_vs_gpu_seconds.png: dev L_K from the prior, mean over seeds with the
  min..max band, one line per arm;
- bleu_vs_updates.png: dev BLEU-4 with greedy decoding;
- gradient_variance.png: variance from the attention samples alone of the prior's and the decoder's
  gradients at each measured update (log scale), per arm, and WS-RAM without control variates;
- ess_per_k.png: WS-RAM's effective sample size over K during training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from captioner.plots import plt, save_figure


def _curves(out: Path, arm) -> list[list[dict]]:
    curves = []
    for seed in arm.seeds:
        path = out / "runs" / f"{arm.name}-s{seed}" / "curve.jsonl"
        if path.is_file():
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if records:
                curves.append(records)
    return curves


def _band(axis, curves: list[list[dict]], x_key: str, y_key: str, label: str) -> None:
    steps = sorted(set.intersection(*[{r["step"] for r in c if r.get(y_key) is not None} for c in curves]))
    if not steps:
        return
    xs = np.array([[next(r[x_key] for r in c if r["step"] == s) for s in steps] for c in curves], dtype=float)
    ys = np.array([[next(r[y_key] for r in c if r["step"] == s) for s in steps] for c in curves], dtype=float)
    line, = axis.plot(xs.mean(0), ys.mean(0), label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
    if len(curves) > 1:
        axis.fill_between(xs.mean(0), ys.min(0), ys.max(0), alpha=0.2, color=line.get_color())


def plot_study(study, out: Path, summary: dict) -> list[Path]:
    out = Path(out)
    written = []
    panels = [("bound_vs_updates.png", "step", "dev_bound_prior", "updates", "dev L_K, prior, K = %d (nats)"),
              ("bound_vs_gpu_seconds.png", "gpu_seconds", "dev_bound_prior", "GPU seconds of training",
               "dev L_K, prior, K = %d (nats)"),
              ("bleu_vs_updates.png", "step", "dev_bleu_4_greedy", "updates", "dev BLEU-4, greedy")]
    for name, x_key, y_key, x_label, y_label in panels:
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for arm in study.arms:
            curves = _curves(out, arm)
            if curves:
                _band(axis, curves, x_key, y_key, arm.name)
        axis.set_xlabel(x_label)
        axis.set_ylabel(y_label % study.bound_samples if "%d" in y_label else y_label)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
        figure.tight_layout()
        written.append(save_figure(figure, out / name))

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, group in zip(axes, ("prior", "decoder")):
        for run in summary["runs"]:
            points = [p for p in run["variance_points"] if p.get(f"{group}_variance")]
            if points:
                axis.plot([p["step"] for p in points], [p[f"{group}_variance"] for p in points], marker="o",
                          label=f"{run['arm']} s{run['seed']}")
            for suffix, marker, style, label in (("_without_cv", "x", "--", "no control variates"),
                                                 ("_with_prior_cv", "^", ":", "with the prior's c^p")):
                points = [p for p in run["variance_points"] if p.get(f"{group}_variance{suffix}")]
                if points:
                    axis.plot([p["step"] for p in points], [p[f"{group}_variance{suffix}"] for p in points],
                              marker=marker, linestyle=style, label=f"{run['arm']} s{run['seed']}, {label}")
        axis.set_yscale("log")
        axis.set_xlabel("updates")
        axis.set_ylabel(f"{group} gradient variance from the samples")
        axis.set_title(f"{group} parameters, {study.variance_draws} draws, fixed minibatch", fontsize=9)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    written.append(save_figure(figure, out / "gradient_variance.png"))

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for arm in study.arms:
        if arm.estimator != "wsram":
            continue
        curves = [c for c in _curves(out, arm) if any(r.get("train_ess_per_k") is not None for r in c)]
        if curves:
            _band(axis, curves, "step", "train_ess_per_k", arm.name)
    axis.set_xlabel("updates")
    axis.set_ylabel("ESS / K of the training batch")
    axis.set_ylim(0, 1.05)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    written.append(save_figure(figure, out / "ess_per_k.png"))
    return written
