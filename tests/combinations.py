"""The combination matrix: every mode x memory x amp x readout norm x frozen modality x parallel x
modality balancing (none; slice losses; OGM-GE gradient modulation, on a joint model of two encoders).

Each combination is either refused when its config is read (``validate()``, before any data), or
takes two training steps on a tiny model and is compared with its reference:

- ``standard`` in one process is the reference itself: the loss is finite, the trainable
  parameters move, a frozen modality's parameters and statistics do not;
- ``lean`` against ``standard`` in one process (same mode, amp, norm, frozen modality); so is
  ``lean-segments``, lean with ``train.lean_segments=3``: every block recomputed over 3 uneven
  micro-batches (its batch-norm path is compared in ``tests/test_lean.py``: this MLP's blocks have
  no batch norm, their readouts are not split);
- ``data`` (2 gloo ranks) against one process on the same global batch;
- ``blocks`` (2 gloo ranks, 1 or 2 micro-batches) against one process' ``standard`` step.

Each step is compared from the same parameters (the reference's are copied over after each step:
Adam turns last-bit differences into visible ones); gradients are compared as the norm of the
difference over the norm of the reference, per parameter, the largest over the model and the two
steps. ``python tests/combinations.py`` prints the measured matrix as the README's table.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import capsmm.modes  # noqa: E402
from capsmm import CAPModel, build_encoder  # noqa: E402
from capsmm.balance import attach_balance  # noqa: E402
from capsmm.config import MultimodalRunConfig, RunConfig, TrainConfig, set_value  # noqa: E402
from capsmm.distributed import DistContext  # noqa: E402
from capsmm.errors import ConfigError  # noqa: E402
from capsmm.strategies import build_strategy  # noqa: E402
from conftest import spawn_ranks  # noqa: E402

MODES = capsmm.modes.MODES  # bp, caps, caps-full, local and the layer-local peers
MEMORY = ("standard", "lean", "lean-segments")
#: ``train.lean_segments`` of the ``lean-segments`` combinations
SEGMENTS = 3
AMP = ("none", "bf16")
NORMS = ("batchnorm", "layernorm", "none")
FROZEN = (False, True)
PARALLEL = ("none", "data", "blocks-1", "blocks-2")
#: multimodal balancing: none, per-modality slice losses, OGM-GE (with a strong alpha, so that it scales and perturbs);
#: the default, slice_loss_weight=auto, resolves to slice losses or none (tests/test_multimodal_cli.py)
BALANCE = ("none", "slice", "ogm-ge")
BALANCE_KEYS = {"none": {"multimodal.slice_loss_weight": 0.0}, "slice": {"multimodal.slice_loss_weight": 0.5},
                "ogm-ge": {"multimodal.slice_loss_weight": 0.0, "multimodal.modulation": "ogm-ge", "multimodal.modulation_alpha": 2.0}}

BATCH, CLASSES, IN_SHAPE = 16, 5, (1, 8, 8)
#: relative gradient difference under which a combination counts as exact (float32 summation order)
EXACT = 1e-4


@dataclass(frozen=True)
class Combo:
    mode: str
    memory: str
    amp: str
    norm: str
    frozen: bool
    parallel: str
    balance: str = "none"
    batch: int = BATCH

    @property
    def world(self) -> int:
        return 1 if self.parallel == "none" else 2

    @property
    def micro_batches(self) -> int:
        return 2 if self.parallel == "blocks-2" else 1

    @property
    def id(self) -> str:
        balance = "" if self.balance == "none" else f"-{self.balance}"
        return f"b{self.batch}-{self.mode}-{self.memory}-amp_{self.amp}-{self.norm}-{'frozen' if self.frozen else 'single'}-{self.parallel}{balance}"

    @property
    def encoders(self) -> int:
        """A frozen modality extends a trained model by a second encoder; balancing needs two encoders."""
        return 2 if self.frozen or self.balance != "none" else 1

    def claim(self) -> str:
        """What the README claims when the combination is accepted: ``reference``, ``exact``, or
        ``approximate (why)``."""
        if self.parallel == "none" and self.memory == "standard":
            return "reference"
        where = {"data": "per rank", "blocks-2": "per micro-batch"}.get(self.parallel)
        if where and self.couples_samples:
            what = {"local-sim": "similarity matrix", "local-predsim": "similarity matrix", "dgl": "auxiliary batch norm"}.get(self.mode,
                                                                                                                       "batch statistics")
            return f"approximate ({what} {where})"
        if self.amp != "none":
            return "approximate (bf16 sums in another order)"
        return "exact"

    @property
    def couples_samples(self) -> bool:
        """Whether a step's loss couples the samples of a batch beyond a sum over them: batch norm in the
        readouts (CAP modes), a similarity matrix over the batch (local-sim, local-predsim), batch
        norm in the auxiliary networks (dgl)."""
        if self.mode in capsmm.modes.PEER_MODES:
            return self.mode in ("local-sim", "local-predsim", "dgl")
        return self.norm == "batchnorm"

    def expected_refusal(self) -> bool:
        """Which combinations the README says are refused (an independent statement of the rules)."""
        lean_without_cut = self.memory.startswith("lean") and self.mode in ("bp", "caps-full")
        blocks = self.parallel.startswith("blocks")
        peer_with_two_encoders = self.encoders > 1 and self.mode in capsmm.modes.PEER_MODES
        balance_without_global_head = self.balance != "none" and self.mode not in ("bp", "caps", "caps-full")
        ff_beyond_one_plain_process = self.mode == "ff" and (self.memory != "standard" or self.parallel != "none")
        return (lean_without_cut or peer_with_two_encoders or balance_without_global_head or ff_beyond_one_plain_process
                or (blocks and (self.encoders > 1 or self.memory != "standard" or self.mode == "caps-full")))


def all_combos(batch: int = BATCH) -> list[Combo]:
    return [Combo(*values, batch=batch) for values in itertools.product(MODES, MEMORY, AMP, NORMS, FROZEN, PARALLEL, BALANCE)]


def config_for(combo: Combo) -> Any:
    """The run config a user would write for ``combo`` (a joint image+audio model, extending a trained
    image model when frozen)."""
    memory = {"train.memory": "lean", "train.lean_segments": SEGMENTS} if combo.memory == "lean-segments" else {"train.memory": combo.memory}
    train = {"train.mode": combo.mode, **memory, "train.amp": combo.amp, "train.batch_size": combo.batch,
             "train.parallel": "blocks" if combo.parallel.startswith("blocks") else "data", "train.micro_batches": combo.micro_batches}
    if combo.encoders > 1:
        config = MultimodalRunConfig()
        settings = {**train, "model.readout_norm": combo.norm, **BALANCE_KEYS[combo.balance]}
        if combo.frozen:
            settings["multimodal.extend_from"] = "runs/trained-image-model"
    else:
        config = RunConfig()
        settings = {**train, "data.name": "digits", "model.readout_norm": combo.norm}
    for key, value in settings.items():
        set_value(config, key, value)
    return config


def refusal(combo: Combo) -> str | None:
    """What reading ``combo``'s config says, as under torchrun with ``combo.world`` ranks."""
    world = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = str(combo.world)
    try:
        config_for(combo).validate()
    except ConfigError as error:
        return str(error)
    finally:
        if world is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = world
    return None


def build(combo: Combo, dropout: float) -> tuple[CAPModel, Any, torch.Tensor, list[str]]:
    """The tiny model of ``combo`` (seeded), a batch, and the names of its frozen modalities."""
    torch.manual_seed(0)
    names = ["a", "b"] if combo.encoders > 1 else ["image"]

    def encoder() -> torch.nn.Module:
        return build_encoder("mlp", in_shape=IN_SHAPE, depth=4, hidden=32, dropout=dropout)

    first = names[:1] if combo.frozen else names  # a frozen modality: the trained model's, extended by the other
    model = CAPModel({name: encoder() for name in first}, {name: IN_SHAPE for name in first}, num_classes=CLASSES, mode=combo.mode,
                     pattern_width=16, readout_norm=combo.norm)
    frozen = names[:1] if combo.frozen else []
    if frozen:  # as multimodal.extend_from does: freeze the trained model, append a modality
        model.freeze()
        model.add_modality(names[1], encoder(), IN_SHAPE)
    generator = torch.Generator().manual_seed(1)
    x = {name: torch.randn(combo.batch, *IN_SHAPE, generator=generator) for name in names}
    y = torch.arange(combo.batch) % CLASSES
    return model.train(), (x if len(names) > 1 else x["image"]), y, frozen


def train_config(combo: Combo, memory: str | None = None, parallel: bool = True) -> TrainConfig:
    config = config_for(dataclasses.replace(combo, memory=memory or combo.memory)).train
    config.lr = 0.01
    if not parallel:
        config.parallel, config.micro_batches = "data", 1
    return config


def shard(inputs: Any, labels: torch.Tensor, rank: int, world: int) -> tuple[Any, torch.Tensor]:
    """Rank ``rank``'s equal share of a global batch (as :class:`capsmm.data.BatchLoader` deals it)."""
    local = len(labels) // world
    part = slice(rank * local, (rank + 1) * local)
    return ({k: v[part] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[part]), labels[part]


def relative_difference(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for name, grad in grads.items():
        ref = reference[name]
        worst = max(worst, ((grad.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)).item())
    return worst


def running_mean_difference(model: torch.nn.Module, reference: torch.nn.Module) -> float:
    """The largest absolute difference between the batch-norm running means of two models of one build."""
    means = dict(reference.named_buffers())
    return max(((b - means[n]).abs().max().item() for n, b in model.named_buffers() if n.endswith("running_mean")), default=0.0)


def gradients(model: torch.nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and (names is None or n in names)}


def compare(combo: Combo, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Two steps of ``combo``'s strategy against its reference; see the module docstring."""
    distributed = world > 1
    model, x, y, frozen = build(combo, dropout=0.0 if distributed else 0.1)
    reference_model, _, _, _ = build(combo, dropout=0.0 if distributed else 0.1)
    context = DistContext(rank, world, rank)
    strategy = build_strategy(model, train_config(combo), torch.device("cpu"), context)
    reference_memory = combo.memory if combo.parallel == "data" else "standard"
    reference = build_strategy(reference_model, train_config(combo, memory=reference_memory, parallel=False), torch.device("cpu"))
    if combo.balance != "none":  # as fit_multimodal does, with the settings the run config makes
        for each in (strategy, reference):
            attach_balance(each, config_for(combo).multimodal.balance(), seed=0)
    frozen_before = {n: t.clone() for n, t in [*model.named_parameters(), *model.named_buffers()]
                     if n.split(".")[1] in frozen or n == "head.chunks.0" and frozen}
    start = {n: p.clone() for n, p in model.named_parameters()}
    owned = {n for n, p in model.named_parameters() if any(p is q for q in strategy.trainable_parameters())}
    differences, losses, running_means = [], [], []
    for step in range(2):
        torch.manual_seed(10 + step)
        local_x, local_y = shard(x, y, rank, world) if combo.parallel == "data" else (x, y)
        out = strategy.step(local_x, local_y)
        torch.manual_seed(10 + step)
        ref_out = reference.step(x, y)
        if out.loss is not None:
            losses.append(out.loss.item())
        if combo.memory != "standard" or distributed:
            differences.append(relative_difference(gradients(model, owned), gradients(reference_model, owned)))
            running_means.append(running_mean_difference(model, reference_model))
            if combo.parallel != "data" and out.loss is not None:
                differences.append(abs(out.loss.item() - ref_out.loss.item()) / abs(ref_out.loss.item()))
            with torch.no_grad():
                for p, q in zip(model.parameters(), reference_model.parameters()):
                    p.copy_(q)
    moved = any(not torch.equal(p, start[n]) for n, p in model.named_parameters() if n in owned)
    frozen_kept = all(torch.equal(t, frozen_before[n]) for n, t in [*model.named_parameters(), *model.named_buffers()] if n in frozen_before)
    return {"difference": max(differences, default=0.0), "losses": losses, "moved": moved, "frozen_kept": frozen_kept,
            "trains": bool(owned), "running_mean_difference": max(running_means, default=0.0)}


def _worker(rank: int, world: int, port: int, combos: list[Combo], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {combo.id: compare(combo, rank, world) for combo in combos}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(combos: list[Combo]) -> dict[Combo, dict[str, Any]]:
    """Every distributed combination in one launch of 2 gloo ranks; per combination, the worst of the ranks."""
    with tempfile.TemporaryDirectory() as folder:
        spawn_ranks(_worker, (2, _free_port(), combos, folder), nprocs=2)
        ranks = [json.loads((Path(folder) / f"rank{r}.json").read_text()) for r in range(2)]
    merged = {}
    for combo in combos:
        parts = [rank[combo.id] for rank in ranks]
        merged[combo] = {"difference": max(p["difference"] for p in parts), "losses": [l for p in parts for l in p["losses"]],
                         "moved": all(p["moved"] for p in parts if p["trains"]), "frozen_kept": all(p["frozen_kept"] for p in parts),
                         "trains": any(p["trains"] for p in parts),
                         "running_mean_difference": max(p["running_mean_difference"] for p in parts)}
    return merged


def measure(combos: list[Combo]) -> dict[Combo, dict[str, Any]]:
    """Each of ``combos`` refused or measured: the single-process ones here, the distributed ones in one
    launch of 2 gloo ranks (none when there are none)."""
    outcomes: dict[Combo, dict[str, Any]] = {}
    distributed = []
    for combo in combos:
        reason = refusal(combo)
        if reason:
            outcomes[combo] = {"refused": reason}
        elif combo.world > 1:
            distributed.append(combo)
        else:
            outcomes[combo] = compare(combo)
    if distributed:
        outcomes.update(run_distributed(distributed))
    return outcomes


def markdown(by_batch: dict[int, dict[Combo, dict[str, Any]]]) -> str:
    """The matrix grouped by (memory, parallel, balance, outcome): how many combinations and modes, and
    the largest relative gradient difference measured, fp32 and bf16, at each global batch."""
    batches = sorted(by_batch)
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for batch in batches:
        for combo, outcome in by_batch[batch].items():
            claim = f"refused: {outcome['refused']}" if "refused" in outcome else combo.claim()
            group = groups.setdefault((combo.memory, combo.parallel, combo.balance, claim), {"combos": set(), "modes": set(), "worst": {}})
            group["combos"].add(dataclasses.replace(combo, batch=BATCH))
            group["modes"].add(combo.mode)
            if "difference" in outcome:
                key = (batch, combo.amp)
                group["worst"][key] = max(group["worst"].get(key, 0.0), outcome["difference"])
    head = " | ".join(f"batch {b}: fp32 / bf16" for b in batches)
    lines = [f"| memory | parallel | balance | outcome | combinations | modes | {head} |", "|---|---|---|---|---|---|" + "---|" * len(batches)]
    order = {name: i for i, name in enumerate(BALANCE)}
    for (memory, parallel, balance, claim), group in sorted(groups.items(), key=lambda item: (item[0][3].startswith("refused"),
                                                                                              order[item[0][2]], item[0])):
        if claim.startswith(("refused", "reference")):
            cells = ["-"] * len(batches)
        else:
            cells = [" / ".join(f"{group['worst'][(b, amp)]:.0e}" if (b, amp) in group["worst"] else "-" for amp in AMP) for b in batches]
        modes = ", ".join(m for m in MODES if m in group["modes"])
        lines.append(f"| {memory} | {parallel} | {balance} | {claim} | {len(group['combos'])} | {modes} | {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [BATCH]  # global batches to measure at (the test uses 16)
    print(f"MLP 4 x 32 units, pattern width 16, 5 classes; distributed: 2 gloo ranks; global batches {sizes}")
    print(markdown({size: measure(all_combos(size)) for size in sizes}))
