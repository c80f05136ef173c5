"""torch.distributed on CPU (gloo): data-parallel equivalence, block-parallel CAPs gradients and traffic,
a dying rank, and resuming a data- or block-parallel run (under as many ranks as wrote it; one process
or 3 ranks are refused). Runs launch through torchrun itself (``torchrun``: the data-parallel fixture, the
multimodal run) or as torchrun would start their ranks (``start_ranks``: one process less each)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from capsmm import build_model, training_loss
from capsmm.config import TrainConfig
from capsmm.distributed import DistContext
from capsmm.strategies import build_strategy
from capsmm.strategies.block_parallel import split_blocks
from conftest import ROOT, load_script, run_script, spawn_ranks

TINY = ["--dataset", "digits", "--batch-size", "64", "--train-subset", "256", "--test-subset", "100", "--device", "cpu",
        "--set", "model.hidden=64", "--set", "model.dropout=0", "--set", "model.readout_norm=layernorm", "--set", "train.amp=none", "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, n=2, timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               str(ROOT / "scripts" / "train_vision.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


TRAIN_VISION = str(ROOT / "scripts" / "train_vision.py")


def start_ranks(args, world):
    """``world`` processes of ``train_vision.py args`` joined as torchrun would join them."""
    common = {**os.environ, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen([sys.executable, TRAIN_VISION, *args], env={**common, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]


def finish(ranks):
    """(exit status, stderr) of every rank, once all have ended."""
    errors = [rank.communicate(timeout=300)[1] for rank in ranks]
    return [(rank.returncode, err) for rank, err in zip(ranks, errors)]


def train_ranks(args, world=2):
    """Train ``train_vision.py args`` on ``world`` ranks to the end; every rank must exit 0."""
    ended = finish(start_ranks(args, world))
    assert [code for code, _ in ended] == [0] * world, ended[0][1][-2000:]


def assert_resume_refused(args, out, parallel, world, capsys):
    """Resuming the run in ``out``, written by 2 ranks, with ``world`` ranks (1: in this process): each
    exits 2 with one line that says how the checkpoint was written and how to resume it; the
    checkpoint is untouched."""
    checkpoint = (out / "checkpoint.safetensors").read_bytes()
    resume = [*args, "--out", str(out), "--resume"]
    if world == 1:
        code, _, err = run_script(load_script("train_vision").main, resume, capsys)
        ended = [(code, err)]
    else:
        ended = finish(start_ranks(resume, world))
    this_run = "1 process" if world == 1 else f"{world} ranks"
    for code, err in ended:
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-2000:]
        assert f"written by 2 ranks (train.parallel={parallel}), this run has {this_run}" in err
        assert "torchrun --nproc_per_node 2" in err and "--resume" in err
    assert (out / "checkpoint.safetensors").read_bytes() == checkpoint


def model_tensors(path):
    return {k: v for k, v in load_file(path / "checkpoint.safetensors").items() if k.startswith("state.model")}


@pytest.fixture(scope="module")
def ddp_two_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = torchrun([*TINY, "--epochs", "2", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_data_parallel_equals_one_process_on_the_same_global_batches(ddp_two_epochs, tmp_path):
    from capsmm.config import build_runs
    from capsmm.training import train

    flags = dict(zip(TINY[::2], TINY[1::2]))
    overrides = [("data.name", "digits"), ("train.batch_size", 64), ("data.train_subset", 256), ("data.test_subset", 100),
                 ("train.device", "cpu"), ("model.hidden", 64), ("model.dropout", 0.0), ("model.readout_norm", "layernorm"),
                 ("train.progress", False), ("train.epochs", 2), ("out", str(tmp_path))]
    assert flags["--batch-size"] == "64"
    [config] = build_runs(None, overrides)
    train(config, log=lambda _: None)
    single, parallel = model_tensors(tmp_path), model_tensors(ddp_two_epochs)
    assert single.keys() == parallel.keys()
    for key in single:
        torch.testing.assert_close(parallel[key], single[key], rtol=1e-4, atol=1e-6, msg=key)
    # only rank 0 wrote: one metrics line per epoch
    assert len((ddp_two_epochs / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_resumed_data_parallel_run_continues_from_its_checkpoint_under_its_own_number_of_ranks(ddp_two_epochs, tmp_path, capsys):
    train_ranks([*TINY, "--epochs", "1", "--out", str(tmp_path)])
    assert_resume_refused([*TINY, "--epochs", "2"], tmp_path, "data", 1, capsys)
    train_ranks([*TINY, "--epochs", "2", "--out", str(tmp_path), "--resume"])
    resumed, straight = model_tensors(tmp_path), model_tensors(ddp_two_epochs)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-7, msg=key)


def test_a_dead_rank_stops_the_others_with_one_line(tmp_path):
    ranks = start_ranks([*TINY, "--epochs", "200", "--set", "train.dist_timeout=20", "--out", str(tmp_path)], 2)
    deadline = time.time() + 120
    while not (tmp_path / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (tmp_path / "checkpoint.safetensors").exists(), "training never started"
    ranks[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    _, err = ranks[0].communicate(timeout=90)
    # docs/strategies.md: the others stop within train.dist_timeout (20 s here); 10 s more for the process to write its
    # crash log and exit (a killed peer is seen at once: gloo reads the closed connection)
    assert time.time() - killed_at < 20 + 10
    assert ranks[0].returncode not in (0, None)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and "Traceback" not in err, err[-2000:]
    assert "lost its peers" in lines[-1] and "--resume" in lines[-1]


# ---------------------------------------------------------------------------- block-parallel

SPEC = dict(backbone="mlp", num_classes=5, in_shape=(1, 8, 8), depth=4, hidden=32, dropout=0.0, pattern_width=16,
            readout_norm="layernorm")


def batch():
    torch.manual_seed(1)
    return torch.randn(12, 1, 8, 8), torch.arange(12) % 5


def block_parallel_worker(rank, world, port, kind, micro_batches, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    spec = dict(SPEC)
    mode = "caps" if kind == "caps" else "bp"
    model = build_model(spec.pop("backbone"), mode=mode, **spec)
    train = TrainConfig(amp="none", mode=mode, parallel="blocks", micro_batches=micro_batches)
    stage = build_strategy(model, train, torch.device("cpu"), DistContext(rank, world, rank))
    x, y = batch()
    loss, _ = stage.backward(x, y)
    loss = None if loss is None else loss.item()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    torch.save({"grads": grads, "traffic": vars(stage.traffic), "loss": loss, "own": list(stage.own)}, out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


def run_ranks(world, kind, micro_batches, tmp_path):
    spawn_ranks(block_parallel_worker, (world, free_port(), kind, micro_batches, tmp_path), nprocs=world)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def single_process_gradients(mode):
    torch.manual_seed(0)
    spec = dict(SPEC)
    model = build_model(spec.pop("backbone"), mode=mode, **spec)
    x, y = batch()
    loss = training_loss(model(x), y)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}, loss.item()


@pytest.mark.parametrize("world, micro_batches", [(2, 1), (4, 3)])
def test_block_parallel_caps_gradients_equal_single_process_caps(world, micro_batches, tmp_path):
    reference, reference_loss = single_process_gradients("caps")
    ranks = run_ranks(world, "caps", micro_batches, tmp_path)
    covered = set()
    for rank in ranks:
        for name, grad in rank["grads"].items():
            torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)
            covered.add(name)
    assert covered == set(reference), "every parameter is trained on exactly one rank"
    assert ranks[-1]["loss"] == pytest.approx(reference_loss, rel=1e-5)
    # traffic, counted from tensor sizes: activations forward, patterns to the head, dL/dm back; never activation gradients
    batch_size, width, hidden, floats = 12, 16, 32, 4
    for r, rank in enumerate(ranks):
        traffic = rank["traffic"]
        assert traffic["activation_grads"] == 0
        assert traffic["activations"] == (0 if r == world - 1 else batch_size * hidden * floats)
        assert traffic["patterns"] == (0 if r == world - 1 else len(rank["own"]) * batch_size * width * floats)
    head_blocks = len(ranks[-1]["own"])
    assert ranks[-1]["traffic"]["pattern_grads"] == (4 - head_blocks) * batch_size * width * floats


def test_block_parallel_training_equals_one_process_and_resumes_under_its_own_number_of_ranks(tmp_path, capsys):
    from capsmm.config import build_runs
    from capsmm.training import train

    block_parallel = [*TINY, "--set", "model.depth=4", "--set", "train.micro_batches=2", "--set", "train.parallel=blocks"]
    train_ranks([*block_parallel, "--epochs", "1", "--out", str(tmp_path / "blocks")])
    assert_resume_refused([*block_parallel, "--epochs", "2"], tmp_path / "blocks", "blocks", 3, capsys)
    train_ranks([*block_parallel, "--epochs", "2", "--resume", "--out", str(tmp_path / "blocks")])
    overrides = [("data.name", "digits"), ("train.batch_size", 64), ("data.train_subset", 256), ("data.test_subset", 100),
                 ("train.device", "cpu"), ("model.hidden", 64), ("model.depth", 4), ("model.dropout", 0.0),
                 ("model.readout_norm", "layernorm"), ("train.progress", False), ("train.epochs", 2), ("out", str(tmp_path / "one"))]
    [config] = build_runs(None, overrides)
    single = train(config, log=lambda _: None)
    blocks, one = model_tensors(tmp_path / "blocks"), model_tensors(tmp_path / "one")
    assert blocks.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(blocks[key], one[key], rtol=1e-4, atol=1e-6, msg=key)
    import json
    metrics = [json.loads(line) for line in (tmp_path / "blocks" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[-1]["test_error"] == pytest.approx(single["test_error"], abs=1e-9)


def test_pipeline_bp_matches_single_process_bp_and_sends_activation_gradients(tmp_path):
    reference, _ = single_process_gradients("bp")
    ranks = run_ranks(2, "bp", 2, tmp_path)
    for rank in ranks:
        for name, grad in rank["grads"].items():
            torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)
    assert ranks[1]["traffic"]["activation_grads"] == ranks[0]["traffic"]["activations"] == 12 * 32 * 4


def test_split_blocks():
    assert split_blocks(8, 3) == [range(0, 3), range(3, 6), range(6, 8)]
    with pytest.raises(Exception, match="each rank needs at least one block"):
        split_blocks(2, 3)


def test_multimodal_training_under_torchrun_is_data_parallel_and_rank_0_writes(tmp_path):
    from test_audio import write_fsdd

    write_fsdd(tmp_path / "fsdd", speakers=("ann", "bob"), digits=10, takes=8)
    args = ["--image-dataset", "digits", "--audio-dataset", "fsdd", "--audio-root", str(tmp_path), "--epochs", "2",
            "--batch-size", "32", "--device", "cpu", "--no-progress", "--set", "image_model.hidden=32", "--set", "image_model.depth=2",
            "--set", "audio_model.width_mult=0.25", "--set", "model.pattern_width=32", "--set", "audio.duration=0.25",
            "--set", "image.train_subset=200", "--set", "image.test_subset=50", "--out", str(tmp_path / "run")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "scripts" / "train_multimodal.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("-> ") == 1, "only rank 0 prints the run's first line"
    assert "x 2 ranks" in result.stdout
    import json
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]  # one writer
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["test_error_by_modality"]) == {"audio", "image", "audio+image"}
