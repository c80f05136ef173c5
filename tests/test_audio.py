"""Audio modality: reading, resampling, fixed length, FSDD and audio-folder splits, the encoder."""

import numpy as np
import pytest
import soundfile
import torch

from capsmm.config import AudioDataConfig
from capsmm.errors import DataError
from modalities.audio import audio_cnn, fix_length, load_audio_dataset, read_wave


def tone(freq, seconds, rate):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_fsdd(folder, speakers=("ann", "bob", "cy"), digits=3, takes=7, rate=8000):
    folder.mkdir(parents=True)
    for speaker in speakers:
        for digit in range(digits):
            for take in range(takes):
                soundfile.write(folder / f"{digit}_{speaker}_{take}.wav", tone(200 * (digit + 1), 0.2 + 0.01 * take, rate), rate)


def test_fix_length_centre_crops_and_pads():
    wave = torch.arange(10.0)
    assert torch.equal(fix_length(wave, 4), torch.tensor([3.0, 4.0, 5.0, 6.0]))
    assert torch.equal(fix_length(wave[:3], 5), torch.tensor([0.0, 1.0, 2.0, 0.0, 0.0]))


def test_read_wave_resamples_and_mixes_to_mono(tmp_path):
    stereo = np.stack([tone(440, 0.5, 16000), tone(440, 0.5, 16000)], axis=1)
    soundfile.write(tmp_path / "a.wav", stereo, 16000)
    wave = read_wave(tmp_path / "a.wav", 8000)
    assert wave.shape == (4000,)
    # a 440 Hz tone stays a 440 Hz tone: its spectrum peaks at 440 Hz after resampling
    spectrum = torch.fft.rfft(wave).abs()
    assert abs(int(spectrum.argmax()) * 8000 / len(wave) - 440) < 5
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(DataError, match="cannot read audio file"):
        read_wave(tmp_path / "bad.wav", 8000)


def test_fsdd_take_rule_and_held_out_speakers(tmp_path):
    write_fsdd(tmp_path / "fsdd" / "recordings")
    takes = load_audio_dataset(AudioDataConfig(root=str(tmp_path), duration=0.5))
    assert (len(takes.train), len(takes.test)) == (3 * 3 * 2, 3 * 3 * 5)  # takes 0-4 are test
    assert takes.train.waves.shape[1] == 4000 and takes.classes == ["0", "1", "2"]
    held = load_audio_dataset(AudioDataConfig(root=str(tmp_path), test_speakers=["bob"]))
    assert set(held.test.speakers) == {"bob"} and "bob" not in held.train.speakers
    assert len(held.test) == 21 and len(held.train) == 42
    # the first clips of a split cover every digit
    assert set(held.train.labels[:3].tolist()) == {0, 1, 2}
    with pytest.raises(DataError, match="test speaker.*zed not in.*speakers there: ann, bob, cy"):
        load_audio_dataset(AudioDataConfig(root=str(tmp_path), test_speakers=["zed"]))
    with pytest.raises(DataError, match="no FSDD recordings"):
        load_audio_dataset(AudioDataConfig(root=str(tmp_path / "nowhere")))


def test_audiofolder_any_rate(tmp_path):
    for split in ("train", "test"):
        for cls, rate in (("cat", 16000), ("dog", 22050)):
            (tmp_path / split / cls).mkdir(parents=True)
            soundfile.write(tmp_path / split / cls / "x.wav", tone(300, 0.3, rate), rate)
    data = load_audio_dataset(AudioDataConfig(name="audiofolder", root=str(tmp_path), duration=0.25))
    assert data.classes == ["cat", "dog"] and data.train.waves.shape == (2, 2000)
    assert data.train.labels.tolist() == [0, 1]
    (tmp_path / "test" / "dog").rename(tmp_path / "test" / "eel")
    with pytest.raises(DataError, match="must match"):
        load_audio_dataset(AudioDataConfig(name="audiofolder", root=str(tmp_path)))


def test_audio_encoder_blocks_from_waveforms():
    encoder = audio_cnn(in_shape=(8000,), width_mult=0.5)
    shapes = encoder.block_shapes((8000,))
    assert [s[0] for s in shapes] == [8, 16, 32, 32]
    assert shapes[0][1:] == (20, 51)  # 40 mel bands x 101 frames, pooled 2x2
    activations = [a for _, _, a in encoder.iter_blocks(torch.randn(3, 8000), cut=True)]
    assert [tuple(a.shape[1:]) for a in activations] == shapes


def test_fsdd_real_recordings(fsdd_root):
    data = load_audio_dataset(AudioDataConfig(root=str(fsdd_root), test_speakers=["lucas"]))
    assert (len(data.train), len(data.test), data.num_classes) == (1500, 500, 10)
    assert set(data.test.speakers) == {"lucas"}
