#!/usr/bin/env python
"""Evaluate a trained run under shift: its test set or another set of the same classes (matched by
name), calibration (ECE over 15 bins, NLL, Brier, a reliability diagram), common corruptions at 5
severities (mean corruption error; against a --baseline run's evaluation, the normalised and
relative mCE), white-box FGSM / PGD (L-inf, eps in [0, 1] pixel units; through every block, never
the training graph's cut), and out-of-distribution detection (AUROC and FPR at 95% TPR of the max
softmax probability, the CAP similarity, the energy, and each modality's typicality).

Writes RUN_DIR/evaluation/<name>.json (report.py and plot_runs.py read it: --columns
evaluation.<name>.mce) and RUN_DIR/evaluation/<name>-reliability.png, and prints a table.

Examples:
  python scripts/evaluate.py runs/quickstart/caps/seed-0 --corruptions all --attack pgd --eps 0.05,0.1
  python scripts/evaluate.py RUN --dataset mnist --data-root ../shared/data --ood-dataset digits
  python scripts/evaluate.py MULTIMODAL_RUN --dataset image=fashion-mnist --corruptions noise,gaussian_noise
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from capsmm.checkpoint import atomic_write_json
from capsmm.cli import OneLineArgumentParser, comma_list, guarded, positive
from capsmm.errors import ConfigError, DataError
from capsmm.evaluation.attacks import ATTACKS, PGD_STEPS
from capsmm.evaluation.corruptions import corruption_names, corruption_registry
from capsmm.evaluation.robustness import EvalSet, evaluate, load_eval_set
from capsmm.inference import INPUT_KINDS, TrainedModel, load_run
from capsmm.metrics import tidy
from capsmm.plotting import plot_reliability

FOLDER = "evaluation"


def eps_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got '{text}'") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"eps must be non-negative numbers (in [0, 1] pixel units), got '{text}'")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the folder of a finished run")
    parser.add_argument("--dataset", action="append", default=[], metavar="D",
                        help="test on this set's test split (any set the training scripts accept); a multimodal run: MODALITY=D")
    parser.add_argument("--data-root", action="append", default=[], metavar="R", help="its data root (a multimodal run: MODALITY=R)")
    parser.add_argument("--test-subset", type=positive, help="N test samples, stratified by class")
    parser.add_argument("--corruptions", metavar="all|NAME,...", help="common corruptions at severities 1-5 (a multimodal run: of every modality)")
    parser.add_argument("--baseline", type=Path, metavar="RUN_DIR", help="a run evaluated before under the same --name: mCE relative to it")
    parser.add_argument("--attack", choices=ATTACKS, help="white-box L-inf attack on the image (else the only) modality")
    parser.add_argument("--eps", type=eps_list, metavar="E,...", help="attack radii in [0, 1] pixel units (audio: amplitude), e.g. 0.05,0.1")
    parser.add_argument("--steps", type=positive, default=PGD_STEPS, help=f"PGD steps (default {PGD_STEPS}; step 2.5 eps / steps, random start)")
    parser.add_argument("--ood-dataset", action="append", default=[], metavar="D", help="an out-of-distribution set, named like --dataset")
    parser.add_argument("--ood-root", action="append", default=[], metavar="R", help="its data root (a multimodal run: MODALITY=R)")
    parser.add_argument("--name", help="the evaluation's name (default: the test set's): RUN_DIR/evaluation/<name>.json")
    parser.add_argument("--batch-size", type=positive, default=256)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    return parser


def per_modality(values: list[str], trained: TrainedModel, flag: str) -> dict[str, str]:
    """``D`` (a one-modality run) or ``MODALITY=D`` values of a flag, by modality."""
    chosen = {}
    for value in values:
        modality, sep, rest = value.partition("=")
        if sep and modality in INPUT_KINDS.names():
            if modality not in trained.modalities:
                raise ConfigError(f"{flag} {value}: this run reads {', '.join(trained.modalities)}, not {modality}")
            chosen[modality] = rest
        elif len(trained.modalities) == 1:
            chosen[trained.modalities[0]] = value
        else:
            raise ConfigError(f"{flag} {value}: this run reads {', '.join(trained.modalities)}; give {flag} MODALITY=VALUE")
    return chosen


def corruptions_of(text: str | None, trained: TrainedModel) -> dict[str, list[str]] | None:
    """``all`` or names -> modality -> its corruptions among them; a name no modality has is a one-line error."""
    if not text:
        return None
    if text.strip() == "all":
        return {m: corruption_names(m, "all") for m in trained.modalities}
    names = comma_list(text)
    for name in names:
        if not any(name in corruption_registry(m) for m in trained.modalities):
            corruption_names(trained.modalities[0], name)  # raises the one-line error naming the valid ones
    chosen = {m: [n for n in names if n in corruption_registry(m)] for m in trained.modalities}
    return {m: found for m, found in chosen.items() if found}


def check(args: argparse.Namespace) -> None:
    if (args.attack is None) != (args.eps is None):
        raise ConfigError("--attack and --eps go together: e.g. --attack pgd --eps 0.05,0.1")
    if args.ood_root and not args.ood_dataset:
        raise ConfigError("--ood-root needs --ood-dataset")


def baseline_of(path: Path | None, name: str) -> dict[str, Any] | None:
    if path is None:
        return None
    file = path / FOLDER / f"{name}.json"
    try:
        baseline = json.loads(file.read_text())
    except (OSError, ValueError):
        raise DataError(f"the baseline has no readable evaluation {file}; run evaluate.py on {path} with --name {name} and the same "
                        "--corruptions first") from None
    if "corruptions" not in baseline:
        raise DataError(f"the baseline evaluation {file} has no corruptions; evaluate it with --corruptions first")
    return baseline


def table(result: dict[str, Any]) -> str:
    """The figures as a markdown table (errors and rates in percent)."""
    rows = [("test set", f"{result['test_set']} ({result['samples']:,} samples)"), ("clean error", f"{100 * result['clean_error']:.2f}")]
    cal = result["calibration"]
    rows += [("ECE (15 bins)", f"{100 * cal['ece']:.2f}"), ("NLL", f"{cal['nll']:.4f}"), ("Brier", f"{cal['brier']:.4f}")]
    for name, errors in result.get("corruptions", {}).items():
        rows.append((f"{name} (severity 1-5)", " / ".join(f"{100 * e:.1f}" for e in errors)))
    for key in ("mce", "mce_vs_baseline", "relative_mce_vs_baseline"):
        if result.get(key) is not None:
            rows.append((key.replace("_", " "), f"{100 * result[key]:.2f}"))
    for attack, errors in result.get("adversarial", {}).items():
        if isinstance(errors, dict):
            rows += [(f"{attack} error, eps {eps}", f"{100 * error:.2f}") for eps, error in errors.items()]
    if "ood" in result:
        ood = result["ood"]
        rows += [(f"OOD ({ood['ood_set']}) {score}", f"AUROC {100 * ood['auroc'][score]:.2f}, FPR@95TPR {100 * ood['fpr95'][score]:.2f}")
                 for score in ood["auroc"]]
    return "\n".join(["| figure | value (%) |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    check(args)
    plain_roots = [root for root in args.data_root if "=" not in root]
    trained = load_run(args.run, args.device, data_root=plain_roots[0] if plain_roots else None)  # an older run's pipeline is read there
    corruptions = corruptions_of(args.corruptions, trained)
    data = load_eval_set(trained, per_modality(args.dataset, trained, "--dataset"), per_modality(args.data_root, trained, "--data-root"),
                         args.test_subset)
    ood: EvalSet | None = None
    if args.ood_dataset:
        ood = load_eval_set(trained, per_modality(args.ood_dataset, trained, "--ood-dataset"), per_modality(args.ood_root, trained, "--ood-root"),
                            args.test_subset, ood=True)
    name = args.name or data.name
    result = evaluate(trained, data, corruptions=corruptions, attack_name=args.attack, eps=args.eps or (), steps=args.steps, ood=ood,
                      baseline=baseline_of(args.baseline, name), batch=args.batch_size)
    result = tidy(result) | {"name": name, "run": str(args.run), "baseline": str(args.baseline) if args.baseline else None}
    folder = args.run / FOLDER
    atomic_write_json(folder / f"{name}.json", result)
    plot_reliability(result["calibration"], folder / f"{name}-reliability.png", f"{args.run.parent.name}/{args.run.name}: {data.name}")
    print(table(result))
    print(f"written: {folder / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
