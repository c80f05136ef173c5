"""Audio modality: reading, resampling, fixed length, FSDD and audio-folder splits, the encoder."""

import numpy as np
import pytest
import soundfile
import torch

from modalities.audio import AudioDataConfig
from capsmm.errors import DataError
from capsmm.encoder import ENCODERS
from modalities.audio import fix_length, load_audio_dataset, read_wave


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
    encoder = ENCODERS.get("audio-cnn")(in_shape=(8000,), width_mult=0.5)
    shapes = encoder.block_shapes((8000,))
    assert [s[0] for s in shapes] == [8, 16, 32, 32]
    assert shapes[0][1:] == (20, 51)  # 40 mel bands x 101 frames, pooled 2x2
    activations = [a for _, _, a in encoder.iter_blocks(torch.randn(3, 8000), cut=True)]
    assert [tuple(a.shape[1:]) for a in activations] == shapes


def test_fsdd_real_recordings(fsdd_root):
    data = load_audio_dataset(AudioDataConfig(root=str(fsdd_root), test_speakers=["lucas"]))
    assert (len(data.train), len(data.test), data.num_classes) == (1500, 500, 10)
    assert set(data.test.speakers) == {"lucas"}


# ---------------------------------------------------------------------------- augmentations, front ends, encoders

def test_time_shift_moves_content_and_fills_with_zeros():
    from modalities.audio.augment import time_shift

    waves = torch.arange(1, 21, dtype=torch.float32).repeat(64, 1)
    shifted = time_shift(waves, torch.Generator().manual_seed(0), 3)
    for row in shifted:
        nonzero = row[row != 0]
        start = int((row != 0).nonzero()[0])
        assert torch.equal(nonzero, torch.arange(nonzero[0].item(), nonzero[0].item() + len(nonzero)))  # content in order
        assert len(nonzero) >= 17 and (start == 0 or nonzero[0] == 1)
    assert len({tuple(row.tolist()) for row in shifted}) > 3  # different shifts


def test_gain_and_noise_stay_in_their_ranges():
    from modalities.audio.augment import additive_noise, gain

    waves = torch.from_numpy(np.stack([tone(440, 0.25, 8000)] * 200))
    db = 20 * torch.log10(gain(waves, torch.Generator().manual_seed(0), 6.0).abs().amax(1) / waves.abs().amax(1))
    assert db.abs().max() <= 6.0 + 1e-4 and db.std() > 1
    noisy = additive_noise(waves, torch.Generator().manual_seed(0), 10.0)
    snr = 10 * torch.log10(waves.pow(2).mean(1) / (noisy - waves).pow(2).mean(1))
    assert 9.0 < snr.min() and snr.max() < 31.0


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_augment_p_leaves_the_other_clips_untouched(p):
    from modalities.audio.augment import waveform_augmentation

    waves = torch.from_numpy(np.stack([tone(440, 0.25, 8000)] * 400))
    noisy = waveform_augmentation(8000, noise_snr=10.0, p=p)(waves.clone(), torch.Generator().manual_seed(0))
    changed = (noisy != waves).any(1).float().mean().item()
    assert abs(changed - p) < 0.07  # 400 coins: 3 standard errors at p = 0.3
    untouched = ~(noisy != waves).any(1)
    assert torch.equal(noisy[untouched], waves[untouched])


def test_augment_p_one_draws_what_the_plain_augmentation_draws():
    from modalities.audio.augment import additive_noise, waveform_augmentation

    waves = torch.from_numpy(np.stack([tone(440, 0.25, 8000)] * 20))
    alone = additive_noise(waves, torch.Generator().manual_seed(3), 10.0)
    torch.testing.assert_close(waveform_augmentation(8000, noise_snr=10.0, p=1.0)(waves, torch.Generator().manual_seed(3)), alone)


def test_speed_scales_the_frequency():
    from modalities.audio.augment import speed

    waves = torch.from_numpy(tone(500, 1.0, 8000))[None].repeat(50, 1)
    faster = speed(waves, torch.Generator().manual_seed(1), 0.2)
    found = torch.fft.rfft(faster[:, :4000]).abs().argmax(1).float() * 8000 / 4000
    assert found.min() >= 0.8 * 500 - 5 and found.max() <= 1.2 * 500 + 5 and found.std() > 10


def test_utterance_normalisation_removes_the_gain():
    from modalities.audio import AudioFrontEnd

    front = AudioFrontEnd(8000, normalize="utterance").eval()
    clip = torch.from_numpy(np.stack([tone(300, 1.0, 8000) + 0.01 * np.random.default_rng(0).standard_normal(8000).astype(np.float32)]))
    torch.testing.assert_close(front(clip * 10), front(clip), atol=2e-3, rtol=0)


def test_specaugment_masks_in_training_only_and_mfcc_shape():
    from modalities.audio import AudioFrontEnd

    clip = torch.from_numpy(tone(300, 1.0, 8000))[None].repeat(4, 1)
    front = AudioFrontEnd(8000, time_mask=20, freq_mask=8)
    plain = AudioFrontEnd(8000)
    front.load_state_dict(plain.state_dict())
    torch.testing.assert_close(front.eval()(clip), plain.eval()(clip))
    torch.manual_seed(0)
    assert (front.train()(clip) == 0).any()  # masked bins and frames are zero
    assert AudioFrontEnd(8000, n_mels=40, features="mfcc")(clip).shape[:3] == (4, 1, 20)


def test_audio_resnet_blocks_are_cut_between_and_skip_within():
    from capsmm import build_model

    model = build_model("audio-resnet", num_classes=3, in_shape=(2000,), mode="caps", width_mult=0.25, pattern_width=16).train()
    out = model(torch.randn(6, 2000))
    assert len(model.blocks) == 4 and len(out.patterns) == 4
    for j in range(1, 4):
        grads = torch.autograd.grad(out.patterns[j].sum(), list(model.blocks[j - 1].parameters()), allow_unused=True, retain_graph=True)
        assert all(g is None for g in grads), f"pattern {j} reaches block {j - 1}"


def test_new_runs_normalise_each_utterance_and_runs_saved_before_keep_batch_norm():
    """docs/multimodal.md: per-utterance normalisation won over every held-out speaker, so it is the
    default; a config saved before it holds ``normalize: null`` and rebuilds audio-cnn's own batch norm."""
    import dataclasses

    from capsmm.config import multimodal_schema
    from capsmm.encoder import build_encoder

    section = multimodal_schema()().audio_model
    assert section.backbone == "audio-cnn" and section.normalize == "utterance"
    saved_before = dataclasses.replace(section, normalize=None)
    fronts = [build_encoder("audio-cnn", in_shape=(800,), **s.encoder_options()).blocks[0][0] for s in (section, saved_before)]
    assert fronts[0].norm is None and isinstance(fronts[1].norm, torch.nn.BatchNorm2d)
