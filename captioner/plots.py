"""Pictures a person would rather look at than read: learning curves and where the model looked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


def save_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """Write `figure` to `path` (folders made as needed) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def plot_learning_curves(histories: Mapping[str, Sequence[dict]], path: str | Path) -> Path:
    """One line per run: validation bound L_K, BLEU-4 and attention accuracy against epochs.

    histories: run name -> validation records (as written to log.jsonl)."""
    panels = [("bound_prior_per_word", "validation L_K per word (nats)"), ("Bleu_4", "validation BLEU-4"),
              ("attention_accuracy", "attention accuracy")]
    # Attention accuracy needs ground-truth cells, which only the built-in data has.
    panels = [(key, title) for key, title in panels
              if any(key in r for records in histories.values() for r in records)] or panels[:2]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    axes = axes[0]
    for axis, (key, title) in zip(axes, panels):
        for name, records in histories.items():
            epochs = [r["epoch"] for r in records if key in r]
            values = [r[key] for r in records if key in r]
            axis.plot(epochs, values, marker="o", label=name)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    return save_figure(figure, path, dpi=110)


def plot_attention(image: np.ndarray, words: Sequence[str], locations: Sequence[int | Sequence[int]], grid: int,
                   path: str | Path, location_probs: Sequence[float] | None = None, columns: int = 6) -> Path:
    """The image, then one panel per word with the attended cell highlighted (Show-Attend-Tell style);
    a word's entry of `locations` may list several cells (several glimpses per word): all are shown."""
    return save_figure(attention_figure(image, words, locations, grid, location_probs, columns), path, dpi=100)


def attention_figure(image: np.ndarray, words: Sequence[str], locations: Sequence[int | Sequence[int]], grid: int,
                     location_probs: Sequence[float] | None = None, columns: int = 6):
    """The matplotlib figure of `plot_attention`: panel 0 the image, panel t+1 word t over its cell."""
    panels = len(words) + 1
    rows = (panels + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.2 * rows), squeeze=False)
    height, width = image.shape[:2]
    cell_h, cell_w = height / grid, width / grid
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= panels:
            continue
        if index == 0:
            axis.imshow(image)
            axis.set_title("image", fontsize=9)
            continue
        t = index - 1
        cells = sorted({int(c) for c in locations[t]}) if isinstance(locations[t], Sequence) else [int(locations[t])]
        axis.imshow((image * 0.35).astype(np.uint8))
        for cell in cells:
            row, col = divmod(cell, grid)
            axis.imshow(image[int(row * cell_h):int((row + 1) * cell_h), int(col * cell_w):int((col + 1) * cell_w)],
                        extent=(col * cell_w - 0.5, (col + 1) * cell_w - 0.5, (row + 1) * cell_h - 0.5,
                                row * cell_h - 0.5))
            axis.add_patch(Rectangle((col * cell_w - 0.5, row * cell_h - 0.5), cell_w, cell_h, fill=False,
                                     edgecolor="yellow", linewidth=2))
        axis.set_xlim(-0.5, width - 0.5)
        axis.set_ylim(height - 0.5, -0.5)
        title = words[t] if location_probs is None else f"{words[t]} ({location_probs[t]:.2f})"
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure
