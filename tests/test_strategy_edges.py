"""Reachable edges of the parallel strategies (issue 17): small last batches cut into micro-batches
or rank shares, block-parallel checkpoints, and diagnostics next to collective layers."""

import datetime

import pytest
import torch
import torch.distributed as dist
from test_distributed import SPEC, free_port

from capsmm import build_model, training_loss
from capsmm.config import TrainConfig, build_runs
from capsmm.distributed import DistContext
from capsmm.errors import ConfigError
from capsmm.strategies import Setup, build_strategy, check_setup
from conftest import spawn_ranks

#: the last batch of an epoch of the digits' 1437 training samples in batches of 64
LAST_BATCH = 1437 % 64


def init_gloo(rank, world, port, timeout_s=60):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def last_batch():
    torch.manual_seed(2)
    return torch.randn(LAST_BATCH, 1, 8, 8), torch.arange(LAST_BATCH) % 5


def caps_model(norm):
    torch.manual_seed(0)
    spec = dict(SPEC, readout_norm=norm)
    return build_model(spec.pop("backbone"), mode="caps", **spec)


# ---------------------------------------------------------------------------- micro-batches and rank shares

def micro_batch_worker(rank, world, port, out_dir):
    init_gloo(rank, world, port)
    x, y = last_batch()
    result = {}
    for norm in ("batchnorm", "layernorm"):
        model = caps_model(norm)
        stage = build_strategy(model, TrainConfig(amp="none", mode="caps", parallel="blocks", micro_batches=8), torch.device("cpu"),
                               DistContext(rank, world, rank))
        loss, _ = stage.backward(x, y)
        result[norm] = {"sizes": [len(piece) for _, piece, _ in stage.chunks(x, y)], "loss": None if loss is None else loss.item(),
                        "grads": {name: p.grad for name, p in model.named_parameters() if p.grad is not None}}
    torch.save(result, out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_block_parallel_cuts_a_29_sample_last_batch_into_8_micro_batches_of_at_least_2(tmp_path):
    """1437 samples in batches of 64 end with 29; chunk(8) cut it 7 x 4 + 1 and batch norm refused the 1."""
    spawn_ranks(micro_batch_worker, (2, free_port(), tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["batchnorm"]["sizes"] == [4, 4, 4, 4, 4, 3, 3, 3]
    assert ranks[1]["batchnorm"]["loss"] is not None and torch.isfinite(torch.tensor(ranks[1]["batchnorm"]["loss"]))
    # per-sample readout norms: the uneven split still gives one process' gradient on the whole batch
    reference = caps_model("layernorm")
    x, y = last_batch()
    training_loss(reference(x), y).backward()
    covered = set()
    for rank in ranks:
        for name, grad in rank["layernorm"]["grads"].items():
            torch.testing.assert_close(grad, dict(reference.named_parameters())[name].grad, rtol=1e-4, atol=1e-6, msg=name)
            covered.add(name)
    assert covered == {name for name, _ in reference.named_parameters()}


def test_block_parallel_refuses_micro_batches_of_one_sample():
    setup = {"modes": ("caps",), "parallel": "blocks", "world": 2, "micro_batches": 8}
    check_setup(Setup(**setup, batch_size=16))
    with pytest.raises(ConfigError, match=r"train.micro_batches \(8\) must be at most half train.batch_size \(15\)"):
        check_setup(Setup(**setup, batch_size=15))


def test_data_parallel_refuses_a_global_batch_that_leaves_a_rank_one_sample(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    [config] = build_runs(None, [("data.name", "digits"), ("train.batch_size", 2), ("train.device", "cpu")])
    with pytest.raises(ConfigError, match="leaves each of 2 ranks one sample.*at least 4") as refused:
        config.validate()
    assert "\n" not in str(refused.value)
    [config] = build_runs(None, [("data.name", "digits"), ("train.batch_size", 4), ("train.device", "cpu")])
    config.validate()


# ---------------------------------------------------------------------------- block-parallel checkpoints

def checkpoint_worker(rank, world, port, out_dir):
    init_gloo(rank, world, port)
    model = caps_model("layernorm")
    stage = build_strategy(model, TrainConfig(amp="none", mode="caps", parallel="blocks"), torch.device("cpu"), DistContext(rank, world, rank))
    x, y = last_batch()
    stage.step(x, y)  # Adam state to checkpoint
    torch.save({"state": stage.state_dict(), "optimizer": stage.optimizer.state_dict()}, out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


def tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
    return [t for item in items for t in tensors_in(item)]


def test_block_parallel_checkpoint_state_is_gathered_to_rank_0_only(tmp_path):
    spawn_ranks(checkpoint_worker, (2, free_port(), tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[1]["state"] == {"model": {}, "optimizer": []}, "rank 1 writes no checkpoint: it receives nothing"
    gathered = ranks[0]["state"]
    assert set(gathered["model"]) == set(caps_model("layernorm").state_dict())
    assert len(gathered["optimizer"]) == 2
    for rank, optimizer in zip(ranks, gathered["optimizer"]):  # each rank's own Adam state, as it holds it
        for sent, held in zip(tensors_in(optimizer), tensors_in(rank["optimizer"]), strict=True):
            torch.testing.assert_close(sent, held, rtol=0, atol=0)
    assert {t.device.type for t in tensors_in(gathered)} == {"cpu"}


def test_gathered_state_is_moved_to_the_cpu_first():
    """A pickled CUDA tensor unpickles on the sender's GPU: the gather sends CPU tensors (checked on
    fake CUDA tensors, so that it runs without a GPU)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from capsmm.distributed import gather_to_main

    with FakeTensorMode():
        state = {"state": {0: {"step": torch.zeros((), device="cuda"), "exp_avg": torch.zeros(3, device="cuda")}},
                 "param_groups": [{"lr": 1e-3, "params": [0]}]}
        [gathered] = gather_to_main(DistContext(), (state,))
        assert [t.device.type for t in tensors_in(gathered)] == ["cpu", "cpu"]
        assert gathered[0]["param_groups"] == state["param_groups"]


# ---------------------------------------------------------------------------- diagnostics beside collective layers

class PooledBatchNorm1d(torch.nn.BatchNorm1d):
    """A CPU stand-in for SyncBatchNorm (whose kernels are CUDA-only): in training mode its forward
    is a collective over the ranks, as SyncBatchNorm's is."""

    def forward(self, x):
        if self.training:
            dist.all_reduce(x.detach().sum(0))
        return super().forward(x)


def pool_batchnorm(model):
    """What ``nn.SyncBatchNorm.convert_sync_batchnorm`` does, with the stand-in."""
    for module in model.modules():
        if type(module) is torch.nn.BatchNorm1d:
            module.__class__ = PooledBatchNorm1d
    return model


def diagnostics_worker(rank, world, port, out_dir):
    from capsmm.data import BatchLoader
    from capsmm.data.batches import ModalSplit
    from capsmm.trainer import Trainer

    init_gloo(rank, world, port, timeout_s=30)
    torch.nn.SyncBatchNorm.convert_sync_batchnorm = pool_batchnorm
    train = TrainConfig(amp="none", mode="caps", parallel="data", sync_batchnorm=True, diagnostics_every=1, epochs=1, batch_size=16, progress=False)
    strategy = build_strategy(caps_model("batchnorm"), train, torch.device("cpu"), DistContext(rank, world, rank))
    assert any(isinstance(m, PooledBatchNorm1d) for m in strategy.model.modules())
    x, y = last_batch()
    loaders = [BatchLoader(ModalSplit(x, y), 16, shuffle=shuffle, shard=strategy.batch_shard) for shuffle in (True, False)]
    trainer = Trainer(strategy, *loaders, out_dir / "run", run_config={"seed": 0}, summary={}, diagnostics_batch=(x[:20], y[:20]),
                      log=lambda _: None)
    trainer.fit()
    torch.save(trainer.history[-1].get("diagnostics"), out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_data_parallel_diagnostics_run_on_every_rank_beside_sync_batchnorm(tmp_path):
    """Diagnostics on rank 0 alone waited forever in SyncBatchNorm's collective (here the gloo timeout)."""
    spawn_ranks(diagnostics_worker, (2, free_port(), tmp_path), nprocs=2)
    figures = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert figures[0]["gradient_cosine"]
    assert figures[1] == figures[0], "every rank computes the same figures on the same batch"
