"""Distributed runs that fail (gloo on CPU): a lost peer is told from a bug by torch's and gloo's own
errors, and leaves its traceback in the run folder."""

import os
import re
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
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
    from capsmm.run import launched

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
    mp.spawn(launched_worker, args=(free_port(), scenario, tmp_path), nprocs=2, join=True)
    seen = torch.load(tmp_path / "rank0.pt")
    assert seen["raised"] == PeerFailure.__name__, seen
    [log] = tmp_path.glob("capsmm-error-rank0-*.log")
    assert seen["message"].startswith("rank 0 lost its peers during all_reduce") and "--resume" in seen["message"]
    assert seen["message"].endswith(f"the traceback is in {log}")
    text = log.read_text()
    assert "Traceback" in text and "launched_worker" in text and re.search(cause, text), text  # gloo's own words, kept


def test_a_bug_in_a_distributed_run_surfaces_as_itself_with_its_traceback_in_the_run_folder(tmp_path):
    mp.spawn(launched_worker, args=(free_port(), "bug", tmp_path), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == {"raised": "RuntimeError", "message": BUG}
        [log] = tmp_path.glob(f"capsmm-error-rank{rank}-*.log")
        assert "Traceback" in log.read_text() and BUG in log.read_text()
