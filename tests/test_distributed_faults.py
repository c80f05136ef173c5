"""Distributed runs that fail (gloo on CPU): a lost peer is told from a bug by torch's and gloo's own
errors, and leaves its traceback in the run folder; a non-finite loss on one rank stops every rank
at the same step. (A checkpoint resumed by another number of ranks than wrote it: the resume tests of
tests/test_distributed.py.)"""

import os
import re
import time

import pytest
import torch
import torch.distributed as dist
from conftest import spawn_ranks
from test_distributed import free_port

from capsmm.distributed import PeerFailure, communicate, is_peer_failure

# ---------------------------------------------------------------------------- 4: what a lost peer is

def test_a_bug_whose_message_mentions_gloo_or_a_timeout_is_not_a_lost_peer():
    def buggy():
        raise RuntimeError("gloo backend: timeout must be a positive number")

    assert not is_peer_failure(RuntimeError("connection timeout: the peer list is empty"))
    with pytest.raises(RuntimeError, match="timeout must be a positive number") as info:
        communicate(buggy)
    assert type(info.value) is RuntimeError  # itself, not "lost its peers"
    assert is_peer_failure(dist.DistNetworkError("x")) and is_peer_failure(dist.DistStoreError("x"))


BUG = "bug: the gloo timeout of the data loader must be positive"


def launched_worker(rank, port, scenario, out_dir):
    """A 2-rank launched run in which rank 1 dies (``killed``) or falls silent (``silent``) before an
    all-reduce, or both ranks hit a bug whose message mentions gloo and a timeout (``bug``);
    records what each surviving rank's run ended with."""
    from capsmm.config import TrainConfig
    from capsmm.training import launched

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        with launched(TrainConfig(device="cpu", dist_timeout=3), out_dir):
            communicate(dist.all_reduce, torch.ones(2))  # both ranks have joined
            if scenario == "bug":
                raise RuntimeError(BUG)
            if rank == 1:
                time.sleep(0 if scenario == "killed" else 8)
                os._exit(0)  # no goodbye, as with SIGKILL
            communicate(dist.all_reduce, torch.ones(2))
    except Exception as error:  # noqa: BLE001 - what the run ended with is what the test looks at
        torch.save({"raised": type(error).__name__, "message": str(error)}, out_dir / f"rank{rank}.pt")


@pytest.mark.parametrize("scenario, cause", [("killed", "Connection (closed|reset) by peer"), ("silent", "Timed out waiting")])
def test_a_dead_or_silent_peer_is_a_lost_peer_with_its_traceback_in_the_run_folder(scenario, cause, tmp_path):
    spawn_ranks(launched_worker, (free_port(), scenario, tmp_path), nprocs=2)
    seen = torch.load(tmp_path / "rank0.pt")
    assert seen["raised"] == PeerFailure.__name__, seen
    [log] = tmp_path.glob("capsmm-error-rank0-*.log")
    assert seen["message"].startswith("rank 0 lost its peers during all_reduce") and "--resume" in seen["message"]
    assert seen["message"].endswith(f"the traceback is in {log}")
    text = log.read_text()
    assert "Traceback" in text and "launched_worker" in text and re.search(cause, text), text  # gloo's own words, kept


def test_a_bug_in_a_distributed_run_surfaces_as_itself_with_its_traceback_in_the_run_folder(tmp_path):
    spawn_ranks(launched_worker, (free_port(), "bug", tmp_path), nprocs=2)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == {"raised": "RuntimeError", "message": BUG}
        [log] = tmp_path.glob(f"capsmm-error-rank{rank}-*.log")
        assert "Traceback" in log.read_text() and BUG in log.read_text()


# ---------------------------------------------------------------------------- 5: a non-finite loss on one rank

def nan_worker(rank, port, out_dir):
    """A data-parallel run whose rank 1 gets a NaN loss at its third step (rank 0's batches are fine)."""
    from capsmm.config import build_runs
    from capsmm.errors import TrainingError
    from capsmm.training import train
    from capsmm.strategies import plain

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if rank == 1:
        original, calls = plain.training_loss, []

        def poisoned(output, targets):
            calls.append(1)
            return original(output, targets) * (float("nan") if len(calls) == 3 else 1.0)

        plain.training_loss = poisoned
    overrides = [("data.name", "digits"), ("train.batch_size", 64), ("data.train_subset", 256), ("data.test_subset", 100),
                 ("train.device", "cpu"), ("model.hidden", 64), ("train.progress", False), ("train.epochs", 1),
                 ("train.dist_timeout", 30.0), ("out", str(out_dir / "run"))]
    [config] = build_runs(None, overrides)
    try:
        train(config, log=lambda _: None)
        seen = {"raised": None}
    except TrainingError as error:
        seen = {"raised": type(error).__name__, "message": str(error)}
    torch.save({**seen, "at": time.time()}, out_dir / f"rank{rank}.pt")


def test_a_nan_loss_on_one_rank_stops_every_rank_at_the_same_step_with_one_line(tmp_path):
    spawn_ranks(nan_worker, (free_port(), tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["raised"] == ranks[1]["raised"] == "TrainingError", ranks
    assert ranks[0]["message"] == ranks[1]["message"]
    assert "loss became nan in epoch 1 (by step 3)" in ranks[0]["message"] and "\n" not in ranks[0]["message"]
    assert abs(ranks[0]["at"] - ranks[1]["at"]) < 10, "the other rank waited for train.dist_timeout (30 s)"
