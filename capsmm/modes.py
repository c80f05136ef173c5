"""Training modes and mode schedules.

| mode            | gradient between blocks | objective                                                                  |
|-----------------|-------------------------|----------------------------------------------------------------------------|
| `caps`          | cut (stop-gradient)     | one global softmax-CE over prototype scores of the whole pattern           |
| `caps-full`     | kept                    | the same global loss                                                       |
| `bp`            | kept                    | softmax-CE over the last block's pattern only                              |
| `local`         | cut                     | sum over blocks of a per-block CE (own prototype slice)                    |
| `local-pred`    | cut                     | local-loss (Nøkland & Eidnes 2019): per block, CE of a linear decoder      |
| `local-sim`     | cut                     | local-loss: per block, MSE between similarity matrices of features/labels |
| `local-predsim` | cut                     | local-loss: (1 - beta) pred + beta sim                                     |
| `dgl`           | cut                     | DGL (Belilovsky et al. 2020): per block, CE of an auxiliary CNN/MLP        |
| `ff`            | cut                     | Forward-Forward (Hinton 2022): per block, goodness of positive vs negative |

A mode's *family* is the set of modules its model holds besides the backbone: CAP readouts and
prototypes (``cap``: caps, caps-full, local; ``cap-last``: bp, a readout on the last block only),
or a layer-local peer's auxiliary heads (one family each; :mod:`capsmm.peers`), or Forward-Forward's
classifier (:mod:`capsmm.ff`). Modes of one
family share their parameters, so a run may switch between them (a schedule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Mode:
    """What a mode asks of a model: where the gradient is cut, which blocks are read, by what."""

    name: str
    cuts: bool
    """every block reads its input through the stop-gradient"""
    reads_all: bool
    """every block has a readout (else the last block only)"""
    family: str
    """the modules read the blocks: ``cap``, ``cap-last``, or a peer's name"""
    labelled_input: bool = False
    """the model's training input carries the label (``ff``): the forward needs the batch's labels"""


MODE_SPECS: dict[str, Mode] = {m.name: m for m in (
    Mode("bp", cuts=False, reads_all=False, family="cap-last"),
    Mode("caps", cuts=True, reads_all=True, family="cap"),
    Mode("caps-full", cuts=False, reads_all=True, family="cap"),
    Mode("local", cuts=True, reads_all=True, family="cap"),
    Mode("local-pred", cuts=True, reads_all=True, family="local-pred"),
    Mode("local-sim", cuts=True, reads_all=True, family="local-sim"),
    Mode("local-predsim", cuts=True, reads_all=True, family="local-predsim"),
    Mode("dgl", cuts=True, reads_all=True, family="dgl"),
    Mode("ff", cuts=True, reads_all=True, family="ff", labelled_input=True),
)}
MODES: tuple[str, ...] = tuple(MODE_SPECS)
#: modes whose blocks read their input through a stop-gradient
DETACHED_MODES = frozenset(name for name, m in MODE_SPECS.items() if m.cuts)
#: modes whose model holds CAP readouts and class prototypes (the others: a peer's auxiliary heads)
CAP_FAMILIES = frozenset({"cap", "cap-last"})
PEER_MODES = frozenset(name for name, m in MODE_SPECS.items() if m.family not in CAP_FAMILIES)
#: modes whose training input is built from the labels in the forward (one process, standard memory)
LABELLED_INPUT_MODES = frozenset(name for name, m in MODE_SPECS.items() if m.labelled_input)


def check_mode(mode: str) -> str:
    if mode not in MODE_SPECS:
        raise ConfigError(f"unknown mode '{mode}'; valid: {', '.join(MODES)} (or a schedule such as 'caps:0.9,caps-full')")
    return mode


def mode_spec(mode: str) -> Mode:
    return MODE_SPECS[check_mode(mode)]


def same_family(a: str, b: str) -> bool:
    return mode_spec(a).family == mode_spec(b).family


@dataclass(frozen=True)
class ModeSchedule:
    """Piecewise-constant mode over training, e.g. ``caps:0.9,caps-full``.

    Each segment ``mode:end`` runs until the fraction ``end`` of the epochs has elapsed; the last
    segment needs no end. The paper recommends ``caps`` for most of training, then a short
    ``caps-full`` fine-tune (section 4.4).

    The switches are fractions of the run's current ``train.epochs``, so a run resumed with another
    epoch count may keep its schedule only where the new count gives the epochs already trained the
    modes they had (:meth:`first_mismatch`); otherwise the resume is refused rather than the switch
    epochs of the first count kept: then every run folder holds what a fresh run of its config gives.
    """

    segments: tuple[tuple[str, float], ...]  # (mode, end fraction); the last end is 1.0

    @classmethod
    def parse(cls, text: str) -> "ModeSchedule":
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise ConfigError(f"train.mode is empty; give a mode ({', '.join(MODES)}) or a schedule like 'caps:0.9,caps-full'")
        segments: list[tuple[str, float]] = []
        previous_end = 0.0
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            mode, _, end_text = part.partition(":")
            check_mode(mode.strip())
            if not end_text:
                if not last:
                    raise ConfigError(f"schedule segment '{part}' needs an end fraction, e.g. '{mode}:0.5'")
                end = 1.0
            else:
                try:
                    end = float(end_text)
                except ValueError:
                    raise ConfigError(f"schedule segment '{part}': '{end_text}' is not a fraction in (0, 1]") from None
                if not previous_end < end <= 1.0:
                    raise ConfigError(f"schedule segment '{part}': end fractions must increase within (0, 1]")
                if last and end != 1.0:
                    raise ConfigError(f"schedule '{text}' stops at {end}; leave the last segment without an end")
            segments.append((mode.strip(), end))
            previous_end = end
        first = segments[0][0]
        for mode, _ in segments[1:]:
            if not same_family(first, mode):
                raise ConfigError(
                    f"schedule '{text}' mixes '{first}' and '{mode}', which need different heads; a schedule switches within "
                    "one family (caps, caps-full, local); bp and each layer-local peer train alone"
                )
        return cls(tuple(segments))

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(mode for mode, _ in self.segments)

    @property
    def first(self) -> str:
        return self.segments[0][0]

    def mode_at(self, epoch: int, epochs: int) -> str:
        """Mode of the 0-based ``epoch`` in a run of ``epochs`` epochs."""
        progress = epoch / max(epochs, 1)
        for mode, end in self.segments:
            if progress < end - 1e-9:
                return mode
        return self.segments[-1][0]

    def first_mismatch(self, trained: Sequence[str], epochs: int) -> int | None:
        """The first 0-based epoch of ``trained`` (the modes a run's epochs had) that a run of ``epochs``
        epochs would train in another mode, or None: a resume to ``epochs`` epochs is exact only then."""
        return next((epoch for epoch, mode in enumerate(trained) if self.mode_at(epoch, epochs) != mode), None)
