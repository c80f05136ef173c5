"""The transformers adapter (layers as CAP blocks) and data sets saved with datasets.save_to_disk."""

import io

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from PIL import Image

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from capsmm import CAPModel, training_loss  # noqa: E402
from capsmm.config import DataConfig  # noqa: E402
from modalities.audio import AudioDataConfig  # noqa: E402
from capsmm.data import load_image_dataset  # noqa: E402
from capsmm.encoder import build_encoder  # noqa: E402
from capsmm.errors import DataError  # noqa: E402
from modalities.audio import load_audio_dataset  # noqa: E402
from modalities.hf import HFEncoder  # noqa: E402


def tiny_vit_config():
    return transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
                                  image_size=16, patch_size=4, num_channels=1)


def test_layers_are_the_blocks_with_the_cut_between_them():
    torch.manual_seed(0)
    encoder = HFEncoder.from_config(tiny_vit_config(), modality="image")
    assert len(encoder.blocks) == 3
    model = CAPModel({"image": encoder}, {"image": (1, 16, 16)}, num_classes=3, mode="caps", pattern_width=16)
    assert encoder.block_shapes((1, 16, 16)) == [(32, 17)] * 3  # (D, tokens) per readout
    x, y = torch.randn(6, 1, 16, 16), torch.arange(6) % 3
    out = model(x)
    for j, pattern in enumerate(out.patterns):
        for i in range(j):
            grads = torch.autograd.grad(pattern.sum(), list(encoder.blocks[i].parameters()), allow_unused=True, retain_graph=True)
            assert all(g is None for g in grads), f"layer {j}'s pattern reaches layer {i}"
    leaves = [p.detach().requires_grad_() for p in out.patterns]
    partials = torch.autograd.grad(F.cross_entropy(model.head(leaves), y), leaves)
    expected = torch.autograd.grad(out.patterns[1], list(encoder.blocks[1].parameters()), grad_outputs=partials[1], retain_graph=True)
    training_loss(out, y).backward()
    for p, g in zip(encoder.blocks[1].parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)


def test_loads_a_local_directory_and_registers_as_a_backbone(tmp_path):
    torch.manual_seed(0)
    reference = transformers.AutoModel.from_config(tiny_vit_config())
    reference.save_pretrained(tmp_path / "vit")
    encoder = build_encoder("hf-image", in_shape=(1, 16, 16), source=str(tmp_path / "vit"))
    assert torch.equal(encoder.blocks[2].layer.state_dict()[next(iter(encoder.blocks[2].layer.state_dict()))],
                       reference.layers[2].state_dict()[next(iter(reference.layers[2].state_dict()))])
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        hidden = reference.embeddings(x)
        for layer in reference.layers:
            hidden = layer(hidden)
        torch.testing.assert_close(encoder.eval()(x), hidden)
    with pytest.raises(Exception, match="local"):
        HFEncoder.from_pretrained(tmp_path / "missing")


def test_text_encoders_take_token_ids():
    bert = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, vocab_size=50)
    encoder = HFEncoder.from_config(bert, modality="text")
    model = CAPModel({"text": encoder}, {"text": (7,)}, num_classes=2, mode="caps", pattern_width=8)
    out = model({"text": torch.randint(0, 50, (4, 7))})
    assert out.logits.shape == (4, 2) and len(out.patterns) == 2


def png(value):
    buffer = io.BytesIO()
    Image.new("L", (10, 12), value).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(freq, rate):
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.5 * np.sin(2 * np.pi * freq * np.arange(rate // 4) / rate)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def test_datasets_saved_to_disk_with_image_audio_and_label_columns(tmp_path):
    splits = {}
    for split, n in (("train", 6), ("test", 4)):
        labels = [i % 2 for i in range(n)]
        table = datasets.Dataset.from_dict({
            "image": [{"bytes": png(40 + 100 * l), "path": None} for l in labels],
            "audio": [{"bytes": wav(300 + 600 * l, 16000), "path": None} for l in labels],
            "label": labels,
        })
        # cast rather than encode: encoding an Audio column would need torchcodec
        table = table.cast_column("image", datasets.Image()).cast_column("audio", datasets.Audio())
        splits[split] = table.cast_column("label", datasets.ClassLabel(names=["lo", "hi"]))
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    images = load_image_dataset(DataConfig(name="hf-disk", root=str(tmp_path), path="saved", image_size=8))
    assert images.classes == ["lo", "hi"] and images.in_shape == (1, 8, 8) and len(images.train) == 6
    assert int(images.train.images[1, 0, 0, 0]) == 140  # label 1 -> grey 140
    audio = load_audio_dataset(AudioDataConfig(name="hf-disk", root=str(tmp_path), path="saved", duration=0.5))
    assert audio.train.waves.shape == (6, 4000) and audio.test.labels.tolist() == [0, 1, 0, 1]
    spectrum = torch.fft.rfft(audio.train.waves[1, :2000]).abs()
    assert abs(int(spectrum.argmax()) * 8000 / 2000 - 900) < 10  # 900 Hz tone, resampled 16 -> 8 kHz


def test_a_corrupt_image_row_is_a_one_line_error_naming_the_row(tmp_path):
    splits = {}
    for split in ("train", "test"):
        images = [{"bytes": png(40), "path": None}, {"bytes": b"\x89PNG\r\n\x1a\n but then nothing", "path": None}]
        table = datasets.Dataset.from_dict({"image": images, "label": [0, 1]}).cast_column("image", datasets.Image())
        splits[split] = table
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError) as info:
        load_image_dataset(DataConfig(name="hf-disk", root=str(tmp_path), path="saved", image_size=8))
    message = str(info.value)
    assert "[train] row 1" in message and str(tmp_path / "saved") in message and "\n" not in message
