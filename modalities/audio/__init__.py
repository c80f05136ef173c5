"""Audio modality: waveform loading (soundfile), resampling and log-mel features (torchaudio), a conv
encoder whose blocks emit CAP blocks, and the ``fsdd`` / ``audiofolder`` data sets."""

from .data import AUDIO_DATASETS, AudioDataset, AudioSet, fix_length, load_audio_dataset, read_wave
from .encoder import AudioConvEncoder, LogMel, audio_cnn

__all__ = ["AUDIO_DATASETS", "AudioConvEncoder", "AudioDataset", "AudioSet", "LogMel", "audio_cnn", "fix_length",
           "load_audio_dataset", "read_wave"]
