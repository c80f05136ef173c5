"""Faults survived: a training process killed with SIGKILL at random moments (mid-epoch and while it
writes a checkpoint) and resumed each time ends bit-identical to an uninterrupted run; checkpoints
that are truncated or corrupted are refused with one line."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from capsmm.checkpoint import TEMPORARY_PREFIX, load_checkpoint, save_checkpoint
from capsmm.errors import CheckpointError
from conftest import ROOT

EPOCHS = 8  # enough epochs that 4 kills (2 mid-write) land before the run ends, at ~0.4 s an epoch
RUN = ["--dataset", "digits", "--device", "cpu", "--batch-size", "64", "--epochs", str(EPOCHS), "--no-progress",
       "--set", "model.hidden=1024", "--set", "model.pattern_width=256", "--set", "data.augment=true"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start(out):
    command = [sys.executable, str(ROOT / "scripts" / "train_vision.py"), *RUN, "--out", str(out), "--resume"]
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def model_tensors(out):
    return {k: v for k, v in load_file(out / "checkpoint.safetensors").items() if k.startswith(("state.model", "state.optimizer"))}


def epochs_done(out):
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def temporaries(out):
    return [p for p in out.iterdir() if p.name.startswith(TEMPORARY_PREFIX)] if out.exists() else []


def kill_mid_epoch(out, rng):
    """Kill once training is under way (after at least one epoch), at a random moment of an epoch."""
    process = start(out)
    target = epochs_done(out) + 1
    while epochs_done(out) < target and process.poll() is None:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.4))
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode


def kill_mid_write(out):
    """Kill the moment a checkpoint's temporary file appears (the write has begun, the rename not yet)."""
    process = start(out)
    while process.poll() is None:
        if temporaries(out):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return bool(temporaries(out))  # it died mid-write: the temporary file is still there
        time.sleep(0.0005)
    return False


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    done = start(straight)
    assert done.wait(timeout=300) == 0, done.stderr.read()[-2000:]
    reference = model_tensors(straight)

    rng = random.Random(0)
    killed = tmp_path / "killed"
    kills, mid_write = 0, 0
    for round_ in range(12):  # a kill mid-epoch may land one or two epochs on (epochs take well under a second)
        if epochs_done(killed) >= EPOCHS - 1 or (kills >= 4 and mid_write >= 2):
            break
        if round_ % 2 == 0:
            kill_mid_epoch(killed, rng)
            kills += 1
        elif kill_mid_write(killed):
            kills += 1
            mid_write += 1
    assert kills >= 4 and mid_write >= 2, (kills, mid_write)
    last = start(killed)
    assert last.wait(timeout=300) == 0, last.stderr.read()[-2000:]
    assert temporaries(killed) == [], "a resume leaves no temporary file behind"
    resumed = model_tensors(killed)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference), "resumed run differs from the uninterrupted one"
    assert epochs_done(killed) == EPOCHS


def test_a_truncated_or_corrupted_checkpoint_is_refused_in_one_line(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"weights": torch.arange(1000, dtype=torch.float32), "epoch": 3})
    intact = path.read_bytes()
    flipped = bytearray(intact)
    flipped[-50] ^= 0x01  # one bit of one weight
    for damaged, reason in ((intact[: len(intact) // 2], "unreadable"), (bytes(flipped), "corrupted")):
        path.write_bytes(damaged)
        with pytest.raises(CheckpointError, match=reason) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    path.write_bytes(intact)
    assert load_checkpoint(path)["epoch"] == 3


def test_checkpoints_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.safetensors", {"a": torch.ones(2)})
    finally:
        os.umask(old)
    assert (tmp_path / "c.safetensors").stat().st_mode & 0o777 == 0o644
