"""Figures that overlay runs (paper Figs. 2 and 3, gradient consistency, scale, per-block accuracy)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .runs import RunRecord  # noqa: E402


def _finish(fig: plt.Figure, path: Path) -> Path:
    for ax in fig.axes:
        if ax.get_xlabel() in ("epoch", "block"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_errors(runs: Sequence[RunRecord], path: Path) -> Path:
    """Training (dashed) and test (solid) error per epoch (Fig. 2)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for index, run in enumerate(runs):
        colour = f"C{index}"
        for key, style, what in (("test_error", "-", "test"), ("train_error", "--", "train")):
            epochs, values = run.series(key)
            ax.plot(epochs, [100 * v for v in values], style, color=colour, label=f"{run.label()} {what}")
    ax.set(xlabel="epoch", ylabel="error (%)", title="Training and test error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_orthogonality_sparsity(runs: Sequence[RunRecord], path: Path) -> Path:
    """Inter-class orthogonality O and activation sparsity L1 per epoch (Fig. 3A, 3B)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    runs = [run for run in runs if run.series("diagnostics.sparsity")[0]]
    for index, run in enumerate(runs):
        left.plot(*run.series("diagnostics.orthogonality.inter"), "o-", color=f"C{index}", label=run.label())
        right.plot(*run.series("diagnostics.sparsity"), "o-", color=f"C{index}", label=run.label())
    left.set(xlabel="epoch", ylabel="mean cos(sample, other class means)", title="(A) inter-class orthogonality (lower = more orthogonal)")
    right.set(xlabel="epoch", ylabel="L1 of unit pattern / sqrt(D)", title="(B) activation sparsity (lower = sparser)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_gradient_cosine(runs: Sequence[RunRecord], path: Path) -> Path:
    """Per run, the cosine between the caps update and the full gradient for every block, per epoch."""
    runs = [run for run in runs if run.series("diagnostics.gradient_cosine")[0]]
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(5 * max(1, len(runs)), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        epochs, values = run.series("diagnostics.gradient_cosine")
        blocks = len(values[0])
        colours = plt.cm.viridis([i / max(1, blocks - 1) for i in range(blocks)])
        for block in range(blocks):
            cosines = [float("nan") if v[block] is None else v[block] for v in values]  # None: a frozen block
            ax.plot(epochs, cosines, "o-", color=colours[block], label=f"block {block}")
        ax.set(xlabel="epoch", ylabel="cos(partial, full gradient)", title=run.label(), ylim=(-0.05, 1.05))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not runs:
        axes[0][0].text(0.5, 0.5, "no gradient diagnostics in these runs", ha="center")
    return _finish(fig, path)


def plot_scale(runs: Sequence[RunRecord], path: Path) -> Path:
    """Norm of the global pattern m per epoch (the 1/||m|| step-size argument, eq. 12)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    runs = [run for run in runs if run.series("diagnostics.scale.m_norm")[0]]
    for index, run in enumerate(runs):
        ax.plot(*run.series("diagnostics.scale.m_norm"), "o-", color=f"C{index}", label=run.label())
    ax.set(xlabel="epoch", ylabel="mean ||m||", title="Scale of the global pattern")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_block_accuracy(runs: Sequence[RunRecord], path: Path) -> Path:
    """Accuracy of each block's pattern against its own prototype slice, at the last diagnostics."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    runs = [run for run in runs if run.series("diagnostics.block_accuracy")[0]]
    width = 0.8 / max(1, len(runs))
    for index, run in enumerate(runs):
        accuracy = run.series("diagnostics.block_accuracy")[1][-1]
        blocks = run.series("diagnostics.read_blocks")[1][-1]
        ax.bar([b + (index - (len(runs) - 1) / 2) * width for b in blocks], [100 * a for a in accuracy], width,
               color=f"C{index}", label=run.label())
    ax.set(xlabel="block", ylabel="accuracy (%)", title="Per-block accuracy (own prototype slice), last epoch", ylim=(0, 118))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", ncol=max(1, len(runs)))
    return _finish(fig, path)


FIGURES = {
    "errors.png": plot_errors,
    "orthogonality_sparsity.png": plot_orthogonality_sparsity,
    "gradient_cosine.png": plot_gradient_cosine,
    "m_norm.png": plot_scale,
    "block_accuracy.png": plot_block_accuracy,
}


def plot_all(runs: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    labels = [run.label() for run in runs]
    for run, label in zip(runs, labels):
        if labels.count(label) > 1:  # same description twice: tell them apart by folder
            run.name = f"{label} [{run.path.name}]"
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot(runs, out_dir / name) for name, plot in FIGURES.items()]
