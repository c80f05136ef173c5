"""The loop over epochs: the mode schedule, the LR schedule, evaluation, per-epoch metrics
(``metrics.jsonl``), the final ``results.json``, atomic per-epoch checkpoints and resuming from them.

How a step turns a batch into parameter updates is the strategy's business
(:mod:`capsmm.strategies`); the loop is the same for all of them.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .board import FOLDER as BOARD_FOLDER
from .board import Board
from .checkpoint import atomic_write_json, load_checkpoint, remove_stale_temporaries, rng_state, save_checkpoint, set_rng_state
from .config import INCIDENTAL_SUFFIXES, RESUMABLE_SUFFIXES, TrainConfig, flatten_dict, with_added_keys
from .data import BatchLoader
from .diagnostics import model_diagnostics
from .distributed import all_reduce_sum, barrier, gather_objects
from .evaluation import error_counts, predictions
from .errors import CheckpointError, ConfigError, DataError, TrainingError
from .metrics import tidy
from .profiling import PhaseTimer, count_parameters, peak_memory_mib
from .model import CAPModel
from .modes import ModeSchedule
from .streams import STREAMS_VERSION
from .strategies import Strategy

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
RESULTS = "results.json"


Batch = tuple[Any, torch.Tensor]
Evaluator = Callable[[CAPModel], dict[str, Any]]
"""A function of the model giving extra per-epoch figures, merged into the epoch's metrics."""

def lr_factor(train: TrainConfig, epoch: int) -> float:
    """The learning-rate multiplier of the 0-based ``epoch``: ``lr_gamma`` per milestone passed, times
    the linear cool-down over the second half with ``lr_cooldown`` (the Forward-Forward reference's
    ``2 (1 + E - epoch) / E`` after epoch E // 2, capped at 1: the reference's goes up to 1.33 for odd E)."""
    factor = train.lr_gamma ** bisect.bisect_right(sorted(train.lr_milestones), epoch)
    if train.lr_cooldown and epoch > train.epochs // 2:
        factor *= min(1.0, 2 * (1 + train.epochs - epoch) / train.epochs)
    return factor


class Trainer:
    """Trains the model of ``strategy`` as its ``train`` section says, on the batches of ``train_loader``,
    writing into ``out_dir``. The loop knows no strategy by name: it calls ``strategy.step``,
    ``strategy.predict`` and the strategy's state for checkpoints.

    Args:
        strategy: how steps are computed (:func:`capsmm.strategies.build_strategy`); holds the model,
            the optimiser, the device and the rank's place in the group.
        train_loader, test_loader: :class:`~capsmm.data.BatchLoader` s (tensor or dict batches).
        out_dir, log: where to write, and print.
        run_config: the whole resolved config (saved in checkpoints and results; a resumed run must match it).
        summary: fields that head ``results.json`` (dataset, backbone, mode...).
        evaluators: functions of the model giving extra per-epoch figures (e.g. per-modality error), as dicts.
        final_evaluators: the same for figures of the trained model alone (e.g. the errors under each
            corruption): run after the last epoch only, since each costs several passes over the test set.
        before_epoch: functions of the epoch's index (0-based) run on every rank before the epoch trains
            (e.g. starting gradient modulation's epoch: its range and its noise stream).
        before_evaluation: functions of the model run on every rank after each epoch's training, before
            it is evaluated (e.g. calibrating a multimodal model's gates).
        diagnostics_batch: the fixed batch that ``train.diagnostics_every`` reads.
    """

    def __init__(
        self,
        strategy: Strategy,
        train_loader: BatchLoader,
        test_loader: BatchLoader,
        out_dir: Path,
        *,
        run_config: dict[str, Any],
        summary: dict[str, Any],
        evaluators: Sequence[Evaluator] = (),
        final_evaluators: Sequence[Evaluator] = (),
        before_epoch: Sequence[Callable[[int], None]] = (),
        before_evaluation: Sequence[Callable[[Any], None]] = (),
        diagnostics_batch: Batch | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.strategy = strategy
        self.model = strategy.model
        self.train_config = train = strategy.train_config
        self.device = strategy.device
        self.dist = strategy.dist
        self.run_config = run_config
        self.summary = summary
        self.evaluators = list(evaluators)
        self.final_evaluators = list(final_evaluators)
        self.before_epoch = list(before_epoch)
        self.before_evaluation = list(before_evaluation)
        self.evaluated_keys: set[str] = set()
        self.out_dir = Path(out_dir)
        self.log = log if self.dist.is_main else (lambda line: None)
        self.schedule = ModeSchedule.parse(train.mode)
        self.lr_schedule = (torch.optim.lr_scheduler.LambdaLR(strategy.optimizer, functools.partial(lr_factor, train)) if train.lr_cooldown
                            else torch.optim.lr_scheduler.MultiStepLR(strategy.optimizer, milestones=train.lr_milestones, gamma=train.lr_gamma))
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.diagnostics_batch = diagnostics_batch
        self.timer = PhaseTimer(self.device)
        self.history: list[dict[str, Any]] = []
        self.wall_seconds = 0.0
        self.board: Board | None = None

    @property
    def inspects_model(self) -> bool:
        """Whether this rank computes the evaluators' figures (they need the whole model; rank 0 alone)."""
        return self.strategy.holds_model and self.dist.is_main

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def _save(self, epoch: int, strategy_state: dict[str, Any], rng_states: list[dict[str, Any]]) -> None:
        save_checkpoint(self.checkpoint_path, {
            "epoch": epoch,
            "config": self.run_config,
            "model": strategy_state["model"],
            "optimizer": strategy_state["optimizer"],
            "lr_schedule": self.lr_schedule.state_dict(),
            "rng": rng_states,
            "history": self.history,
            "wall_seconds": self.wall_seconds,
            "streams": STREAMS_VERSION,
            "amp": self.strategy.amp,
            "evaluated": sorted(self.evaluated_keys),
        })

    def _restore(self) -> int:
        """Load the checkpoint in ``out_dir``; returns the number of epochs already done."""
        state = load_checkpoint(self.checkpoint_path)
        if state.get("streams") != STREAMS_VERSION:
            raise CheckpointError(f"cannot resume {self.checkpoint_path}: it was written by a capsmm that drew its random streams "
                                  "(batch order, subsets, pairing, augmentation) another way, so the rest of the run would not be "
                                  "the run it began; finish it with that capsmm, or start it over with --force")
        saved, current = with_added_keys(state["config"]), flatten_dict(self.run_config)
        changed = sorted(k for k in saved.keys() | current.keys()
                         if k != "out" and not k.endswith(RESUMABLE_SUFFIXES) and saved.get(k) != current.get(k))
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise CheckpointError(f"cannot resume {self.checkpoint_path}: the config differs ({details}); rerun with the original settings")
        if state.get("amp", self.strategy.amp) != self.strategy.amp:  # train.amp=auto resolves by device
            raise CheckpointError(f"cannot resume {self.checkpoint_path}: its epochs ran in precision {state['amp']}, and train.amp="
                                  f"{self.train_config.amp} is {self.strategy.amp} on {self.device}; resume it on a device that computes "
                                  f"{state['amp']} natively, or start it over with --force")
        self._check_schedule([record["mode"] for record in state["history"]], saved.get("train.epochs"))
        self._check_lr_history(len(state["history"]), saved.get("train.epochs"))
        states = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # one per rank that wrote it
        self._check_ranks(len(states), saved)
        self.strategy.load_state_dict(state)
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        set_rng_state(states[self.dist.rank])
        self.history = list(state["history"])
        self.evaluated_keys = set(state.get("evaluated", ()))  # the results of a run with no epoch left to train need them
        self.wall_seconds = float(state["wall_seconds"])
        self._rewrite_metrics()
        return int(state["epoch"])

    def _check_schedule(self, trained: Sequence[str], saved_epochs: int | None) -> None:
        """Refuse a resume whose ``train.epochs`` would move a schedule's switch among the epochs already
        trained (``caps:0.5,caps-full``, 4 epochs done, extended to 8: epochs 3-4 ran caps-full, a fresh
        8-epoch run trains them as caps); see :class:`~capsmm.modes.ModeSchedule`."""
        epochs = self.train_config.epochs
        epoch = self.schedule.first_mismatch(trained, epochs)
        if epoch is not None:
            raise CheckpointError(
                f"cannot resume {self.checkpoint_path} with train.epochs={epochs}: train.mode '{self.train_config.mode}' switches at "
                f"fractions of the epochs, and epoch {epoch + 1}, trained as {trained[epoch]}, would be "
                f"{self.schedule.mode_at(epoch, epochs)} in a run of {epochs} epochs; resume with train.epochs={saved_epochs}, "
                "or train the new length in another folder (--out) or from scratch (--force)")

    def _check_lr_history(self, trained: int, saved_epochs: int | None) -> None:
        """Refuse a resume whose ``train.epochs`` would give an epoch already trained another learning
        rate (``train.lr_cooldown`` depends on the epoch count): the run would have a learning-rate
        history that no fresh run of either length has."""
        if saved_epochs is None or saved_epochs == self.train_config.epochs:
            return
        before = dataclasses.replace(self.train_config, epochs=saved_epochs)
        epoch = next((e for e in range(trained) if lr_factor(before, e) != lr_factor(self.train_config, e)), None)
        if epoch is not None:
            raise CheckpointError(
                f"cannot resume {self.checkpoint_path} with train.epochs={self.train_config.epochs}: train.lr_cooldown scales the "
                f"learning rate by the epoch count, and epoch {epoch + 1} trained at {lr_factor(before, epoch):g}x would be "
                f"{lr_factor(self.train_config, epoch):g}x in a run of {self.train_config.epochs} epochs; resume with "
                f"train.epochs={saved_epochs}, or train the new length in another folder (--out) or from scratch (--force)")

    def _check_ranks(self, written_by: int, saved: dict[str, Any]) -> None:
        """Refuse, in one line, a checkpoint that ``written_by`` ranks wrote when this run has another
        number: each rank's RNG stream and share of every batch (and, block-parallel, its blocks and
        their optimiser state) belong to its rank, so only the same number of ranks resumes exactly."""
        if written_by == self.dist.world:
            return

        def ranks(n: int) -> str:
            return "1 process" if n == 1 else f"{n} ranks"

        written = ranks(written_by) + (f" (train.parallel={saved.get('train.parallel')})" if written_by > 1 else "")
        how = (f"torchrun --nproc_per_node {written_by} with the same arguments and --resume" if written_by > 1
               else "the same command without torchrun, with --resume")
        raise CheckpointError(f"cannot resume {self.checkpoint_path}: it was written by {written}, this run has {ranks(self.dist.world)}; "
                              f"resume it with the same number of ranks: {how}")

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
        for step, (inputs, labels) in enumerate(bar):
            loss, logits = self.strategy.step(inputs, labels, self.timer)
            if logits is not None:  # block-parallel: only the head rank has the loss and the logits
                loss_sum += loss * len(labels)
                wrong += (logits.argmax(1) != labels).sum()
                seen += len(labels)
            if (step + 1) % check_every == 0:
                self._stop_unless_finite(self._summed(loss_sum), epoch, f" (by step {step + 1})")
            if bar.disable is False and step % 20 == 0 and seen:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}")  # the running mean over the epoch so far
            if self.board is not None and loss is not None and (step + 1) % check_every == 0:
                self.board.step(epoch * len(self.train_loader) + step, loss.item())
        count = torch.tensor(seen, device=self.device)
        all_reduce_sum(self.dist, loss_sum, wrong, count)
        self._stop_unless_finite(loss_sum, epoch)
        return {"train_loss": loss_sum.item() / count.item(), "train_error": wrong.item() / count.item()}

    def _summed(self, loss_sum: torch.Tensor) -> torch.Tensor:
        """The loss so far summed over the ranks (one scalar all-reduce; ``loss_sum`` itself when
        not distributed), so that every rank sees a non-finite loss of any rank's batch."""
        if not self.dist.enabled:
            return loss_sum
        total = loss_sum.clone()  # the sum of reported (graph-free) losses
        all_reduce_sum(self.dist, total)
        return total

    def _stop_unless_finite(self, total: torch.Tensor, epoch: int, where: str = "") -> None:
        """Raise one-line :class:`TrainingError` if ``total``, the loss summed over all ranks, is not
        finite. Every rank checks the same sum at the same step, so all of them stop together with
        the same line instead of the others waiting ``train.dist_timeout`` for the one that stopped."""
        if not torch.isfinite(total):
            raise TrainingError(
                f"the loss became {total.item()} in epoch {epoch + 1}{where}; the last good checkpoint is epoch {epoch} in "
                f"{self.out_dir}. Lower train.lr or use readout_norm=batchnorm"
            )

    def evaluate(self) -> float:
        """Test error (fraction) with the model in eval mode (without gradients: :func:`capsmm.evaluation.predictions`)."""
        counts = error_counts(predictions(self.strategy.predict, self.model, self.test_loader), self.device)
        all_reduce_sum(self.dist, counts)
        return counts[0].item() / counts[1].item()

    def finished_results(self) -> dict[str, Any] | None:
        """The results of this very run if ``out_dir`` holds it finished (same config, all epochs), else None."""
        try:
            saved = json.loads((self.out_dir / RESULTS).read_text())
        except (OSError, ValueError):
            return None
        same = {k: v for k, v in with_added_keys(saved.get("config", {})).items() if not k.endswith(INCIDENTAL_SUFFIXES)} == {
            k: v for k, v in flatten_dict(self.run_config).items() if not k.endswith(INCIDENTAL_SUFFIXES)}
        return saved if same and saved.get("epochs") == self.train_config.epochs else None

    def clear(self) -> None:
        """Delete this run's files in ``out_dir`` (``--force``); other files there stay."""
        if self.dist.is_main:
            for name in (CHECKPOINT, METRICS, RESULTS):
                (self.out_dir / name).unlink(missing_ok=True)
            shutil.rmtree(self.out_dir / BOARD_FOLDER, ignore_errors=True)
        barrier(self.dist)

    def fit(self, resume: bool = False, force: bool = False) -> dict[str, Any]:
        """Train for ``config.train.epochs`` epochs; returns the results (also in results.json).

        A run that ``out_dir`` already holds finished is not trained again: its results are returned
        as they are (``force`` starts it over). An unfinished one continues with ``resume``.
        """
        epochs = self.train_config.epochs
        start = 0
        if len(self.train_loader) == 0:
            raise DataError(f"no training batch: the training split holds fewer samples than one batch of {self.train_config.batch_size}"
                            f"{' over ' + str(self.dist.world) + ' ranks' if self.dist.enabled else ''}; lower train.batch_size")
        if force:
            self.clear()
        finished = self.finished_results()
        if finished is not None:
            self.log(f"{self.out_dir} holds this run, finished: test error {finished['test_error']:.2%} after {finished['epochs']} "
                     "epochs (nothing retrained; --force trains it again)")
            return finished
        if self.dist.is_main:
            remove_stale_temporaries(self.out_dir)  # what a process killed while writing left behind
        if self.checkpoint_path.exists():
            if not resume:
                raise ConfigError(f"{self.out_dir} already holds an unfinished run or one with other settings ({CHECKPOINT}); "
                                  "pass --resume to continue it, or --force to start it again")
            start = self._restore()
            self.log(f"resumed {self.out_dir} after epoch {start}")
        elif self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / METRICS).write_text("")
        if self.train_config.tensorboard and self.dist.is_main:
            self.board = Board(self.out_dir, first_step=start * len(self.train_loader))
        try:
            return self._epochs(start, epochs)
        finally:
            if self.board is not None:
                self.board.close()

    def _epochs(self, start: int, epochs: int) -> dict[str, Any]:
        for epoch in range(start, epochs):
            began = time.perf_counter()
            mode = self.schedule.mode_at(epoch, epochs)
            lr = self.strategy.optimizer.param_groups[0]["lr"]
            record: dict[str, Any] = {"epoch": epoch + 1, "mode": mode, "lr": lr}
            for start_epoch in self.before_epoch:
                start_epoch(epoch)
            record.update(self._train_epoch(epoch, mode))
            record["train_seconds"] = time.perf_counter() - began
            for prepare in self.before_evaluation:
                prepare(self.model)
            record["test_error"] = self.evaluate()
            record.update(self.timer.collect())
            last_epoch = epoch + 1 == epochs
            for evaluator in [*self.evaluators, *(self.final_evaluators if last_epoch else ())] if self.inspects_model else ():
                figures = evaluator(self.model)
                self.evaluated_keys |= set(figures)
                record.update(figures)
            every = self.train_config.diagnostics_every
            # on every rank that holds the model, not rank 0 alone: the gradient cosine's training-mode
            # forward runs SyncBatchNorm's collectives, which the other ranks must join (same batch, same figures)
            if (every and self.diagnostics_batch is not None and self.strategy.holds_model
                    and ((epoch + 1) % every == 0 or last_epoch)):
                began_diagnostics = time.perf_counter()
                inputs, labels = self.diagnostics_batch
                record["diagnostics"] = model_diagnostics(self.model, self.strategy.prepare(inputs), labels)
                record["diagnostics_seconds"] = time.perf_counter() - began_diagnostics
            self.lr_schedule.step()
            record["epoch_seconds"] = time.perf_counter() - began
            self.wall_seconds += record["epoch_seconds"]
            record = tidy(record)
            self.history.append(record)
            rng_states = gather_objects(self.dist, rng_state())
            strategy_state = self.strategy.state_dict()  # a collective where ranks hold parts of the model
            if self.dist.is_main:
                with open(self.out_dir / METRICS, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                if self.board is not None:
                    self.board.epoch(record, (epoch + 1) * len(self.train_loader) - 1)
                self._save(epoch + 1, strategy_state, rng_states)
            barrier(self.dist)  # every rank has a complete checkpoint behind it before going on
            self.log(
                f"epoch {epoch + 1}/{epochs} {mode:9s} lr {lr:.2e}  loss {record['train_loss']:.4f}  "
                f"train err {record['train_error']:.2%}  test err {record['test_error']:.2%}  {record['epoch_seconds']:.1f}s"
            )
        results = gather_objects(self.dist, self.results())[0]  # rank 0's figures (evaluators run there) on every rank
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
        return tidy({
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
            "optimizer_ms": median_of("optimizer_ms"),
            "step_ms": median_of("step_ms"),
            "epochs": len(self.history),
            "wall_seconds": self.wall_seconds,
            "device": str(self.device),
            "amp": self.strategy.amp,
            "torch": torch.__version__,
        }) | {"config": self.run_config}  # the config exactly as given (never rounded: resuming compares it)
