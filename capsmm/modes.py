"""Training modes and mode schedules.

| mode        | gradient between blocks | objective                                              |
|-------------|-------------------------|--------------------------------------------------------|
| `caps`      | cut (stop-gradient)     | one global softmax-CE over scores of the whole pattern |
| `caps-full` | kept                    | the same global loss                                   |
| `bp`        | kept                    | softmax-CE over the last block's pattern only          |
| `local`     | cut                     | sum over blocks of a per-block CE (own prototype slice)|

Modes of one *family* share the same parameters (readouts and prototypes), so a run may switch
between them: `caps`, `caps-full` and `local` read every block; `bp` reads the last block only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

MODES: tuple[str, ...] = ("bp", "caps", "caps-full", "local")

#: modes whose blocks read their input through a stop-gradient
DETACHED_MODES = frozenset({"caps", "local"})
#: modes whose head reads only the last block
LAST_BLOCK_MODES = frozenset({"bp"})


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown mode '{mode}'; valid: {', '.join(MODES)} (or a schedule such as 'caps:0.9,caps-full')")
    return mode


def reads_all_blocks(mode: str) -> bool:
    """Whether the head of ``mode`` reads a pattern from every block (else: the last block only)."""
    return check_mode(mode) not in LAST_BLOCK_MODES


def same_family(a: str, b: str) -> bool:
    return reads_all_blocks(a) == reads_all_blocks(b)


@dataclass(frozen=True)
class ModeSchedule:
    """Piecewise-constant mode over training, e.g. ``caps:0.9,caps-full``.

    Each segment ``mode:end`` runs until the fraction ``end`` of the epochs has elapsed; the last
    segment needs no end. The paper recommends ``caps`` for most of training, then a short
    ``caps-full`` fine-tune (section 4.4).
    """

    segments: tuple[tuple[str, float], ...]  # (mode, end fraction); the last end is 1.0

    @classmethod
    def parse(cls, text: str) -> "ModeSchedule":
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise ConfigError("train.mode is empty; give a mode (bp, caps, caps-full, local) or a schedule like 'caps:0.9,caps-full'")
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
                    f"schedule '{text}' mixes '{first}' and '{mode}', which need different heads; "
                    "bp cannot be scheduled with caps, caps-full or local"
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
