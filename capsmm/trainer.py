"""The training loop: the only place that calls ``backward`` and steps the optimiser.

Owns the mode schedule, the optimiser and LR schedule, per-epoch metrics (``metrics.jsonl``),
the final ``results.json``, atomic per-epoch checkpoints and resuming from them.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import atomic_write_json, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .data import BatchLoader
from .block_parallel import BlockParallelCAPs
from .diagnostics import model_diagnostics
from .distributed import DistContext, all_reduce_sum, average_gradients, barrier, gather_objects
from .errors import CheckpointError, ConfigError, TrainingError
from .metrics import PhaseTimer, count_parameters, peak_memory_mib
from .model import CAPModel
from .modes import ModeSchedule
from .step import autocast_context, make_adam, prepare_inputs, train_step

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
RESULTS = "results.json"



def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


Batch = tuple[Any, torch.Tensor]
Evaluator = Callable[[CAPModel], dict[str, Any]]
"""A function of the model giving extra per-epoch figures, merged into the epoch's metrics."""

#: config keys (dotted, any section) that may differ between a run and its resumption
RESUMABLE_SUFFIXES = (".epochs", ".device", ".progress", ".eval_batch_size", ".root")
#: config keys added after checkpoints were first written, with the value that reproduces a run
#: whose checkpoint predates them, so that such runs still resume
ADDED_KEYS = {"train.lean_keep": 0}


class Trainer:
    """Trains ``model`` as ``train`` says on the batches of ``train_loader``, writing into ``out_dir``.

    Args:
        model: the model; only parameters with ``requires_grad`` are optimised.
        train_loader, test_loader: :class:`~capsmm.data.BatchLoader` s (tensor or dict batches).
        train: the ``train`` section of the run config.
        device, out_dir, log: where to run, to write, and print.
        run_config: the whole resolved config (saved in checkpoints and results; a resumed run must match it).
        summary: fields that head ``results.json`` (dataset, backbone, mode...).
        evaluators: functions of the model giving extra per-epoch figures (e.g. per-modality error), as dicts.
        diagnostics_batch: the fixed batch that ``train.diagnostics_every`` reads.
    """

    def __init__(
        self,
        model: CAPModel,
        train_loader: BatchLoader,
        test_loader: BatchLoader,
        train: TrainConfig,
        device: torch.device,
        out_dir: Path,
        *,
        run_config: dict[str, Any],
        summary: dict[str, Any],
        evaluators: Sequence[Evaluator] = (),
        diagnostics_batch: Batch | None = None,
        log: Callable[[str], None] = print,
        dist: DistContext = DistContext(),
    ) -> None:
        self.dist = dist
        if train.sync_batchnorm:
            if device.type != "cuda" or not dist.enabled:
                raise ConfigError("train.sync_batchnorm needs CUDA and a torchrun launch (PyTorch's SyncBatchNorm has no CPU kernel)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device)
        self.train_config = train
        self.run_config = run_config
        self.summary = summary
        self.evaluators = list(evaluators)
        self.evaluated_keys: set[str] = set()
        self.device = device
        self.out_dir = Path(out_dir)
        self.log = log if dist.is_main else (lambda line: None)
        self.schedule = ModeSchedule.parse(train.mode)
        if train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.lean = train.memory == "lean"
        # block-parallel: this rank trains its own blocks (capsmm.block_parallel)
        self.stage = None
        if dist.enabled and train.parallel == "blocks":
            self.stage = BlockParallelCAPs(self.model, dist, next(iter(self.model.in_shapes.values())), lr=train.lr,
                                           weight_decay=train.weight_decay, impl=train.adam_impl)
        # data-parallel: DDP averages gradients during backward; the lean step has its own backward,
        # so there gradients are averaged once it is done (average_gradients)
        wrapped = self.model
        if dist.enabled and not self.lean and self.stage is None:
            wrapped = nn.parallel.DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None)
        self.forward_model = torch.compile(wrapped) if train.compile else wrapped
        self.after_backward = (lambda: average_gradients(self.model, dist)) if dist.enabled and self.lean else None
        self.autocast = autocast_context(device, train.amp)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = self.stage.optimizer if self.stage else make_adam(
            trainable, lr=train.lr, weight_decay=train.weight_decay, impl=train.adam_impl)
        self.lr_schedule = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=train.lr_milestones, gamma=train.lr_gamma)
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.diagnostics_batch = diagnostics_batch
        self.timer = PhaseTimer(device)
        self.history: list[dict[str, Any]] = []
        self.wall_seconds = 0.0

    def inputs(self, batch_inputs: Any) -> Any:
        return prepare_inputs(batch_inputs, self.train_config.channels_last)

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def _gathered_state(self) -> tuple[dict[str, Any], Any]:
        """(model state, optimiser state) to save; block-parallel ranks each contribute their part
        (a collective: every rank calls it)."""
        if self.stage is None:
            return self.model.state_dict(), self.optimizer.state_dict()
        model: dict[str, Any] = {}
        for part in gather_objects(self.dist, self.stage.own_state()):
            model.update(part)
        return model, gather_objects(self.dist, self.optimizer.state_dict())

    def _save(self, epoch: int, model_state: dict[str, Any], optimizer_state: Any, rng_states: list[dict[str, Any]]) -> None:
        save_checkpoint(self.checkpoint_path, {
            "epoch": epoch,
            "config": self.run_config,
            "model": model_state,
            "optimizer": optimizer_state,
            "lr_schedule": self.lr_schedule.state_dict(),
            "rng": rng_states,
            "history": self.history,
            "wall_seconds": self.wall_seconds,
        })

    def _restore(self) -> int:
        """Load the checkpoint in ``out_dir``; returns the number of epochs already done."""
        state = load_checkpoint(self.checkpoint_path)
        saved, current = _flat(state["config"]), _flat(self.run_config)
        saved = {k: v for k, v in ADDED_KEYS.items() if k in current} | saved
        changed = sorted(k for k in saved.keys() | current.keys()
                         if k != "out" and not k.endswith(RESUMABLE_SUFFIXES) and saved.get(k) != current.get(k))
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise CheckpointError(f"cannot resume {self.checkpoint_path}: the config differs ({details}); rerun with the original settings")
        self.model.load_state_dict(state["model"])
        optimizer = state["optimizer"]
        self.optimizer.load_state_dict(optimizer[self.dist.rank] if isinstance(optimizer, list) else optimizer)
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        states = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        set_rng_state(states[self.dist.rank % len(states)])
        self.history = list(state["history"])
        self.wall_seconds = float(state["wall_seconds"])
        self._rewrite_metrics()
        return int(state["epoch"])

    def _rewrite_metrics(self) -> None:
        """Make metrics.jsonl hold exactly the checkpointed epochs (drop lines of an interrupted epoch)."""
        if self.dist.is_main:
            lines = "".join(json.dumps(record) + "\n" for record in self.history)
            (self.out_dir / METRICS).write_text(lines)

    # ------------------------------------------------------------------ loop

    def _train_epoch(self, epoch: int, mode: str) -> dict[str, float]:
        self.model.train()
        self.model.set_mode(mode)
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        check_every = 1 if self.device.type == "cpu" else 25
        bar = tqdm(
            self.train_loader.epoch(epoch), total=len(self.train_loader), leave=False,
            desc=f"epoch {epoch + 1}/{self.train_config.epochs} {mode}",
            disable=None if self.train_config.progress else True,  # None: off when stderr is not a terminal
        )
        for step, (images, labels) in enumerate(bar):
            if self.stage is not None:
                loss, logits = self._block_parallel_step(self.inputs(images), labels)
            else:
                output, loss = train_step(
                    self.forward_model, self.optimizer, self.inputs(images), labels,
                    lean=self.lean, lean_keep=self.train_config.lean_keep, timer=self.timer, autocast=self.autocast, after_backward=self.after_backward,
                )
                logits = output.logits
            if logits is not None:  # block-parallel: only the last rank has the loss and the logits
                loss_sum += loss.detach() * len(labels)
                wrong += (logits.detach().argmax(1) != labels).sum()
                seen += len(labels)
            if (step + 1) % check_every == 0 and not torch.isfinite(loss_sum):
                raise TrainingError(
                    f"the loss became {loss_sum.item()} in epoch {epoch + 1} (by step {step + 1}); "
                    f"the last good checkpoint is epoch {epoch} in {self.out_dir}. Lower train.lr or use readout_norm=batchnorm"
                )
            if step % 20 == 0 and logits is not None:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if not torch.isfinite(loss_sum):
            raise TrainingError(f"the loss became {loss_sum.item()} in epoch {epoch + 1}; lower train.lr or use readout_norm=batchnorm")
        count = torch.tensor(seen, device=self.device)
        all_reduce_sum(self.dist, loss_sum, wrong, count)
        return {"train_loss": loss_sum.item() / count.item(), "train_error": wrong.item() / count.item()}

    def _block_parallel_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        loss = self.stage.step(images, labels, self.train_config.micro_batches, timer=self.timer)
        if loss is None:
            return None, None
        return torch.tensor(loss, device=self.device), torch.cat(self.stage.last_logits)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Test error (fraction) with the model in eval mode."""
        self.model.eval()
        counts = torch.zeros(2, device=self.device, dtype=torch.long)  # wrong, seen
        for images, labels in self.test_loader:
            with self.autocast:
                logits = self.stage.predict(self.inputs(images)) if self.stage else self.model(self.inputs(images)).logits
            if logits is not None:
                counts += torch.stack([(logits.argmax(1) != labels).sum(), torch.tensor(len(labels), device=self.device)])
        all_reduce_sum(self.dist, counts)
        return counts[0].item() / counts[1].item()

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train for ``config.train.epochs`` epochs (continuing a checkpoint with ``resume``); returns results."""
        epochs = self.train_config.epochs
        start = 0
        if self.checkpoint_path.exists():
            if not resume:
                raise ConfigError(f"{self.out_dir} already holds a run ({CHECKPOINT}); pass --resume to continue it, or choose another --out")
            start = self._restore()
            self.log(f"resumed {self.out_dir} after epoch {start}")
        elif self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / METRICS).write_text("")
        for epoch in range(start, epochs):
            began = time.perf_counter()
            mode = self.schedule.mode_at(epoch, epochs)
            lr = self.optimizer.param_groups[0]["lr"]
            record: dict[str, Any] = {"epoch": epoch + 1, "mode": mode, "lr": lr}
            record.update(self._train_epoch(epoch, mode))
            record["test_error"] = self.evaluate()
            record.update(self.timer.collect())
            for evaluator in self.evaluators:
                figures = evaluator(self.model)
                self.evaluated_keys |= set(figures)
                record.update(figures)
            every = self.train_config.diagnostics_every
            if (every and self.diagnostics_batch is not None and self.dist.is_main and self.stage is None
                    and ((epoch + 1) % every == 0 or epoch + 1 == epochs)):
                began_diagnostics = time.perf_counter()
                inputs, labels = self.diagnostics_batch
                record["diagnostics"] = model_diagnostics(self.model, self.inputs(inputs), labels)
                record["diagnostics_seconds"] = time.perf_counter() - began_diagnostics
            self.lr_schedule.step()
            record["epoch_seconds"] = time.perf_counter() - began
            self.wall_seconds += record["epoch_seconds"]
            self.history.append(record)
            rng_states = gather_objects(self.dist, rng_state())
            model_state, optimizer_state = self._gathered_state()
            if self.dist.is_main:
                with open(self.out_dir / METRICS, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                self._save(epoch + 1, model_state, optimizer_state, rng_states)
            barrier(self.dist)  # every rank has a complete checkpoint behind it before going on
            self.log(
                f"epoch {epoch + 1}/{epochs} {mode:9s} lr {lr:.2e}  loss {record['train_loss']:.4f}  "
                f"train err {record['train_error']:.2%}  test err {record['test_error']:.2%}  {record['epoch_seconds']:.1f}s"
            )
        results = self.results()
        if self.dist.is_main:
            atomic_write_json(self.out_dir / RESULTS, results)
        return results

    def results(self) -> dict[str, Any]:
        if not self.history:
            raise TrainingError("no epoch has been trained; set train.epochs >= 1")
        last = self.history[-1]
        memory, memory_method = peak_memory_mib(self.device)

        def median_of(key: str) -> float | None:
            values = [r[key] for r in self.history if key in r]
            return statistics.median(values) if values else None

        counts = count_parameters(self.model)
        return {
            **self.summary,
            "mode": self.train_config.mode,
            "params": counts["total"],
            "params_by_part": counts,
            "test_error": last["test_error"],
            "train_error": last["train_error"],
            "best_test_error": min(r["test_error"] for r in self.history),
            **{key: last[key] for key in sorted(self.evaluated_keys) if key in last},
            "peak_memory_mib": memory,
            "peak_memory_method": memory_method,
            "forward_ms": median_of("forward_ms"),
            "backward_ms": median_of("backward_ms"),
            "step_ms": median_of("step_ms"),
            "epochs": len(self.history),
            "wall_seconds": self.wall_seconds,
            "device": str(self.device),
            "torch": torch.__version__,
            "config": self.run_config,
        }
