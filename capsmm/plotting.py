"""Figures that overlay cells of runs (paper Figs. 2 and 3, gradient consistency, scale, per-block
accuracy): one line per cell, the mean over its seeds with a ± std band."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from .benchmark import same_speed_options
from .errors import ConfigError
from .run_records import RunRecord, cell_label, cells, varying_keys


def _finish(fig: plt.Figure, path: Path, *, shared_legend: bool = False, **legend: object) -> Path:
    """Legends, integer epoch ticks, layout, save, close. ``shared_legend``: the panels show the same
    lines, so one legend (the first panel's) goes under them instead of one per panel."""
    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0] and not shared_legend:
            ax.legend(**{"fontsize": 8, **legend})
        if ax.get_xlabel() in ("epoch", "block"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    if shared_legend:
        fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0), fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight" if shared_legend else None)
    plt.close(fig)
    return path


Cell = tuple[str, list[RunRecord]]


def labelled_cells(runs: Sequence[RunRecord]) -> list[Cell]:
    """(label, runs) per cell: runs differing only in the seed, labelled by the keys that vary."""
    keys = varying_keys(runs)
    return [(cell_label(members[0], keys), members) for members in cells(runs, keys).values()]


def mean_series(members: Sequence[RunRecord], key: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, std) of a scalar metric over a cell's runs, at every epoch some of them have."""
    by_epoch: dict[int, list[float]] = {}
    for run in members:
        for epoch, value in zip(*run.series(key)):
            by_epoch.setdefault(epoch, []).append(float(value))
    epochs = sorted(by_epoch)
    return (epochs, [statistics.fmean(by_epoch[e]) for e in epochs],
            [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])


def _line(ax: plt.Axes, members: Sequence[RunRecord], key: str, colour: str, label: str, style: str = "o-", scale: float = 1.0) -> None:
    """The cell's mean per epoch, with markers (one-epoch runs show as points), and a ± std band over seeds."""
    epochs, mean, std = mean_series(members, key)
    if not epochs:
        return
    mean_scaled = [scale * m for m in mean]
    n = len(members)
    ax.plot(epochs, mean_scaled, style, color=colour, markersize=4, label=f"{label} (n={n})" if n > 1 else label)
    if n > 1:
        ax.fill_between(epochs, [scale * (m - d) for m, d in zip(mean, std)], [scale * (m + d) for m, d in zip(mean, std)],
                        color=colour, alpha=0.15, linewidth=0)


def plot_errors(runs: Sequence[RunRecord], path: Path) -> Path:
    """Training (dashed) and test (solid) error per epoch (Fig. 2), mean ± std over seeds."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for index, (label, members) in enumerate(labelled_cells(runs)):
        _line(ax, members, "test_error", f"C{index}", f"{label} test", "o-", 100)
        _line(ax, members, "train_error", f"C{index}", f"{label} train", "s--", 100)
    ax.set(xlabel="epoch", ylabel="error (%)", title="Training and test error (band: ± std over seeds)")
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def _with(runs: Sequence[RunRecord], key: str) -> list[Cell]:
    return [(label, members) for label, members in labelled_cells(runs) if any(run.series(key)[0] for run in members)]


def plot_modality_errors(runs: Sequence[RunRecord], path: Path) -> Path:
    """Each modality's test error on its own, per epoch (multimodal runs), one panel per modality: inside
    a joint model its own slices, in a late fusion its own model, trained alone on the same pairs (the
    imbalance figure: how far joint training leaves a modality behind the same encoder alone)."""
    modalities = sorted({name for run in runs for record in run.metrics for name in record.get("test_error_by_modality", {}) if "+" not in name})
    fig, axes = plt.subplots(1, max(1, len(modalities)), figsize=(5.4 * max(1, len(modalities)), 4.2), squeeze=False)
    for ax, modality in zip(axes[0], modalities):
        for index, (label, members) in enumerate(_with(runs, f"test_error_by_modality.{modality}")):
            _line(ax, members, f"test_error_by_modality.{modality}", f"C{index}", label, "o-", 100)
        ax.set(xlabel="epoch", ylabel="test error (%)", title=f"{modality} alone (band: ± std over seeds)")
        ax.grid(alpha=0.3)
    return _finish(fig, path, shared_legend=True)


def plot_orthogonality_sparsity(runs: Sequence[RunRecord], path: Path) -> Path:
    """Inter-class orthogonality O and activation sparsity L1 per epoch (Fig. 3A, 3B)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for index, (label, members) in enumerate(_with(runs, "diagnostics.sparsity")):
        _line(left, members, "diagnostics.orthogonality.inter", f"C{index}", label)
        _line(right, members, "diagnostics.sparsity", f"C{index}", label)
    left.set(xlabel="epoch", ylabel="mean cos(sample, other class means)", title="(A) inter-class orthogonality (lower = more orthogonal)")
    right.set(xlabel="epoch", ylabel="L1 of unit pattern / sqrt(D)", title="(B) activation sparsity (lower = sparser)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _finish(fig, path)


def plot_gradient_cosine(runs: Sequence[RunRecord], path: Path) -> Path:
    """Per cell, the cosine between the caps update and the full gradient for every block, per epoch."""
    selected = _with(runs, "diagnostics.gradient_cosine")
    fig, axes = plt.subplots(1, max(1, len(selected)), figsize=(5 * max(1, len(selected)), 4), squeeze=False)
    for ax, (label, members) in zip(axes[0], selected):
        blocks = len(next(run.series("diagnostics.gradient_cosine")[1][0] for run in members if run.series("diagnostics.gradient_cosine")[0]))
        colours = plt.cm.viridis([i / max(1, blocks - 1) for i in range(blocks)])
        for block in range(blocks):
            by_epoch: dict[int, list[float]] = {}
            for run in members:
                for epoch, values in zip(*run.series("diagnostics.gradient_cosine")):
                    if values[block] is not None:  # None: a frozen block
                        by_epoch.setdefault(epoch, []).append(values[block])
            epochs = sorted(by_epoch)
            ax.plot(epochs, [statistics.fmean(by_epoch[e]) for e in epochs], "o-", color=colours[block], label=f"block {block}")
        ax.set(xlabel="epoch", ylabel="cos(partial, full gradient)", title=label, ylim=(-0.05, 1.05))
        ax.grid(alpha=0.3)
    if not selected:
        axes[0][0].text(0.5, 0.5, "no gradient diagnostics in these runs", ha="center")
    return _finish(fig, path)


def plot_scale(runs: Sequence[RunRecord], path: Path) -> Path:
    """Norm of the global pattern m per epoch (the 1/||m|| step-size argument, eq. 12)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for index, (label, members) in enumerate(_with(runs, "diagnostics.scale.m_norm")):
        _line(ax, members, "diagnostics.scale.m_norm", f"C{index}", label)
    ax.set(xlabel="epoch", ylabel="mean ||m||", title="Scale of the global pattern")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def plot_block_accuracy(runs: Sequence[RunRecord], path: Path) -> Path:
    """Accuracy of each block's pattern against its own prototype slice at the last diagnostics (mean over seeds)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    selected = _with(runs, "diagnostics.block_accuracy")
    width = 0.8 / max(1, len(selected))
    for index, (label, members) in enumerate(selected):
        finals = [run.series("diagnostics.block_accuracy")[1][-1] for run in members if run.series("diagnostics.block_accuracy")[0]]
        blocks = next(run.series("diagnostics.read_blocks")[1][-1] for run in members if run.series("diagnostics.read_blocks")[0])
        accuracy = [statistics.fmean(values) for values in zip(*finals)]
        ax.bar([b + (index - (len(selected) - 1) / 2) * width for b in blocks], [100 * a for a in accuracy], width,
               color=f"C{index}", label=label)
    ax.set(xlabel="block", ylabel="accuracy (%)", title="Per-block accuracy (own prototype slice), last epoch", ylim=(0, 118))
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, path, loc="upper center", ncol=max(1, len(selected)))


def plot_incremental(runs: Sequence[RunRecord], path: Path) -> Path:
    """Class-incremental runs: accuracy on every class seen so far after each task, mean ± std over seeds."""
    selected = _with_results(runs, "seen_accuracy")
    # the legend goes under the axes: a study has many methods, and their curves fill the whole plot
    fig, ax = plt.subplots(figsize=(6.4, 4.2 + 0.2 * len(selected)))
    for index, (label, members) in enumerate(selected):
        curves = [run.value("seen_accuracy") for run in members]
        tasks = list(range(1, max(map(len, curves)) + 1))
        by_task = [[c[t - 1] for c in curves if len(c) >= t] for t in tasks]
        mean = [100 * statistics.fmean(v) for v in by_task]
        std = [100 * statistics.stdev(v) if len(v) > 1 else 0.0 for v in by_task]
        name = f"{label} (n={len(members)})" if len(members) > 1 else label
        if len(tasks) == 1:  # joint training, every class in one task: the upper bound, a line across the tasks
            ax.axhline(mean[0], color=f"C{index}", linestyle="--", linewidth=1, label=name)
            continue
        ax.plot(tasks, mean, "o-", color=f"C{index}", markersize=4, label=name)
        if len(members) > 1:
            ax.fill_between(tasks, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)], color=f"C{index}", alpha=0.15,
                            linewidth=0)
    ax.set(xlabel="task", ylabel="accuracy on the classes seen (%)", title="Class-incremental learning (band: ± std over seeds)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return _finish(fig, path, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)


def _with_results(runs: Sequence[RunRecord], key: str) -> list[Cell]:
    return [(label, members) for label, members in labelled_cells(runs) if any(run.value(key) for run in members)]


def plot_reliability(calibration: dict[str, Any], path: Path, title: str) -> Path:
    """The reliability diagram of one evaluation: accuracy against mean confidence per confidence
    bin (bars), the diagonal of perfect calibration, and the share of samples per bin."""
    reliability = calibration["reliability"]
    bins = reliability["bins"]
    centres = [(b + 0.5) / bins for b in range(bins)]
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.bar(centres, [a or 0 for a in reliability["accuracy"]], 1 / bins, edgecolor="k", linewidth=0.5, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    total = max(1, sum(reliability["count"]))
    ax.plot(centres, [c / total for c in reliability["count"]], "o:", color="C1", markersize=3, label="share of samples")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{title}\nECE {100 * calibration['ece']:.2f}%, NLL {calibration['nll']:.3f}")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _finish(fig, path, loc="upper left")


#: scalar figures of an evaluation (``RUN_DIR/evaluation/<name>.json``) that plot_runs.py compares
EVALUATION_FIGURES = ("clean_error", "mce", "calibration.ece", "ood.auroc.msp", "ood.auroc.cap_similarity")


def plot_evaluations(runs: Sequence[RunRecord], path: Path) -> Path:
    """Per evaluation name, the robustness figures of every cell side by side (mean ± std over seeds):
    clean error, mean corruption error, each attack's errors, ECE, OOD AUROCs."""
    names = list(dict.fromkeys(name for run in runs for name in (run.value("evaluation") or {})))
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 3.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        keys = [k for k in EVALUATION_FIGURES if any(run.value(f"evaluation.{name}.{k}") is not None for run in runs)]
        attacks = {f"adversarial.{a}.{eps}" for run in runs for a, by_eps in ((run.value(f"evaluation.{name}.adversarial") or {}).items())
                   if isinstance(by_eps, dict) for eps in by_eps}
        keys[2:2] = sorted(attacks)
        selected = labelled_cells(runs)
        width = 0.8 / max(1, len(selected))
        for index, (label, members) in enumerate(selected):
            values = [[v for v in (m.value(f"evaluation.{name}.{k}") for m in members) if v is not None] for k in keys]
            means = [100 * statistics.fmean(v) if v else float("nan") for v in values]
            spreads = [100 * statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            ax.bar([i + (index - (len(selected) - 1) / 2) * width for i in range(len(keys))], means, width, yerr=spreads,
                   color=f"C{index}", label=label, capsize=2)
        ax.set_xticks(range(len(keys)), [k.replace("adversarial.", "").replace("calibration.", "") for k in keys], rotation=20, fontsize=8)
        ax.set(ylabel="%", title=f"evaluation '{name}' (error bars: ± std over seeds)")
        ax.grid(alpha=0.3, axis="y")
    return _finish(fig, path)


def cost_tradeoff_points(records: Sequence[dict[str, Any]]) -> dict[str, list[tuple[str, float, float]]]:
    """Per backbone, each of bench.py's variants as (label, activation memory / bp's, step time /
    plain caps's), both against the bp and caps measured with the same speed options (amp, channels
    last...; the lean options aside) in the same side-by-side run."""
    points: dict[str, list[tuple[str, float, float]]] = {}
    for backbone in dict.fromkeys(r["backbone"] for r in records if "activation_vs_bp" in r):
        points[backbone] = []
        for r in (r for r in records if r["backbone"] == backbone and "activation_vs_bp" in r):
            caps = next((c for c in records if c["backbone"] == backbone and c["mode"] == "caps"
                         and same_speed_options(c["options"], r["options"])), None)
            if caps is None:
                raise ConfigError(f"{backbone}: no caps record with the options of '{r['label']}' to time it against: add caps to --modes")
            points[backbone].append((r["label"], r["activation_vs_bp"], r["step_ms"] / caps["step_ms"]))
    if not points:
        raise ConfigError("the records hold no memory figures against bp: bench.py needs the bp mode and no --no-memory")
    return points


def plot_cost_tradeoff(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """The memory/time trade-off of bench.py's records (:func:`cost_tradeoff_points`), one panel per
    backbone: a setting that buys memory with time sits up and to the left of plain caps (y = 1)."""
    points = cost_tradeoff_points(records)
    fig, axes = plt.subplots(1, len(points), figsize=(4.6 * len(points), 4.2), squeeze=False)
    for ax, (backbone, variants) in zip(axes[0], points.items()):
        for label, x, y in variants:
            ax.plot(x, y, "s" if label == "bp" else "o", color="C1" if label == "bp" else "C0")
            ax.annotate(label.replace("caps-lean", "lean").replace("lean_", ""), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(1, color="grey", linewidth=0.5)
        ax.set(xlabel="activation memory / bp's", ylabel="step time / plain caps's", title=backbone)
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _finish(fig, path)


FIGURES = {
    "errors.png": plot_errors,
    "orthogonality_sparsity.png": plot_orthogonality_sparsity,
    "gradient_cosine.png": plot_gradient_cosine,
    "m_norm.png": plot_scale,
    "block_accuracy.png": plot_block_accuracy,
}


def plot_all(runs: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    """Every figure that the runs have data for (epoch figures need per-epoch metrics; the
    class-incremental one, incremental runs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = dict(FIGURES) if any(run.metrics for run in runs) else {}
    if any(run.value("seen_accuracy") for run in runs):
        figures["incremental.png"] = plot_incremental
    if any(run.value("evaluation") for run in runs):
        figures["evaluation.png"] = plot_evaluations
    if any("test_error_by_modality" in record for run in runs for record in run.metrics):
        figures["modality_errors.png"] = plot_modality_errors
    return [plot(runs, out_dir / name) for name, plot in figures.items()]
