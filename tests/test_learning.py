"""Every mode learns real Fashion-MNIST (from $CAPSMM_DATA) far below chance within a few hundred steps."""

import pytest

from capsmm.config import build_runs
from capsmm.training import train

MODES = ["bp", "caps", "caps-full", "local"]


def fashion(data_root, out, **overrides):
    base = {"data.name": "fashion-mnist", "data.root": str(data_root), "data.download": False,
            "data.train_subset": 6000, "data.test_subset": 2000, "train.batch_size": 64, "train.epochs": 2,
            "train.lr": 1e-3, "train.progress": False, "train.device": "cpu", "out": str(out)}
    base.update(overrides)
    [config] = build_runs(None, list(base.items()))
    return config


@pytest.mark.parametrize("mode", MODES)
def test_mlp_learns_fashion_mnist(data_root, tmp_path, mode):
    # 188 steps of a 3 x 256 MLP; chance error is 0.9
    results = train(fashion(data_root, tmp_path, **{"model.backbone": "mlp", "model.hidden": 256, "train.mode": mode}), log=print)
    assert results["test_error"] < 0.3


@pytest.mark.parametrize("mode", MODES)
def test_narrow_vgg_learns_fashion_mnist(data_root, tmp_path, mode):
    # 94 steps of a VGG6 at 1/8 width (8 ... 64 channels)
    results = train(fashion(data_root, tmp_path, **{"model.backbone": "vgg6", "model.width_mult": 0.125, "train.mode": mode,
                                                    "train.epochs": 1, "model.pattern_width": 256}), log=print)
    assert results["test_error"] < 0.4


@pytest.mark.parametrize("backbone, mode, options", [
    ("resnet20", "bp", {"model.width_mult": 0.5}), ("resnet20", "caps", {"model.width_mult": 0.5}),
    ("resnet32", "caps", {"model.width_mult": 0.5}), ("resnet56", "caps", {"model.width_mult": 0.25}),
    ("resnet110", "caps", {"model.width_mult": 0.25}), ("resnet18", "caps", {"model.width_mult": 0.125}),
    ("vit-tiny", "caps", {"model.depth": 4, "model.width_mult": 0.5, "model.dropout": 0.0, "train.lr": 1e-3})])
def test_modern_backbones_learn_fashion_mnist(data_root, tmp_path, backbone, mode, options):
    # 188 steps (2 epochs of 750 images, batch 8); chance error is 0.9
    results = train(fashion(data_root, tmp_path, **{"model.backbone": backbone, "train.mode": mode, "model.pattern_width": 256,
                                                    "data.train_subset": 750, "data.test_subset": 1000, "train.epochs": 2,
                                                    "train.batch_size": 8, **options}), log=print)
    assert results["test_error"] < 0.45
