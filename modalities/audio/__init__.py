"""Audio modality: waveform loading (soundfile), resampling, augmentation of training batches, log-mel or
MFCC features (torchaudio), conv and residual encoders whose blocks emit CAP blocks, and the ``fsdd`` /
``audiofolder`` data sets."""

from .config import AUDIO_DATASETS, AudioDataConfig, AudioEncoderConfig
from .data import AudioDataset, AudioSet, fix_length, load_audio_dataset, read_wave
from .encoder import AudioEncoder, AudioFrontEnd
from .inference import read_audio

__all__ = ["AUDIO_DATASETS", "AudioDataConfig", "AudioDataset", "AudioEncoderConfig", "AudioEncoder", "AudioFrontEnd", "AudioSet", "fix_length", "load_audio_dataset", "read_audio", "read_wave"]
