"""One training run from a :class:`~capsmm.config.RunConfig`: data, model, seed, device, trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .config import RunConfig
from .data import BatchLoader, image_split, load_image_dataset
from .distributed import check_global_batch, init_distributed, is_peer_failure, peer_failure, shutdown
from .errors import ConfigError
from .metrics import count_parameters
from .model import CAPModel, build_model
from .modes import ModeSchedule
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


def describe_parameters(model: CAPModel) -> str:
    counts = count_parameters(model)
    parts = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "total")
    return f"params {counts['total']:,} ({parts})"


def train(config: RunConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Validate ``config``, build everything and train; returns the results dict (also in results.json).

    Seeded: the same config gives the same run, bit for bit on CPU. On CUDA cuDNN autotuning is on,
    which trades bitwise reproducibility for speed.
    """
    config.validate()
    device = resolve_device(config.train.device)
    context, device = init_distributed(device, config.train.dist_timeout)
    try:
        blocks = config.train.parallel == "blocks"
        if not blocks:
            check_global_batch(config.train.batch_size, context)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        data = load_image_dataset(config.data)
        torch.manual_seed(config.train.seed)
        model = model_from_config(config, data.num_classes, data.in_shape)
        torch.manual_seed(config.train.seed + 1_000 * context.rank)  # ranks draw different dropout masks
        out_dir = config.out_dir()
        ranks = ""
        if context.enabled:
            ranks = f" x {context.world} ranks, " + (f"block-parallel, {config.train.micro_batches} micro-batches" if blocks
                                                     else f"data-parallel, global batch {config.train.batch_size}")
        if context.is_main:
            log(
                f"{config.data.name} ({len(data.train):,} train / {len(data.test):,} test, {data.in_shape}) | "
                f"{config.model.backbone} x{config.model.width_mult:g} | mode {config.train.mode} | "
                f"{describe_parameters(model)} | {device}{ranks} | -> {out_dir}"
            )
        mean, std = data.channel_stats()
        train = config.train
        shard = (0, 1) if blocks else (context.rank, context.world)  # block-parallel: every rank sees the whole batch
        train_loader = BatchLoader(image_split(data.train, mean, std, config.data.augment), train.batch_size,
                                   device=device, shuffle=True, seed=train.seed, shard=shard)
        test_loader = BatchLoader(image_split(data.test, mean, std), train.eval_batch_size, device=device, shard=shard)
        diagnostics = BatchLoader(image_split(data.test.head(train.diagnostics_samples), mean, std), train.diagnostics_samples, device=device)
        trainer = Trainer(
            model, train_loader, test_loader, train, device, out_dir,
            run_config=config.to_dict(), summary={"dataset": config.data.name, "backbone": config.model.backbone},
            diagnostics_batch=next(iter(diagnostics)), log=log, dist=context,
        )
        return trainer.fit(resume=resume)
    except RuntimeError as error:  # DDP's own all-reduce fails inside backward with a plain RuntimeError
        if context.enabled and is_peer_failure(error):
            raise peer_failure(error, "training") from None
        raise
    finally:
        shutdown()
