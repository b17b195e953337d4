"""The efficiency study's figures (captioner.study): one PNG per question, written under the study's folder.

- bound_vs_updates.png, bound_vs_gpu_seconds.png: dev L_K from the prior, mean over seeds with the
  min..max band, one line per arm; with a timing of each estimator alone on the GPU (the study's runs
  shared one), also bound_vs_alone_seconds.png: the same against updates x that cost per update;
- bleu_vs_updates.png: dev BLEU-4 with greedy decoding;
- gradient_variance.png: variance from the attention samples alone of the prior's and the decoder's
  gradients at each measured update (log scale), and relative to the mean gradient's squared norm,
  per arm (mean over seeds), with WS-RAM's same draws without control variates and with c^p;
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


def _band(axis, curves: list[list[dict]], x_key: str, y_key: str, label: str, **style) -> np.ndarray:
    """Mean over seeds (and the min..max band for several) of `y_key` against `x_key`, at the updates
    every seed measured; returns the plotted means after update 0 (for the axis range)."""
    steps = sorted(set.intersection(*[{r["step"] for r in c if r.get(y_key) is not None} for c in curves]))
    if not steps:
        return np.zeros(0)
    xs = np.array([[next(r[x_key] for r in c if r["step"] == s) for s in steps] for c in curves], dtype=float)
    ys = np.array([[next(r[y_key] for r in c if r["step"] == s) for s in steps] for c in curves], dtype=float)
    line, = axis.plot(xs.mean(0), ys.mean(0), label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})",
                      **style)
    if len(curves) > 1:
        axis.fill_between(xs.mean(0), ys.min(0), ys.max(0), alpha=0.2, color=line.get_color())
    return ys.mean(0)[np.array(steps) > 0]


def _arm_groups(study) -> list[tuple[str, list]]:
    """The panels of a curve figure: the arms with several seeds; and the one-seed ablations beside
    the several-seed WS-RAM and VAR arms for reference (one panel if either group is empty)."""
    main = [a for a in study.arms if len(a.seeds) > 1]
    single = [a for a in study.arms if len(a.seeds) == 1]
    if not main or not single:
        return [("", list(study.arms))]
    reference = [a for a in main if a.name in ("wsram", "var")]
    return [("arms with several seeds", main), ("one-seed ablations (WS-RAM and VAR for reference)", reference + single)]


def plot_study(study, out: Path, summary: dict) -> list[Path]:
    out = Path(out)
    written = []
    panels = [("bound_vs_updates.png", "step", "dev_bound_prior", "updates", "dev L_K, prior, K = %d (nats)"),
              ("bound_vs_gpu_seconds.png", "gpu_seconds", "dev_bound_prior", "GPU seconds of training",
               "dev L_K, prior, K = %d (nats)"),
              ("bleu_vs_updates.png", "step", "dev_bleu_4_greedy", "updates", "dev BLEU-4, greedy")]
    timing = summary.get("timing_alone_seconds_per_update")
    if timing:
        panels.insert(2, ("bound_vs_alone_seconds.png", "alone_seconds", "dev_bound_prior",
                          "seconds of training, at each estimator's cost per update alone on the GPU",
                          "dev L_K, prior, K = %d (nats)"))
    groups = _arm_groups(study)
    colours = plt.get_cmap("tab20").colors
    colour = {arm.name: colours[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20] for i, arm in enumerate(study.arms)}
    for name, x_key, y_key, x_label, y_label in panels:
        shown_groups = groups[:1] if x_key == "alone_seconds" else groups  # ablations are not timed alone
        figure, axes = plt.subplots(1, len(shown_groups), figsize=(6.5 * len(shown_groups), 4.8), squeeze=False)
        for axis, (title, arms) in zip(axes[0], shown_groups):
            shown = []
            for arm in arms:
                curves = _curves(out, arm)
                if x_key == "alone_seconds":
                    cost = arm.timed_cost(timing)
                    if cost is None:
                        continue
                    curves = [[{**r, "alone_seconds": r["step"] * cost} for r in c] for c in curves]
                if curves:
                    dashed = len(arm.seeds) == 1 and len(groups) > 1
                    shown.append(_band(axis, curves, x_key, y_key, arm.name, color=colour[arm.name],
                                       linestyle="--" if dashed else "-", marker="." if dashed else None))
            values = np.concatenate(shown) if shown else np.zeros(0)
            if values.size and y_key == "dev_bound_prior":  # update 0 (far below) off the axis: the rest readable
                spread = max(float(values.max() - values.min()), 1e-6)
                axis.set_ylim(float(values.min()) - 0.05 * spread, float(values.max()) + 0.1 * spread)
                title = (title + "; " if title else "") + "update 0 below the axis"
            axis.set_title(title, fontsize=9)
            axis.set_xlabel(x_label)
            axis.set_ylabel(y_label % study.bound_samples if "%d" in y_label else y_label)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=7)
            axis.grid(alpha=0.3)
        figure.tight_layout()
        written.append(save_figure(figure, out / name))

    # Gradient variance: one line per arm (mean over its seeds at each measured update), the variance
    # and the variance relative to the squared norm of the mean gradient; for the WS-RAM arm also the
    # same draws scored without control variates and with the prior's c^p (dashed, dotted).
    by_arm: dict[str, list[dict]] = {}
    for run in summary["runs"]:
        by_arm.setdefault(run["arm"], []).append(run)

    def _mean_points(runs: list[dict], key: str) -> tuple[list[int], list[float]]:
        steps = sorted({p["step"] for r in runs for p in r["variance_points"] if p.get(key)})
        means = [float(np.mean([p[key] for r in runs for p in r["variance_points"] if p["step"] == s and p.get(key)]))
                 for s in steps]
        return steps, means

    figure, axes = plt.subplots(2, 2, figsize=(13, 8.5), sharex=True)
    exact_zero = [name for name, runs in by_arm.items()
                  if runs and all(not p.get("prior_variance") and not p.get("decoder_variance")
                                  for r in runs for p in r["variance_points"]) and any(r["variance_points"] for r in runs)]
    for row, (suffix, what) in enumerate((("variance", "variance"), ("relative_variance", "variance / |mean gradient|^2"))):
        for column, group in enumerate(("prior", "decoder")):
            axis = axes[row][column]
            for arm in study.arms:
                runs = by_arm.get(arm.name, [])
                steps, means = _mean_points(runs, f"{group}_{suffix}")
                if steps:
                    axis.plot(steps, means, marker="o", color=colour[arm.name], label=f"{arm.name} ({len(runs)})")
                if arm.name == "wsram" and suffix == "variance":
                    for extra, style, label in (("_without_cv", "--", "wsram, same draws without control variates"),
                                                ("_with_prior_cv", ":", "wsram, same draws with the prior's c^p")):
                        steps, means = _mean_points(runs, f"{group}_variance{extra}")
                        if steps:
                            axis.plot(steps, means, marker="x", linestyle=style, color=colour[arm.name], label=label)
            axis.set_yscale("log")
            axis.set_ylabel(f"{group}: {what}", fontsize=9)
            if row == 1:
                axis.set_xlabel("updates")
            axis.grid(alpha=0.3)
    note = f" ({', '.join(exact_zero)}: exactly 0, no sampling)" if exact_zero else ""
    figure.suptitle(f"Gradient variance from the attention samples alone: {study.variance_draws} draws, fixed "
                    f"minibatch and parameters, mean over seeds{note}", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="center right", fontsize=7)
    figure.tight_layout(rect=(0, 0, 0.8, 0.96))
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
