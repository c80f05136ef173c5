"""One training run from a :class:`~capsmm.config.RunConfig`: data, model, seed, device, strategy, trainer."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import RunConfig, TrainConfig
from .data import BatchLoader, image_split, load_image_dataset
from .crash import crash_log
from .distributed import DistContext, PeerFailure, init_distributed, is_peer_failure, peer_failure, shutdown
from .errors import CapsmmError, ConfigError
from .evaluation import error_counts, predictions
from .ff import PREDICTORS
from .pipeline import describe_inputs, save_input_pipeline
from .profiling import count_parameters
from .model import CAPModel, build_model
from .modes import ModeSchedule
from .strategies import build_strategy
from .streams import Purpose, stream, stream_seed
from .trainer import Trainer


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable device is a :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{name}' but CUDA is not available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device is '{name}' but MPS is not available here; use --device cpu or auto")
    return device


def model_from_config(config: RunConfig, num_classes: int, in_shape: tuple[int, ...]) -> CAPModel:
    m = config.model
    return build_model(m.backbone, num_classes=num_classes, in_shape=in_shape, mode=ModeSchedule.parse(config.train.mode).first,
                       **m.head_options(), **m.encoder_options())


def ff_predictor_errors(test_loader: BatchLoader, device: torch.device) -> Callable[[CAPModel], dict[str, float]]:
    """An evaluator of a Forward-Forward model: the test error of each of its predictors
    (``test_error_linear``, ``test_error_goodness``), whichever it predicts with."""
    def errors(model: CAPModel) -> dict[str, float]:
        figures = {}
        for predictor in PREDICTORS:
            wrong, seen = error_counts(predictions(functools.partial(model.ff_scores, predictor=predictor), model, test_loader), device).tolist()
            figures[f"test_error_{predictor}"] = wrong / seen
        return figures
    return errors


def describe_parameters(model: CAPModel) -> str:
    counts = count_parameters(model)
    parts = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "total")
    return f"params {counts['total']:,} ({parts})"


@contextmanager
def launched(train: TrainConfig, out_dir: Path) -> Iterator[tuple[DistContext, torch.device]]:
    """This process' place in a torchrun launch (if any) and its device; the process group is left
    on the way out. A peer that dies or hangs becomes one-line :class:`~capsmm.distributed.PeerFailure`;
    that and any unexpected error leave their full traceback in a crash log in the run folder
    ``out_dir`` (:func:`~capsmm.crash.crash_log`), which the one line names. Anything else, a bug
    whose message mentions a timeout included, surfaces as itself."""
    device = resolve_device(train.device)
    context, device = init_distributed(device, train.dist_timeout)
    try:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield context, device
    except Exception as error:
        if context.enabled and is_peer_failure(error):  # a collective inside autograd (SyncBatchNorm) fails outside communicate
            error = peer_failure(error, "training")
        if isinstance(error, PeerFailure):
            raise PeerFailure(f"{error}; the traceback is in {crash_log(error, out_dir)}") from error
        if not isinstance(error, CapsmmError):
            crash_log(error, out_dir)
        raise
    finally:
        shutdown()


def seeded_model(build: Callable[[], nn.Module], seed: int, context: DistContext) -> nn.Module:
    """``build()`` under ``seed`` (the same initial model on every rank); afterwards the global RNG
    is seeded per rank, so that ranks draw different dropout masks (:mod:`capsmm.streams`)."""
    torch.manual_seed(stream_seed(seed, Purpose.INIT))
    model = build()
    torch.manual_seed(stream_seed(seed, Purpose.DROPOUT, context.rank))
    return model


def train(config: RunConfig, *, resume: bool = False, force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Validate ``config``, build everything and train; returns the results dict (also in results.json).

    A run its folder already holds finished is not trained again (its results are returned);
    ``resume`` continues an unfinished one, ``force`` starts over.

    Seeded: the same config gives the same run, bit for bit on CPU. On CUDA cuDNN autotuning is on,
    which trades bitwise reproducibility for speed.
    """
    config.validate()
    out_dir = config.out_dir()
    with launched(config.train, out_dir) as (context, device):
        data = load_image_dataset(config.data, config.train.seed)
        model = seeded_model(lambda: model_from_config(config, data.num_classes, data.in_shape), config.train.seed, context)
        strategy = build_strategy(model, config.train, device, context)
        if context.is_main:
            log(
                f"{config.data.name} ({len(data.train):,} train / {len(data.test):,} test, {data.in_shape}) | "
                f"{config.model.backbone} x{config.model.width_mult:g} | mode {config.train.mode} | "
                f"{describe_parameters(model)} | {strategy.describe()} | -> {out_dir}"
            )
        mean, std = data.channel_stats()
        train = config.train
        shard = strategy.batch_shard
        train_split, test_split = data.modal_splits(config.data)
        train_loader = BatchLoader(train_split, train.batch_size, device=device, shuffle=True, seed=train.seed, shard=shard)
        test_loader = BatchLoader(test_split, train.eval_batch_size, device=device, shard=shard)
        diagnostics = BatchLoader(image_split(data.test.sample(train.diagnostics_samples, stream(train.seed, Purpose.DIAGNOSTICS)), mean, std),
                                  train.diagnostics_samples, device=device)
        trainer = Trainer(
            strategy, train_loader, test_loader, out_dir,
            run_config=config.to_dict(), summary={"dataset": config.data.name, "backbone": config.model.backbone},
            diagnostics_batch=next(iter(diagnostics)), log=log,
            evaluators=[ff_predictor_errors(test_loader, device)] if model.ff is not None else [],
        )
        results = trainer.fit(resume=resume, force=force)
        if context.is_main:  # what load_run needs to apply the finished model to new inputs
            save_input_pipeline(out_dir, {"image": describe_inputs(train_split, data.in_shape, data.classes, config.data)})
        return results
