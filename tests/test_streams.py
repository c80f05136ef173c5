"""Random streams (capsmm.streams): one per (seed, purpose, index), never shared, and train.seed
reaching every draw of a run (subsets, replay memory, batches)."""

import itertools

import numpy as np
import pytest
import torch

import capsmm.incremental
from capsmm.config import DataConfig
from capsmm.data import BatchLoader, ModalSplit, load_image_dataset
from capsmm.incremental import IncrementalRunConfig, replay_memory, run_incremental
from capsmm.streams import Purpose, stream, stream_seed


def test_different_keys_never_share_a_stream():
    # the keys the old formulas mixed up (seed + epoch, seed * k + epoch) and the ones SeedSequence
    # would merge if an integer's 32-bit words were not kept apart (2**32 + 5 reads as the words 5, 1)
    values = [0, 1, 2, 7_919, 1_000_003, 2**32 - 1, 2**32, 2**32 + 1, 2**32 + 5]
    keys = list(itertools.product(values, list(Purpose), values))
    seeds = {stream_seed(*key) for key in keys}
    assert len(seeds) == len(keys)
    # the documented derivation, computed apart: each part as two 32-bit words (low first) into SeedSequence
    assert stream_seed(5, Purpose.BATCH_ORDER, 3) == int(np.random.SeedSequence([5, 0, 8, 0, 3, 0]).generate_state(1, np.uint64)[0])
    draws = {tuple(torch.randint(2**62, (4,), generator=stream(s, p, e)).tolist())
             for s, p, e in itertools.product(range(3), (Purpose.BATCH_ORDER, Purpose.PAIRING, Purpose.AUGMENTATION), range(3))}
    assert len(draws) == 27


def test_a_stream_key_outside_64_bits_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
        stream_seed(-1, Purpose.INIT)


def test_subsets_follow_the_seed():
    config = DataConfig(name="digits", train_subset=100, test_subset=20)
    first, again, other = (load_image_dataset(config, seed) for seed in (0, 0, 1))
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.test.images, again.test.images)
    assert not torch.equal(first.train.images, other.train.images) and not torch.equal(first.test.images, other.test.images)
    assert torch.bincount(other.train.labels, minlength=10).tolist() == [10] * 10  # still stratified


def test_no_epoch_of_one_seed_replays_an_epoch_of_another():
    # the old order seed * 1_000_003 + epoch gave seed 0's epoch 1_000_003 the order of seed 1's epoch 0
    def loader(seed):
        return BatchLoader(ModalSplit(torch.arange(40.0)[:, None], torch.arange(40) % 4), 8, shuffle=True, seed=seed)

    def order(source, epoch):
        return torch.cat([x for x, _ in source.epoch(epoch)]).flatten().tolist()

    assert order(loader(0), 1_000_003) != order(loader(1), 0)
    used = loader(1)
    order(used, 5)  # an epoch's order depends on (seed, epoch) alone, not on the epochs drawn before (resume)
    assert order(used, 0) == order(loader(1), 0) != order(loader(1), 1)


def replay_memories(tmp_path, monkeypatch, seed, data):
    """The replay memories a tiny two-task run of ``seed`` on ``data`` keeps (as images)."""
    kept = []

    def recording(*args, **kwargs):
        memory = replay_memory(*args, **kwargs)
        kept.append(memory.images)
        return memory

    monkeypatch.setattr(capsmm.incremental, "replay_memory", recording)
    monkeypatch.setattr(capsmm.incremental, "load_image_dataset", lambda *args: data)  # the same samples under both seeds
    config = IncrementalRunConfig()
    config.data.name, config.model.backbone, config.model.hidden = "digits", "mlp", 8
    config.train.epochs, config.train.seed, config.train.progress, config.train.device = 1, seed, False, "cpu"
    config.incremental.tasks, config.incremental.replay = 2, 3
    config.out = str(tmp_path / f"seed-{seed}")
    run_incremental(config, log=lambda _: None)
    return kept


def test_the_replay_memory_follows_the_seed(tmp_path, monkeypatch):
    data = load_image_dataset(DataConfig(name="digits", train_subset=200, test_subset=20))
    first, other = (replay_memories(tmp_path, monkeypatch, seed, data) for seed in (0, 1))
    assert len(first) == len(other) == 2 and all(len(m) == 15 for m in first + other)  # 3 per class of each task's 5 classes
    assert not any(torch.equal(a, b) for a, b in zip(first, other))
