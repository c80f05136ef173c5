"""Class-incremental learning: the classes arrive in tasks, each task trained without the old data
(but for an optional replay memory), and the model is evaluated on every class seen so far with
no task label.

In CAPs a class is a prototype in the shared pattern space, so a new class is a new prototype:
the model is built with every class's prototype, and only the prototypes of the classes seen so far
take part in the softmax (``CAPModel.class_mask``); the others are untouched until their task
comes. The same holds for ``bp`` (its head is prototypes too) and ``caps-full``. Options: freeze the
old classes' prototypes when a new task starts, freeze the first blocks after the first task, a
replay memory of ``replay`` training samples per old class (chosen stratified, once, when their
task ends), and ``joint``: all classes in one task, the upper bound at the same number of sample
visits per task.

Metrics (Chaudhry et al. 2018; Lopez-Paz & Ranzato 2017; Rebuffi et al. 2017), from ``accuracy``:
R[t][j] = accuracy on task j's test classes after training task t, predicting among every class
seen by then:

- ``seen_accuracy[t]``: accuracy on the test samples of every class seen after task t;
- ``average_incremental_accuracy``: the mean of ``seen_accuracy`` over tasks;
- ``forgetting[j]`` (j < T - 1): the best R[l][j] over l < T - 1, minus the final R[T-1][j];
  ``average_forgetting``: their mean;
- ``backward_transfer``: the mean over j < T - 1 of R[T-1][j] - R[j][j].
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from .checkpoint import atomic_write_json, load_checkpoint
from .config import RunConfig, check_fields, in_range, opt
from .data import BatchLoader, ImageSet, image_split, load_image_dataset, stratified_indices
from .evaluation import error_counts, predictions
from .errors import ConfigError, DataError
from .pipeline import describe_inputs, save_input_pipeline
from .metrics import tidy
from .model import CAPModel
from .modes import CAP_FAMILIES, ModeSchedule, mode_spec
from .training import describe_parameters, launched, model_from_config, seeded_model
from .strategies import build_strategy
from .streams import Purpose, stream, stream_seed
from .trainer import CHECKPOINT, RESULTS, Trainer


@dataclass
class IncrementalConfig:
    tasks: int = opt("number of tasks the classes are split into, in class_order (equal groups)", 5,
                     check=in_range(1, 10_000, open_high=False))
    class_order: list[int] | None = opt("the order in which classes arrive (default: by index)", None)
    replay: int = opt("training samples kept per old class and replayed in every later task (0 = none)", 0,
                      check=in_range(0, 10**7, open_high=False))
    freeze_prototypes: bool = opt("when a task starts, freeze the prototypes of the classes seen before", False)
    freeze_blocks: int = opt("after the first task, freeze the first N blocks (parameters and statistics)", 0,
                             check=in_range(0, 10_000, open_high=False))
    joint: bool = opt("the upper bound: every class in one task (train.epochs epochs over all the data)", False)

    def validate(self, prefix: str) -> None:
        check_fields(self, prefix)


@dataclass
class IncrementalRunConfig(RunConfig):
    """A class-incremental run (``scripts/train_incremental.py``): a vision run plus its ``incremental`` section."""

    incremental: IncrementalConfig = field(default_factory=IncrementalConfig)

    def validate(self) -> "IncrementalRunConfig":
        super().validate()
        self.incremental.validate("incremental")
        modes = ModeSchedule.parse(self.train.mode).modes
        if any(mode_spec(m).family not in CAP_FAMILIES or m == "local" for m in modes):
            raise ConfigError(f"class-incremental runs train bp, caps or caps-full (models whose classes are prototypes); "
                              f"train.mode is {self.train.mode}")
        return self


def task_classes(num_classes: int, incremental: IncrementalConfig) -> list[list[int]]:
    """The classes of every task (one task of all classes for ``joint``)."""
    order = incremental.class_order if incremental.class_order is not None else list(range(num_classes))
    if sorted(order) != list(range(num_classes)):
        raise ConfigError(f"incremental.class_order must list every class 0..{num_classes - 1} once, got {order}")
    if incremental.joint:
        return [order]
    if num_classes % incremental.tasks:
        raise ConfigError(f"{num_classes} classes do not split into {incremental.tasks} equal tasks; set incremental.tasks")
    size = num_classes // incremental.tasks
    return [order[i * size:(i + 1) * size] for i in range(incremental.tasks)]


def of_classes(split: ImageSet, classes: Sequence[int]) -> ImageSet:
    keep = torch.isin(split.labels, torch.tensor(list(classes)))
    return ImageSet(split.images[keep], split.labels[keep])


def replay_memory(split: ImageSet, classes: Sequence[int], per_class: int, generator: torch.Generator) -> ImageSet:
    """``per_class`` training samples of each of ``classes``, stratified, drawn by ``generator``."""
    part = of_classes(split, classes)
    index = stratified_indices(part.labels, per_class * len(classes), generator)
    return ImageSet(part.images[index], part.labels[index])


def incremental_metrics(accuracy: Sequence[Sequence[float]], seen_accuracy: Sequence[float]) -> dict[str, Any]:
    """The standard figures from R (``accuracy[t][j]``) and the seen-class accuracies (module docstring)."""
    last = len(accuracy) - 1
    forgetting = [max(accuracy[t][j] for t in range(j, last)) - accuracy[last][j] for j in range(last)]
    return {
        "seen_accuracy": list(seen_accuracy),
        "average_incremental_accuracy": statistics.fmean(seen_accuracy),
        "final_accuracy": seen_accuracy[-1],
        "forgetting": forgetting,
        "average_forgetting": statistics.fmean(forgetting) if forgetting else 0.0,
        "backward_transfer": statistics.fmean(accuracy[last][j] - accuracy[j][j] for j in range(last)) if last else 0.0,
    }


def task_accuracy(model: CAPModel, split: Any, batch_size: int, device: torch.device) -> float:
    """Accuracy on ``split``; a task without a test sample has none, which is an error rather than 0 or 1."""
    wrong, seen = error_counts(predictions(lambda inputs: model(inputs).logits, model, BatchLoader(split, batch_size, device=device))).tolist()
    if seen == 0:
        raise DataError("a task of this class-incremental run has no test sample: raise data.test_subset to at least one per class")
    return 1 - wrong / seen


def freeze_blocks(model: CAPModel, count: int) -> None:
    """Freeze the first ``count`` blocks of the (single) encoder: no gradient, statistics kept."""
    name = next(iter(model.encoders))
    for index in range(min(count, len(model.encoders[name].blocks))):
        model.encoders[name].blocks[index].requires_grad_(False)
        model.frozen_blocks.add((name, index))
    model.train(model.training)


def run_incremental(config: IncrementalRunConfig, *, resume: bool = False, force: bool = False,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the tasks one after the other (each in ``<out>/task-<t>``, resumable like any run) and
    write ``results.json`` with the accuracy matrix and the metrics in the run folder."""
    config.validate()
    out = config.out_dir()
    with launched(config.train, out) as (context, device):
        if context.enabled:
            raise ConfigError("class-incremental runs train in one process (no torchrun)")
        data = load_image_dataset(config.data, config.train.seed)
        tasks = task_classes(data.num_classes, config.incremental)
        model = seeded_model(lambda: model_from_config(config, data.num_classes, data.in_shape), config.train.seed, context)
        log(f"{config.data.name}: {len(tasks)} task(s) of classes {tasks} | {config.model.backbone} | mode {config.train.mode} | "
            f"{describe_parameters(model)} | replay {config.incremental.replay}/class | -> {out}")
        mean, std = data.channel_stats()
        test_splits = [image_split(of_classes(data.test, classes), mean, std) for classes in tasks]
        memory: list[ImageSet] = []
        accuracy: list[list[float]] = []
        seen_accuracy: list[float] = []
        wall_seconds = 0.0
        hooks: list[Any] = []
        seen: list[int] = []
        for t, classes in enumerate(tasks):
            seen += classes
            model.set_class_mask(seen)
            for hook in hooks:
                hook.remove()
            hooks = []
            if t > 0 and config.incremental.freeze_blocks:
                freeze_blocks(model, config.incremental.freeze_blocks)
            train_set = of_classes(data.train, classes)
            if memory:
                train_set = ImageSet(torch.cat([train_set.images, *(m.images for m in memory)]),
                                     torch.cat([train_set.labels, *(m.labels for m in memory)]))
            strategy = build_strategy(model, config.train, device, context)
            unseen = [c for later in tasks[t + 1:] for c in later]  # untouched until their task, weight decay or not
            held = unseen + (seen[:-len(classes)] if t > 0 and config.incremental.freeze_prototypes else [])
            if held:
                hooks = freeze_prototypes(model, strategy.optimizer, held)
            train_loader = BatchLoader(image_split(train_set, mean, std, config.data.augment, config.data.crop_padding, config.data.cutout),
                                       config.train.batch_size, device=device, shuffle=True, seed=stream_seed(config.train.seed, Purpose.TASK, t))
            test_loader = BatchLoader(image_split(of_classes(data.test, seen), mean, std), config.train.eval_batch_size, device=device)
            task_dir = out / f"task-{t}"
            run_config = config.to_dict() | {"task": {"index": t, "classes": classes, "seen": list(seen)}}
            trainer = Trainer(strategy, train_loader, test_loader, task_dir, run_config=run_config,
                              summary={"dataset": config.data.name, "backbone": config.model.backbone, "task": t}, log=log)
            finished = trainer.finished_results() if not force else None
            if finished is not None:
                strategy.load_state_dict(load_checkpoint(task_dir / CHECKPOINT))
                log(f"task {t}: finished before, loaded from {task_dir}")
            else:
                finished = trainer.fit(resume=resume, force=force)
            wall_seconds += finished["wall_seconds"]
            accuracy.append([task_accuracy(model, split, config.train.eval_batch_size, device) for split in test_splits])
            seen_accuracy.append(task_accuracy(model, image_split(of_classes(data.test, seen), mean, std), config.train.eval_batch_size, device))
            log(f"after task {t} (classes {classes}): accuracy on the {len(seen)} seen classes {seen_accuracy[-1]:.2%}; per task "
                + " ".join(f"{a:.2%}" for a in accuracy[-1][:t + 1]))
            if config.incremental.replay:
                memory.append(replay_memory(data.train, classes, config.incremental.replay, stream(config.train.seed, Purpose.REPLAY, t)))
        results = tidy({"dataset": config.data.name, "backbone": config.model.backbone, "mode": config.train.mode, "tasks": tasks,
                        "accuracy": accuracy, **incremental_metrics(accuracy, seen_accuracy), "test_error": 1 - seen_accuracy[-1],
                        "epochs": config.train.epochs, "wall_seconds": wall_seconds}) | {"config": config.to_dict()}
        atomic_write_json(out / RESULTS, results)
        save_input_pipeline(out, {"image": describe_inputs(image_split(data.train, mean, std), data.in_shape, data.classes, config.data)})
        return results


def freeze_prototypes(model: CAPModel, optimizer: torch.optim.Optimizer, classes: Sequence[int]) -> list[RemovableHandle]:
    """Keep these classes' prototypes (every chunk) bit-identical through ``optimizer``'s steps;
    returns the hooks' handles.

    Why not zero their gradient: Adam's weight decay (``train.weight_decay``) adds the weight itself
    to the gradient, so a row with a zero gradient still moves. The rows are read just before every
    step and written back just after it, so they stay as they were whatever the optimiser does
    (also when a task resumes from its checkpoint).
    """
    rows = torch.tensor(sorted(classes), dtype=torch.long)
    chunks = list(model.head.chunks)
    kept: list[Tensor] = []

    def keep(*_: Any) -> None:
        with torch.no_grad():
            kept[:] = [chunk[rows.to(chunk.device)] for chunk in chunks]

    def restore(*_: Any) -> None:
        with torch.no_grad():
            for chunk, values in zip(chunks, kept):
                chunk.index_copy_(0, rows.to(chunk.device), values)

    return [optimizer.register_step_pre_hook(keep), optimizer.register_step_post_hook(restore)]
