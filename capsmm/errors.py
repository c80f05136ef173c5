"""Error types whose message is a complete, one-line answer for the user.

Command-line entry points catch :class:`CapsmmError` and print ``str(error)`` alone (no
traceback), so every message must say what is wrong *and* how to fix it.
"""


class CapsmmError(Exception):
    """Base class of the errors a user can fix without reading capsmm's code.

    The message is kept on one line whatever it quotes (a value with a line break in it is shown
    with the break escaped), so that it prints as the single line the CLIs promise.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class ConfigError(CapsmmError, ValueError):
    """A config key, value or combination is invalid (CLI exit status 2)."""


class DataError(CapsmmError):
    """A data set is missing, incomplete or unreadable."""


class CheckpointError(CapsmmError):
    """A checkpoint is unreadable or belongs to a different run."""


class TrainingError(CapsmmError):
    """Training cannot continue (for example the loss became NaN)."""
