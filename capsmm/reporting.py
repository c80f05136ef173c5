"""Tables of run results (markdown): one row per cell (runs that differ only in their seed), labelled
by the config keys that vary among the runs shown, mean ± std over seeds; paired comparisons."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scipy import stats

from .config import shown, with_added_keys
from .errors import ConfigError, DataError
from .run_records import RunRecord, cell_label, cells, short_key, varying_keys


def record_of(results: dict[str, Any]) -> RunRecord:
    """A :class:`RunRecord` from a results dict (as ``train`` returns it; a finished run's may predate
    keys added since, which read as the value the run was made with)."""
    config = results.get("config", {})
    return RunRecord(Path(config.get("out") or "."), [], results, with_added_keys(config))


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``12.34 ± 0.56`` (scaled: errors as percent); the std is over runs (n - 1), none for one run."""
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _modalities(runs: Sequence[RunRecord]) -> list[str]:
    return list(dict.fromkeys(k for run in runs for k in (run.value("test_error_by_modality") or {})))


def _corruptions(runs: Sequence[RunRecord]) -> list[str]:
    return list(dict.fromkeys(k for run in runs for k in (run.value("corrupted_error") or {})))


def summary_table(runs: Sequence[RunRecord], pooled: Sequence[str] = (), columns: Sequence[str] | None = None) -> str:
    """One row per cell: the varying keys' values, n, test error (and per modality subset, and with a
    modality corrupted), train error, epochs and wall time; errors in percent as mean ± std over the
    cell's runs (its seeds, and the values of the ``pooled`` keys). ``columns``: other figures of
    results.json to show instead of the errors (dotted keys; errors, in percent)."""
    keys = varying_keys(runs, pooled)
    subsets, corruptions = _modalities(runs), _corruptions(runs)
    figures = list(columns) if columns else ["test_error", *[f"test_error_by_modality.{s}" for s in subsets],
                                             *[f"corrupted_error.{c}" for c in corruptions], "train_error"]
    head = [short_key(k, keys) for k in keys] or ["run"]
    head += ["n", *[f"{_figure_label(f)} (%)" for f in figures], "epochs", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for members in cells(runs, keys).values():
        members = list(by_replicate(members, pooled).values())
        first = members[0]
        ids = [shown(first.config.get(k)) for k in keys] or [cell_label(first, keys)]
        errors = lambda key: [v for v in (m.value(key) for m in members) if v is not None]  # noqa: E731
        row = [*ids, str(len(members)), *[mean_std(errors(f)) for f in figures],
               _epochs(members), mean_std(errors("wall_seconds"), scale=1, digits=0)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def by_replicate(members: Sequence[RunRecord], pooled: Sequence[str] = ()) -> dict[str, RunRecord]:
    """A cell's runs by replicate (seed and ``pooled`` values), in order. Two runs of one cell and
    replicate (a copied folder, a run given twice) are a :class:`DataError` naming both: averaged, the
    seed would count twice; paired, one run would silently replace the other."""
    found: dict[str, RunRecord] = {}
    for run in members:
        twin = found.setdefault(run.replicate(pooled), run)
        if twin is not run:
            replicate = ", ".join([f"seed {run.seed}", *(f"{k}={shown(run.config.get(k))}" for k in pooled)])
            raise DataError(f"runs {twin.path} and {run.path} are the same cell and replicate ({replicate}): a table counts "
                            f"each replicate once; leave one of them out of the folders given")
    return found


def _figure_label(key: str) -> str:
    """``test_error`` -> ``test error``; ``test_error_by_modality.audio`` -> ``audio``;
    ``corrupted_error.audio=noise`` -> ``joint, audio=noise``; ``ungated_error.clean`` -> ``ungated clean``."""
    family, _, item = key.partition(".")
    if not item:
        return key.replace("_", " ")
    return {"test_error_by_modality": item, "corrupted_error": f"joint, {item}"}.get(family, f"{family.removesuffix('_error')} {item}")


def _epochs(members: Sequence[RunRecord]) -> str:
    epochs = sorted({m.value("epochs") for m in members if m.value("epochs") is not None})
    return "/".join(map(str, epochs)) or "-"


def companions(runs: Sequence[RunRecord], key: str, pooled: Sequence[str] = ()) -> list[str]:
    """The varying keys whose value follows from ``key``'s in every run: set together with it (a
    zipped sweep axis, such as a method's own activation), they are part of what is compared."""
    values: dict[str, dict[str, set[str]]] = {}
    varying = varying_keys(runs, pooled)
    for run in runs:
        for other in varying:
            values.setdefault(other, {}).setdefault(json.dumps(run.config.get(key)), set()).add(json.dumps(run.config.get(other)))
    return [other for other, by_value in values.items() if other != key and all(len(v) == 1 for v in by_value.values())]


def _cell_keys(runs: Sequence[RunRecord], key: str, travelling: Sequence[str], pooled: Sequence[str]) -> list[str]:
    """The keys a paired comparison of ``key`` holds fixed: every varying key but it and its companions (``travelling``)."""
    return [k for k in varying_keys(runs, pooled) if k != key and k not in travelling]


def paired_differences(runs: Sequence[RunRecord], key: str, first: Any, second: Any, metric: str = "test_error",
                       pooled: Sequence[str] = ()) -> list[dict[str, Any]]:
    """For every cell of ``key = first``, its twin with ``key = second`` (same values of every other
    varying key but ``key``'s :func:`companions`): ``metric(first) - metric(second)`` per replicate
    both have (seed, and the values of the ``pooled`` keys), with mean, std, n and the 95% confidence
    interval of the mean (Student's t)."""
    return _paired(runs, key, first, second, metric, pooled, _cell_keys(runs, key, companions(runs, key, pooled), pooled))


def _paired(runs: Sequence[RunRecord], key: str, first: Any, second: Any, metric: str, pooled: Sequence[str],
            keys: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`paired_differences` within the cells that ``keys`` make."""
    by_value: dict[str, dict[tuple[Any, ...], list[RunRecord]]] = {}
    for run in runs:
        if run.value(metric) is not None:
            cell = tuple(json.dumps(run.config.get(k)) for k in keys)
            by_value.setdefault(json.dumps(run.config.get(key)), {}).setdefault(cell, []).append(run)
    a, b = ({cell: {r: run.value(metric) for r, run in by_replicate(members, pooled).items()}
             for cell, members in by_value.get(json.dumps(value), {}).items()} for value in (first, second))
    comparisons = []
    for cell in a:
        replicates = sorted(set(a[cell]) & set(b.get(cell, {})))
        if not replicates:
            continue
        diffs = [a[cell][r] - b[cell][r] for r in replicates]
        mean = statistics.fmean(diffs)
        half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
        comparisons.append({"cell": dict(zip(keys, (json.loads(c) for c in cell))), "replicates": [json.loads(r) for r in replicates],
                            "differences": diffs,
                            "mean": mean, "std": statistics.stdev(diffs) if len(diffs) > 1 else math.nan,
                            "ci95": (mean - half, mean + half)})
    return comparisons


def paired_table(runs: Sequence[RunRecord], key: str, first: Any, second: Any, metric: str = "test_error",
                 pooled: Sequence[str] = ()) -> str:
    """:func:`paired_differences` as markdown, in percentage points."""
    travelling = companions(runs, key, pooled)
    keys = _cell_keys(runs, key, travelling, pooled)
    comparisons = _paired(runs, key, first, second, metric, pooled, keys)
    name = short_key(key, [key, *keys])
    head = [short_key(k, keys) for k in keys] + [f"{metric}: {name}={shown(first)} − {name}={shown(second)} (pp)", "n (pairs)",
                                                 "95% CI (pp)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comparisons:
        ci = "-" if math.isnan(c["ci95"][0]) else f"[{100 * c['ci95'][0]:+.2f}, {100 * c['ci95'][1]:+.2f}]"
        spread = "" if math.isnan(c["std"]) else f" ± {100 * c['std']:.2f}"
        row = [shown(c["cell"][k]) for k in keys] + [f"{100 * c['mean']:+.2f}{spread}", str(len(c["replicates"])), ci]
        lines.append("| " + " | ".join(row) + " |")
    if not comparisons:
        lines.append("| " + " | ".join(["(no runs of both on the same replicates)"] + [""] * (len(head) - 1)) + " |")
    follows = {k: [next(r.config.get(k) for r in runs if r.config.get(key) == v) for v in (first, second)]
               for k in travelling}
    differing = [f"{k} {shown(a)} vs {shown(b)}" for k, (a, b) in follows.items() if a != b]
    if differing:
        lines.append(f"\nThe pairs also differ in what is set together with {key}: {'; '.join(differing)}.")
    return "\n".join(lines)


def parse_comparison(text: str, runs: Sequence[RunRecord]) -> list[tuple[str, Any, Any]]:
    """``train.mode=caps,bp`` -> [(key, caps, bp)]; ``train.mode=caps`` -> caps against every other value."""
    key, sep, values = text.partition("=")
    wanted = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not 1 <= len(wanted) <= 2:
        raise ConfigError(f"--compare expects KEY=A,B (A - B) or KEY=A (A against every other value), got '{text}'")
    present = {shown(run.config.get(key)): run.config.get(key) for run in runs if key in run.config}
    if not present:
        raise ConfigError(f"--compare: no run has config key '{key}' (keys vary here: {', '.join(varying_keys(runs)) or 'none'})")
    missing = [v for v in wanted if v not in present]
    if missing:
        raise ConfigError(f"--compare: no run has {key}={missing[0]}; values here: {', '.join(present)}")
    others = wanted[1:] or [v for v in present if v != wanted[0]]
    return [(key, present[wanted[0]], present[other]) for other in others]


def comparison_report(runs: Sequence[RunRecord], comparisons: Sequence[str] = (), pooled: Sequence[str] = (),
                      metric: str = "test_error", columns: Sequence[str] | None = None) -> str:
    """The summary table, then the paired comparisons asked for; with none asked and several
    replicates per cell, every value of each varying key against its first value (a key that only
    follows another, one of its :func:`companions`, is compared with it, not alone)."""
    parts = [summary_table(runs, pooled, columns)]
    pairs = [pair for text in comparisons for pair in parse_comparison(text, runs)]
    if not pairs and any(len(members) > 1 for members in cells(runs, varying_keys(runs, pooled)).values()):
        varying = varying_keys(runs, pooled)
        follows = {key: set(companions(runs, key, pooled)) for key in varying}
        # a key is compared alone unless it follows another (of two that follow each other, the first leads)
        leading = [k for i, k in enumerate(varying) if not any(k in follows[o] and (o not in follows[k] or j < i)
                                                               for j, o in enumerate(varying) if o != k)]
        for key in leading:
            values = list(dict.fromkeys(json.dumps(run.config.get(key)) for run in runs))
            pairs += [(key, json.loads(v), json.loads(values[0])) for v in values[1:]]
    for key, first, second in pairs:
        parts.append(paired_table(runs, key, first, second, metric, pooled))
    return "\n\n".join(parts)


def paper_table(runs: Sequence[RunRecord]) -> str:
    """Results in the shape of the paper's Tables 1-4: one row per cell of every varying key but the
    data set, one error column per data set (mean ± std over seeds), then params, memory and
    per-batch forward/backward time of the row's first run."""
    keys = [k for k in varying_keys(runs) if k != "data.name"]
    datasets = list(dict.fromkeys(run.config.get("data.name") for run in runs))
    rows: dict[tuple[Any, ...], dict[str, list[RunRecord]]] = {}
    for cell, members in cells(runs, keys).items():
        for run in members:
            rows.setdefault(cell, {}).setdefault(run.config.get("data.name"), []).append(run)
    head = [short_key(k, keys) for k in keys] or ["run"]
    head += [f"{d} error (%)" for d in datasets] + ["params (M)", "memory (MiB)", "forward (ms)", "backward (ms)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for by_dataset in rows.values():
        first = next(iter(by_dataset.values()))[0]
        cells_ = [shown(first.config.get(k)) for k in keys] or [cell_label(first, keys)]
        cells_ += [mean_std([r.value("test_error") for r in by_replicate(by_dataset[d]).values()]) if d in by_dataset else "-"
                   for d in datasets]
        cells_ += [_number(first.value("params"), 1e-6, 2), _number(first.value("peak_memory_mib"), 1, 0),
                   _number(first.value("forward_ms"), 1, 2), _number(first.value("backward_ms"), 1, 2)]
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def _number(value: Any, scale: float, digits: int) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"
