"""Shared pieces of the command-line entry points: one-line errors, config flags, running sweeps.

Every user error ends the process with exit status 2 and one line on stderr that says what is
wrong and the valid choices; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn


from .config import build_runs, describe_keys, parse_assignment
from .crash import crash_log
from .errors import CapsmmError, TrainingError


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2) instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see --help\n")


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


#: flag -> (config keys it sets, type, help); the vision script's flags
VISION_FLAGS: dict[str, tuple[tuple[str, ...], Any, str]] = {
    "--dataset": (("data.name",), str, "data set (data.name)"),
    "--backbone": (("model.backbone",), str, "backbone (model.backbone)"),
    "--mode": (("train.mode",), str, "bp | caps | caps-full | local, or a schedule like caps:0.9,caps-full (train.mode)"),
    "--epochs": (("train.epochs",), int, "epochs (train.epochs)"),
    "--batch-size": (("train.batch_size",), int, "batch size (train.batch_size)"),
    "--lr": (("train.lr",), float, "Adam learning rate (train.lr)"),
    "--data-root": (("data.root",), str, "data root; default $CAPSMM_DATA, else ./data (data.root)"),
    "--out": (("out",), str, "output folder (out)"),
    "--seed": (("train.seed",), int, "random seed (train.seed)"),
    "--device": (("train.device",), str, "auto | cpu | cuda | cuda:N (train.device)"),
    "--train-subset": (("data.train_subset",), int, "train on N samples, stratified by class (data.train_subset)"),
    "--test-subset": (("data.test_subset",), int, "test on N samples, stratified by class (data.test_subset)"),
}

#: the multimodal script's flags
MULTIMODAL_FLAGS: dict[str, tuple[tuple[str, ...], Any, str]] = {
    "--image-dataset": (("image.name",), str, "image data set (image.name)"),
    "--image-root": (("image.root",), str, "image data root; default $CAPSMM_DATA, else ./data (image.root)"),
    "--audio-dataset": (("audio.name",), str, "audio data set: fsdd | audiofolder (audio.name)"),
    "--audio-root": (("audio.root",), str, "audio data root; default $CAPSMM_DATA, else ./data (audio.root)"),
    "--test-speakers": (("audio.test_speakers",), comma_list, "fsdd speakers held out for testing, e.g. lucas or a,b (audio.test_speakers)"),
    "--mode": VISION_FLAGS["--mode"],
    "--fusion": (("multimodal.fusion",), str, "joint | late | concat-bp (multimodal.fusion)"),
    "--epochs": VISION_FLAGS["--epochs"],
    "--batch-size": VISION_FLAGS["--batch-size"],
    "--lr": VISION_FLAGS["--lr"],
    "--train-subset": (("image.train_subset", "audio.train_subset"), int, "N training samples of each modality, stratified by class"),
    "--test-subset": (("image.test_subset", "audio.test_subset"), int, "N test samples of each modality, stratified by class"),
    "--seed": VISION_FLAGS["--seed"],
    "--device": VISION_FLAGS["--device"],
    "--out": VISION_FLAGS["--out"],
}


def config_parser(prog: str, description: str | None, schema: type, flags: dict[str, tuple[tuple[str, ...], Any, str]]) -> argparse.ArgumentParser:
    """The parser of a training script: its flags, ``--config``/``--set``/``--seeds``/..., and every config key in ``--help``."""
    parser = OneLineArgumentParser(prog=prog, description=description, epilog=config_epilog(schema),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, flags)
    return parser


def with_default_config(argv: Sequence[str], config: str | Path) -> list[str]:
    """``argv``, or ``--config config`` plus ``argv`` when it chooses no run (control flags at most)."""
    return list(argv) if not all(arg in CONTROL_FLAGS for arg in argv) else ["--config", str(config), *argv]


def add_config_arguments(parser: argparse.ArgumentParser, flags: dict[str, tuple[tuple[str, ...], Any, str]]) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML run config (may define a sweep of runs)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override any config key, e.g. --set train.lr=1e-3 (repeatable)")
    for flag, (_, kind, text) in flags.items():
        metavar = "A,B" if kind is comma_list else getattr(kind, "__name__", "VALUE").upper()
        parser.add_argument(flag, type=kind, dest=flag.lstrip("-").replace("-", "_"), default=None, metavar=metavar, help=text)
    parser.add_argument("--seeds", type=int_list, metavar="0,1,2", help="run every cell under each of these seeds (train.seed as a sweep axis)")
    parser.add_argument("--resume", action="store_true", help="continue unfinished runs from their last checkpoint")
    parser.add_argument("--force", action="store_true", help="train runs again that their folders hold finished")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (train.progress=false)")


#: flags that steer how runs are carried out without choosing which runs (alone, they keep the default config)
CONTROL_FLAGS = ("--resume", "--force", "--no-progress")


def positive(text: str) -> int:
    """An argparse type: an integer >= 1 (a count of things), else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def non_negative(text: str) -> int:
    """An argparse type: an integer >= 0 (a count that may be none), else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got '{text}'")
    return value


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got '{text}'") from None
    if not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct integers separated by commas, got '{text}'")
    return values


def overrides_from(args: argparse.Namespace, flags: dict[str, tuple[tuple[str, ...], Any, str]]) -> list[tuple[str, Any]]:
    """Config overrides in precedence order: flags, then ``--set`` (the last one wins)."""
    overrides = []
    for flag, (keys, _, _) in flags.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            overrides += [(key, value) for key in keys]
    if args.no_progress:
        overrides.append(("train.progress", False))
    overrides += [parse_assignment(text) for text in args.set]
    return overrides


def config_epilog(schema: type) -> str:
    return "config keys (YAML sections, or --set key=value):\n" + describe_keys(schema)


def runs_from_args(args: argparse.Namespace, flags: dict[str, tuple[tuple[str, ...], Any, str]], schema: type) -> list[Any]:
    runs = build_runs(args.config, overrides_from(args, flags), schema, seeds=args.seeds)
    for run in runs:
        run.validate()
    return runs


def guarded(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a ``main(argv)``: every failure ends in one line on stderr and an exit status.

    A :class:`CapsmmError` (something the user can fix) exits 2, or 1 for a training failure; any
    other exception is a fault of capsmm or of the machine (out of memory, a full disk...): one
    line naming it and a log file holding its traceback, exit status 1.
    """

    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except TrainingError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except CapsmmError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; the last finished epoch is checkpointed: rerun with --resume to continue", file=sys.stderr)
            return 130
        except Exception as error:  # noqa: BLE001 - the one place that turns any failure into one line
            first = (str(error).splitlines() or [""])[0][:300]
            log = crash_log(error)
            print(f"error: unexpected {type(error).__name__}: {first} (the traceback is in {log}; "
                  "please report it with that file)", file=sys.stderr)
            return 1

    wrapper.__doc__ = main.__doc__
    return wrapper
