"""Shared fixtures: the real-data root, and loading the scripts as modules."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # pytest -n N: the cores are shared among the N workers
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True, scope="session")
def float32_unless_a_test_asks():
    """``train.amp`` defaults to ``auto``, bf16 on a CPU with AVX512-BF16 or AMX: the suite's exactness
    and learning claims are float32 claims, so in-process runs (and the session's shared fixtures)
    see a CPU without bf16 unless a test patches the capabilities itself. Runs in other processes
    that compare with in-process ones name ``train.amp=none``."""
    flags = {k: v for k, v in torch.cpu.get_capabilities().items() if "bf16" not in k}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cpu, "get_capabilities", lambda: flags)
        yield


def spawn_ranks(worker, args: tuple, nprocs: int) -> None:
    """``mp.spawn(worker, args, nprocs)`` with forked ranks: a forked rank inherits the imports of the
    test process (torch, capsmm, the test module) where a spawned one imports them again, seconds per
    rank and most of a small distributed test's time. Sound here: CPU only, no process group in the
    parent, the parent's patches (float32 above) hold in the ranks as in the test, and each rank runs
    one thread (an OpenMP pool the parent used with more threads is not fork-safe)."""
    mp.start_processes(_one_thread_rank, args=(worker, args), nprocs=nprocs, join=True, start_method="fork")


def _one_thread_rank(rank: int, worker, args: tuple) -> None:
    torch.set_num_threads(1)
    worker(rank, *args)


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module, to call its ``main(argv)`` in-process."""
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"capsmm_script_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_script(main, argv, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a script's ``main(argv)``; argparse's usage errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``$CAPSMM_DATA`` holding Fashion-MNIST, or skip the test."""
    root = os.environ.get("CAPSMM_DATA")
    if not root:
        pytest.skip("CAPSMM_DATA is not set: real-data tests need it (e.g. CAPSMM_DATA=../shared/data)")
    raw = Path(root) / "torchvision" / "FashionMNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"Fashion-MNIST not found in {raw} (CAPSMM_DATA={root})")
    return Path(root)


@pytest.fixture(scope="session")
def fsdd_root() -> Path:
    """``$CAPSMM_DATA`` holding FSDD recordings, or skip the test."""
    root = os.environ.get("CAPSMM_DATA")
    if not root:
        pytest.skip("CAPSMM_DATA is not set: real-data tests need it (e.g. CAPSMM_DATA=../shared/data)")
    if not any((Path(root) / "fsdd" / "recordings").glob("*.wav")):
        pytest.skip(f"FSDD recordings not found in {Path(root) / 'fsdd' / 'recordings'}")
    return Path(root)
