"""The audio modality's config sections, registered with capsmm's multimodal run schema.

``audio.*`` (:class:`AudioDataConfig`: the data set, sample rate, clip length, waveform
augmentation) and ``audio_model.*`` (:class:`AudioEncoderConfig`: every encoder key plus the front
end's). The choices come from the modules that implement them (:data:`FEATURES`,
:data:`NORMALIZATIONS`, the audio data-set registry).
"""

from __future__ import annotations

from dataclasses import dataclass

from capsmm.config import EncoderConfig, at_least, check_fields, in_range, one_of, opt, register_modality
from capsmm.data import dataset_registry

from .encoder import FEATURES, NORMALIZATIONS

#: audio data-set name -> ``loader(config, data_root)`` -> an :class:`~modalities.audio.data.AudioDataset`
AUDIO_DATASETS = dataset_registry("audio")


@dataclass
class AudioDataConfig:
    name: str = opt("audio data set: fsdd (Free Spoken Digit Dataset), audiofolder, hf-disk", "fsdd",
                    check=one_of(AUDIO_DATASETS.names))
    root: str | None = opt("data root; default $CAPSMM_DATA, else ./data. fsdd lives in <root>/fsdd", None)
    path: str | None = opt("folder of the set (absolute, or relative to the root); fsdd default <root>/fsdd, audiofolder default <root>", None)
    test_speakers: list[str] | None = opt("fsdd: speakers held out for testing (all their recordings); default: the take rule (takes 0-4 test)", None)
    sample_rate: int = opt("waveforms are resampled to this rate (Hz)", 8000, check=in_range(100, 384_000, open_high=False))
    duration: float = opt("seconds per clip: longer ones are centre-cropped, shorter ones zero-padded at the end", 1.0,
                          check=in_range(0.01, 600, open_high=False))
    train_subset: int | None = opt("use N training clips, stratified by class", None, check=at_least(1))
    test_subset: int | None = opt("use N test clips, stratified by class", None, check=at_least(1))
    shift: float = opt("training batches: each clip shifted by up to this many seconds, either way (0 = off)", 0.0,
                       check=in_range(0, 10, open_high=False))
    gain_db: float = opt("training batches: each clip's gain changed by up to this many dB, either way (0 = off)", 0.0,
                         check=in_range(0, 60, open_high=False))
    noise_snr: float | None = opt("training batches: white noise at a random SNR from this many dB to 20 dB more (null = off)", None,
                                  check=in_range(-20, 100, open_high=False))
    speed: float = opt("training batches: each clip played faster or slower by up to this fraction (0 = off; 0.1 = 0.9x to 1.1x)", 0.0,
                       check=in_range(0, 0.5, open_high=False))
    augment_p: float = opt("training batches: each waveform augmentation above applies to a clip with this probability (1 = to every "
                           "clip; below 1 the model also hears clean clips, which noise with utterance normalisation needs)", 1.0,
                           check=in_range(0, 1, open_high=False))

    def validate(self, prefix: str) -> None:
        check_fields(self, prefix)

    @property
    def length(self) -> int:
        return max(1, round(self.sample_rate * self.duration))



@dataclass
class AudioEncoderConfig(EncoderConfig):
    """An audio encoder: the keys of every encoder, and its front end's (unset: the backbone's defaults)."""

    n_mels: int | None = opt("audio: mel bins (MFCC: half as many coefficients)", None, check=in_range(4, 512, open_high=False))
    features: str | None = opt("audio: logmel or mfcc", None, check=one_of(FEATURES))
    normalize: str | None = opt("audio: utterance (each bin over the clip's frames; the default, measured best over every held-out "
                                "speaker: docs/multimodal.md) or batch (one BatchNorm over the features). null: the backbone's "
                                "own default (audio-cnn: batch), which runs saved before this default keep", "utterance",
                                check=one_of(NORMALIZATIONS))
    time_mask: int | None = opt("audio: SpecAugment, one mask of up to this many frames per training clip (0 = off)", None,
                                check=in_range(0, 1000, open_high=False))
    freq_mask: int | None = opt("audio: SpecAugment, one mask of up to this many bins per training clip (0 = off)", None,
                                check=in_range(0, 512, open_high=False))


register_modality("audio", data=AudioDataConfig, encoder=AudioEncoderConfig, encoder_defaults={"backbone": "audio-cnn"},
                  encoder_data_keys=("sample_rate",))
