"""Side-by-side cost of training modes: parameters, peak memory, per-phase step time, and the floor.

All variants of one backbone live in one process and are stepped round-robin (the start of each
round rotates), so machine noise hits them alike; figures are medians after warm-up.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .config import TrainConfig
from .errors import ConfigError
from .layers import batchnorm_stats_frozen
from .profiling import PhaseTimer, TensorMemoryMeter, count_parameters, tensor_bytes
from .model import CAPModel, build_model
from .modes import MODES
from .strategies import Strategy, build_strategy
from .strategies.lean import Lean

#: data-set name -> (per-sample input shape, classes), so no data need be read to benchmark
DATASET_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10),
    "kmnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100),
}
#: bench mode -> (training mode, memory)
BENCH_MODES: dict[str, tuple[str, str]] = {mode: (mode, "standard") for mode in MODES} | {
    "caps-lean": ("caps", "lean"), "local-lean": ("local", "lean"),
}
#: speed options that --options can vary, with their type
OPTIONS: dict[str, Callable[[str], Any]] = {
    "adam_impl": str, "channels_last": lambda v: v.lower() in ("1", "true", "on", "yes"), "compile": lambda v: v.lower() in ("1", "true", "on", "yes"), "amp": str,
    "lean_keep": int, "lean_segments": lambda v: v if v == "auto" else int(v),
}
DEFAULT_OPTIONS = {"adam_impl": "auto", "channels_last": False, "compile": False, "amp": "none", "lean_keep": 0, "lean_segments": 1}
#: options that only lean variants take (other modes are measured once, at their defaults)
LEAN_OPTIONS = ("lean_keep", "lean_segments")


@dataclass
class Variant:
    """One thing to measure: a backbone in one mode with one set of speed options."""

    backbone: str
    mode: str
    options: dict[str, Any]
    strategy: Strategy
    times: dict[str, list[float]] = field(default_factory=lambda: {"forward_ms": [], "backward_ms": [], "optimizer_ms": [], "step_ms": []})

    @property
    def model(self) -> CAPModel:
        return self.strategy.model

    @property
    def lean(self) -> bool:
        return isinstance(self.strategy, Lean)

    @property
    def label(self) -> str:
        changed = [f"{k}={v}" for k, v in self.options.items() if DEFAULT_OPTIONS[k] != v and (k not in LEAN_OPTIONS or self.lean)]
        return " ".join([self.mode, *changed])


def parse_options(specs: Sequence[str]) -> list[dict[str, Any]]:
    """``["adam_impl=foreach,fused", "channels_last=false,true"]`` -> every combination of the values."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or key not in OPTIONS:
            raise ConfigError(f"--options expects KEY=V1,V2 with KEY one of {', '.join(OPTIONS)}; got '{spec}'")
        try:
            axes.append([(key, OPTIONS[key](v.strip())) for v in values.split(",") if v.strip()])
        except ValueError:
            raise ConfigError(f"--options {key}: '{values}' holds a value {key} does not take") from None
    return [DEFAULT_OPTIONS | dict(combo) for combo in itertools.product(*axes)]


def build_variant(backbone: str, mode: str, options: dict[str, Any], *, in_shape: tuple[int, ...], num_classes: int,
                  width_mult: float, device: torch.device, lr: float = 5e-4) -> Variant:
    if mode not in BENCH_MODES:
        raise ConfigError(f"unknown bench mode '{mode}'; valid: {', '.join(BENCH_MODES)}")
    train_mode, memory = BENCH_MODES[mode]
    torch.manual_seed(0)
    model = build_model(backbone, num_classes=num_classes, in_shape=in_shape, mode=train_mode, width_mult=width_mult)
    lean = {k: options[k] for k in LEAN_OPTIONS} if memory == "lean" else {}
    train = TrainConfig(mode=train_mode, memory=memory, lr=lr, adam_impl=options["adam_impl"], channels_last=options["channels_last"],
                        compile=options["compile"] and memory == "standard", amp=options["amp"], **lean)
    train.validate()  # an option value out of range: one line, before anything is measured
    return Variant(backbone, mode, options, build_strategy(model, train, device))


def _step(variant: Variant, images: Tensor, labels: Tensor, timer: PhaseTimer | None = None) -> None:
    variant.strategy.step(images, labels, timer)


def predict_ms(model: CAPModel, images: Tensor, reps: int = 5, **ff: str) -> float:
    """Median milliseconds of the eval-mode prediction of one batch (Forward-Forward's ``goodness``
    predictor, ``ff={"predictor": "goodness"}``, makes C passes)."""
    model.eval()
    try:
        with torch.no_grad():
            if ff:
                return _time_ms(lambda: model.ff_scores(images, ff["predictor"]), reps)
            return _time_ms(lambda: model(images), reps)
    finally:
        model.train()


def time_variants(variants: Sequence[Variant], images: Tensor, labels: Tensor, *, iters: int, warmup: int) -> None:
    """Warm every variant up, then step them round-robin ``iters`` times, recording per-phase times."""
    device = images.device
    for variant in variants:
        variant.model.train()
        for _ in range(warmup):
            _step(variant, images, labels)
    for iteration in range(iters):
        shift = iteration % len(variants)
        for variant in [*variants[shift:], *variants[:shift]]:
            timer = PhaseTimer(device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            _step(variant, images, labels, timer)
            phases = timer.collect()
            for key in variant.times:
                variant.times[key].append(phases[key])


def peak_step_memory(variant: Variant, images: Tensor, labels: Tensor) -> tuple[float, float, str]:
    """(peak MiB of the whole step, peak MiB of activations and temporaries, method).

    Resting state: parameters and optimiser state. The step's peak adds activations, gradients
    and temporaries. The second figure is the peak of what the step allocates other than the
    gradients, replayed from the meter's allocation log (gradients may be allocated after the
    activation peak, as in lean CAPs, so subtracting them from the peak would under-count).
    """
    device = images.device
    optimizer = variant.strategy.optimizer
    optimizer.zero_grad(set_to_none=True)
    resting = tensor_bytes(variant.model.parameters()) + tensor_bytes(
        t for state in optimizer.state.values() for t in state.values() if isinstance(t, Tensor) and t.device == device)
    with TensorMemoryMeter() as meter:
        _step(variant, images, labels)
    activations = meter.peak_without(p.grad for p in variant.model.parameters() if p.grad is not None)
    above, method = meter.peak, "tensor storages alive (TensorMemoryMeter)"
    if device.type == "cuda":  # the total from the allocator itself, on a second step
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _step(variant, images, labels)
        torch.cuda.synchronize(device)
        above, method = torch.cuda.max_memory_allocated(device) - base, "cuda max_memory_allocated (activations: TensorMemoryMeter)"
    return (resting + above) / 2**20, activations / 2**20, method


def _time_ms(fn: Callable[[], Any], reps: int) -> float:
    """Median milliseconds of one call of ``fn`` over ``reps`` calls after a warm-up
    (``torch.utils.benchmark``, which synchronises CUDA and keeps the thread count fixed). Imported
    here, not with the module: importing it loads the C++ extension builder, which warns on a CUDA
    build of torch without a GPU, and bench.py's one-line errors must print nothing else."""
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    fn()  # warm-up
    return statistics.median(timer.timeit(1).mean for _ in range(reps)) * 1000


def backward_floor(model: CAPModel, images: Tensor, reps: int = 5) -> dict[str, float]:
    """Weight-gradient and input-gradient time of every conv/linear layer of the encoders.

    A stop-gradient can only remove input-gradient work, so the caps/bp backward ratio is bounded
    below by ``floor = weight / (weight + input)``. The first layer is left out of the input part:
    no mode computes the gradient of the images.
    """
    layers: list[tuple[nn.Module, Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: layers.append((mod, inp[0])))  # under no_grad: no graph to cut
             for m in model.encoders.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.train()(images)
    finally:
        for hook in hooks:
            hook.remove()
    weight_ms = input_ms = 0.0
    for index, (layer, layer_input) in enumerate(layers):
        layer_input = layer_input.clone().requires_grad_()
        output = layer(layer_input)
        grad = torch.randn_like(output)
        params = [p for p in layer.parameters()]
        weight_ms += _time_ms(lambda: torch.autograd.grad(output, params, grad, retain_graph=True), reps)
        if index > 0:
            input_ms += _time_ms(lambda: torch.autograd.grad(output, layer_input, grad, retain_graph=True), reps)
    return {"weight_grad_ms": weight_ms, "input_grad_ms": input_ms, "floor": weight_ms / (weight_ms + input_ms)}


def lean_memory_floor(strategy: Lean, images: Tensor, labels: Tensor) -> dict[str, float]:
    """The largest activation memory (MiB, gradients excluded) one block needs on its own: the
    forward of that block with autograd plus its backward from dL/dm_i.

    Whole-block recomputation can't take the activation peak below this figure (plus the kept block
    inputs): it shows how far below ``bp`` lean memory goes on a backbone without
    ``train.lean_segments``, which recomputes a block over micro-batches to go below it.
    """
    model = strategy.model.train()
    model.zero_grad(set_to_none=True)
    _, loss, kept = strategy.forward_loss(images, labels)
    loss.backward()
    peaks = []
    for block in kept:
        modules = (model.encoders[block.modality].blocks[block.index], model.block_readouts(block.modality)[block.index])
        with batchnorm_stats_frozen(*modules), TensorMemoryMeter() as meter:
            strategy.recompute(block).backward(torch.ones_like(block.leaf))
        peaks.append(meter.peak_without(p.grad for p in model.parameters() if p.grad is not None) / 2**20)
        model.zero_grad(set_to_none=True)
    worst = max(range(len(peaks)), key=peaks.__getitem__)
    return {"block": worst, "block_mib": peaks[worst]}


def measure_backbone(backbone: str, modes: Sequence[str], option_sets: Sequence[dict[str, Any]], *, dataset: str,
                     batch_size: int, iters: int, warmup: int, width_mult: float, device: torch.device,
                     memory: bool = True, floor: bool = True, log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], dict[str, float] | None]:
    """Records (one per mode x option set) for one backbone, and its backward floor."""
    if dataset not in DATASET_SHAPES:
        raise ConfigError(f"unknown dataset '{dataset}' for the benchmark; valid: {', '.join(DATASET_SHAPES)}")
    in_shape, num_classes = DATASET_SHAPES[dataset]
    torch.manual_seed(0)
    images = torch.randn(batch_size, *in_shape, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    variants = [build_variant(backbone, mode, options, in_shape=in_shape, num_classes=num_classes, width_mult=width_mult, device=device)
                for options in option_sets for mode in modes
                if BENCH_MODES.get(mode, ("", ""))[1] == "lean" or all(options[k] == DEFAULT_OPTIONS[k] for k in LEAN_OPTIONS)]
    log(f"{backbone}: timing {len(variants)} variants x {iters} steps (batch {batch_size}, {device})")
    time_variants(variants, images, labels, iters=iters, warmup=warmup)
    records = []
    for variant in variants:
        record: dict[str, Any] = {
            "backbone": backbone, "mode": variant.mode, "label": variant.label, "options": variant.options,
            "dataset": dataset, "batch_size": batch_size, "width_mult": width_mult, "device": str(device),
            "params_m": count_parameters(variant.model)["total"] / 1e6, "amp": variant.strategy.amp,
        }
        record.update({key: statistics.median(values) for key, values in variant.times.items()})
        record["predict_ms"] = predict_ms(variant.model, images)
        if variant.model.ff is not None:
            record["predict_goodness_ms"] = predict_ms(variant.model, images, predictor="goodness")
        if memory:
            record["peak_memory_mib"], record["activation_mib"], record["memory_method"] = peak_step_memory(variant, images, labels)
        records.append(record)
    lean = next((v for v in variants if v.lean), None)
    if memory and lean is not None:
        lean_floor = lean_memory_floor(lean.strategy, images, labels)
        for record in records:
            if BENCH_MODES[record["mode"]][1] == "lean":
                record["lean_floor_block"], record["lean_floor_mib"] = lean_floor["block"], lean_floor["block_mib"]
    floor_figures = None
    if floor:
        bp = next((v for v in variants if v.mode == "bp"), variants[0])
        floor_figures = backward_floor(bp.model, images)
    _add_ratios(records)
    return records, floor_figures


def same_speed_options(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two variants ran with the same speed options, the lean-only ones aside (what ratios pair on)."""
    return {k: v for k, v in a.items() if k not in LEAN_OPTIONS} == {k: v for k, v in b.items() if k not in LEAN_OPTIONS}


def _add_ratios(records: list[dict[str, Any]]) -> None:
    """Ratios of every record to ``bp`` with the same options (when measured)."""
    for record in records:
        reference = next((r for r in records if r["mode"] == "bp" and same_speed_options(r["options"], record["options"])), None)
        if reference is None:
            continue
        for key in ("forward_ms", "backward_ms", "step_ms", "predict_ms", "peak_memory_mib", "activation_mib"):
            if key in record and reference.get(key):
                record[f"{key.removesuffix('_ms').removesuffix('_mib')}_vs_bp"] = record[key] / reference[key]


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The paper's cost columns (Tables 1-3) with ratios to bp beside each figure."""

    def cell(record: dict[str, Any], key: str, ratio: str, fmt: str) -> str:
        if key not in record:
            return "-"
        value = format(record[key], fmt)
        return f"{value} ({record[ratio]:.2f}x)" if ratio in record and record["mode"] != "bp" else value

    lines = ["| backbone | method | params (M) | memory (MiB) | activations (MiB) | forward (ms) | backward (ms) | optimizer (ms) | step (ms) "
             "| predict (ms) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        predict = cell(r, 'predict_ms', 'predict_vs_bp', '.1f')
        if "predict_goodness_ms" in r:  # Forward-Forward: its linear classifier / its C-pass goodness
            predict += f" / goodness {r['predict_goodness_ms']:.1f}"
        lines.append(
            f"| {r['backbone']} | {r['label']} | {r['params_m']:.2f} | {cell(r, 'peak_memory_mib', 'peak_memory_vs_bp', '.0f')} | "
            f"{cell(r, 'activation_mib', 'activation_vs_bp', '.0f')} | {cell(r, 'forward_ms', 'forward_vs_bp', '.1f')} | "
            f"{cell(r, 'backward_ms', 'backward_vs_bp', '.1f')} | {r['optimizer_ms']:.1f} | {cell(r, 'step_ms', 'step_vs_bp', '.1f')} | {predict} |"
        )
    return "\n".join(lines)
