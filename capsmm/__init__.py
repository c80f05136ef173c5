"""capsmm: forward-only learning with co-activation patterns (CAPs), and multimodal CAP models."""

from .encoder import ENCODERS, CAPEncoder, build_encoder
from .errors import CapsmmError, CheckpointError, ConfigError, DataError, TrainingError
from .model import CAPModel, CAPOutput, build_model
from .modes import MODES, ModeSchedule
from .objectives import training_loss
from .prototypes import HEADS, PrototypeHead
from .inference import TrainedModel, load_run
from .readout import READOUT_NORMS, CAPReadout
from .version import __version__

__all__ = [
    "ENCODERS", "HEADS", "MODES", "READOUT_NORMS",
    "CAPEncoder", "CAPModel", "CAPOutput", "CAPReadout", "ModeSchedule", "PrototypeHead", "TrainedModel",
    "CapsmmError", "CheckpointError", "ConfigError", "DataError", "TrainingError",
    "__version__", "build_encoder", "build_model", "load_run", "training_loss",
]
