"""Every random stream of a run, derived from ``(seed, purpose, index)`` in one place.

Ad-hoc formulas such as ``seed + epoch`` or ``seed * 7919 + epoch`` collide: one purpose's epoch
``e`` of seed ``s`` is another purpose's epoch ``e'`` of seed ``s'``, so two supposedly independent
draws (a run's batch order and another run's pairing, a task's order and the next seed's) come out
identical. Here the key ``(seed, purpose, index)`` goes, as six fixed-width 32-bit words, into
numpy's :class:`~numpy.random.SeedSequence`, which hashes it into a 64-bit seed: distinct keys give
distinct streams (barring a 64-bit hash collision). ``index`` numbers the streams of one purpose:
the epoch, or the task, the rank, the corruption. A stream depends on nothing else, so a resumed
run redraws exactly the streams it drew before.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

_WORD = 2**64

#: the version of this derivation, written into checkpoints: a run whose checkpoint another one drew
#: (or none: before this module) would continue on other batches, so it is not resumed
STREAMS_VERSION = 1


class Purpose(IntEnum):
    """What a stream is drawn for. The values are part of every stream's key: never reuse or renumber one."""

    INIT = 1                #: model initialisation (the global RNG, before training)
    DROPOUT = 2             #: the global RNG during training (dropout masks); index: the rank
    TRAIN_SUBSET = 3        #: the stratified ``data.train_subset`` (the same rows for every modality of one data set)
    TEST_SUBSET = 4         #: the stratified ``data.test_subset``
    DIAGNOSTICS = 5         #: the fixed stratified test batch the diagnostics read
    REPLAY = 6              #: the replay memory of a class-incremental run; index: the task whose classes it keeps
    TASK = 7                #: the loader seed of a class-incremental task; index: the task
    BATCH_ORDER = 8         #: the shuffled order of an epoch's samples; index: the epoch
    PAIRING = 9             #: the same-class partners of an epoch (training, re-paired every epoch); index: the epoch
    FIXED_PAIRING = 10      #: the same-class partners of an evaluation loader (fixed)
    AUGMENTATION = 11       #: the augmentation of an epoch's batches; index: the epoch
    MODALITY_DROPOUT = 12   #: which batches keep one modality only; index: the epoch
    CORRUPTION = 13         #: a test-time corruption; index: the corrupted variant
    GRADIENT_CHECK = 14     #: the dropout masks shared by the caps and caps-full gradients of the diagnostics
    GRADIENT_NOISE = 15     #: OGM-GE's Gaussian noise on the encoders' gradients (the same on every rank); index: the epoch
    PROBE = 16              #: the stratified training samples a linear probe of an encoder is fitted on


def stream_seed(seed: int, purpose: Purpose, index: int = 0) -> int:
    """The 64-bit seed of the stream ``(seed, purpose, index)``; every part must be in [0, 2**64)."""
    key = (seed, int(purpose), index)
    if not all(0 <= part < _WORD for part in key):
        raise ValueError(f"a stream key (seed, purpose, index) takes integers in [0, 2**64), got {key}")
    # SeedSequence splits each integer into as many 32-bit words as it needs, so (2**32 + 5, 1, 2) and
    # (5, 2**32 + 1, 2) would both read 5, 1, 1, 2; two words per part keep distinct keys distinct.
    words = np.array(key, dtype=np.uint64).view(np.uint32)
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


def stream(seed: int, purpose: Purpose, index: int = 0) -> torch.Generator:
    """A CPU generator for the stream ``(seed, purpose, index)`` (see :func:`stream_seed`)."""
    return torch.Generator().manual_seed(stream_seed(seed, purpose, index))
