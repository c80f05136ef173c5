"""The layer-local peers (local-loss pred / sim / predsim, DGL): locality, their losses, their
networks' sizes against the published ones, and learning on real data."""

import pytest
import torch
import torch.nn.functional as F

from capsmm import build_model, training_loss
from capsmm.peers import decoder_grid, peer_loss, similarity_matrix
from conftest import ROOT  # noqa: F401  (the tests folder on the path)
from test_learning import fashion

PEERS = ["local-pred", "local-sim", "local-predsim", "dgl"]
SMALL = {"mlp": dict(in_shape=(1, 8, 8), hidden=24, depth=3), "vgg8b": dict(in_shape=(1, 16, 16), width_mult=1 / 16)}


def make(backbone, mode):
    torch.manual_seed(0)
    options = dict(SMALL[backbone])
    in_shape = options.pop("in_shape")
    model = build_model(backbone, num_classes=5, in_shape=in_shape, mode=mode, dropout=0.0, **options).train()
    for readout in model.readouts["image"]:  # leave the zero initialisation, so that every block gets a gradient
        for p in readout.parameters():
            torch.nn.init.normal_(p, std=0.1) if p.dim() > 1 else None
    return model, torch.randn(12, *in_shape), torch.arange(12) % 5


@pytest.mark.parametrize("backbone", list(SMALL))
@pytest.mark.parametrize("mode", PEERS)
def test_each_block_learns_from_its_own_local_loss_alone(backbone, mode):
    model, x, y = make(backbone, mode)
    out = model(x)
    family, classes, beta = out.peer
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        params = list(block.parameters())
        total = torch.autograd.grad(training_loss(out, y), params, retain_graph=True, allow_unused=True)
        own = torch.autograd.grad(peer_loss(family, [out.parts[i]], y, classes, beta), params, retain_graph=True, allow_unused=True)
        for a, b in zip(total, own):
            torch.testing.assert_close(a, b, msg=f"block {i}")
        assert any(g is not None and g.abs().sum() > 0 for g in own), f"block {i} learns nothing"
        for j in range(i + 1, len(blocks)):  # no later block's loss reaches it
            later = torch.autograd.grad(peer_loss(family, [out.parts[j]], y, classes, beta), params, retain_graph=True, allow_unused=True)
            assert all(g is None or not g.any() for g in later), f"block {j}'s loss reaches block {i}"


@pytest.mark.parametrize("mode", ["local-pred", "local-sim", "local-predsim"])
def test_the_output_layer_trains_only_itself(mode):
    model, x, y = make("mlp", mode)
    out = model(x)
    output_loss = F.cross_entropy(out.parts[-1]["output"], y)
    grads = torch.autograd.grad(output_loss, list(model.parameters()), allow_unused=True)
    trained = {name for (name, _), g in zip(model.named_parameters(), grads) if g is not None and g.any()}
    assert trained and all(".parts.output." in name for name in trained), trained


def test_similarity_matrix_is_the_centred_cosine():
    labels = torch.tensor([0, 0, 1, 2])
    matrix = similarity_matrix(F.one_hot(labels, 4).float())
    assert matrix[0, 1] == pytest.approx(1.0) and matrix[0, 0] == pytest.approx(1.0)
    assert matrix[0, 2] == pytest.approx(-1 / 3)  # centred one-hots of C classes: -1 / (C - 1)
    x = torch.randn(5, 7)
    assert torch.allclose(similarity_matrix(x + 3.0), similarity_matrix(x), atol=1e-6)  # each row centred
    assert torch.allclose(similarity_matrix(x * torch.tensor([[2.0], [1], [5], [1], [3]])), similarity_matrix(x), atol=1e-6)


def test_pred_decoder_pools_as_local_loss():
    # local-loss's loop by hand for 128 maps of 28 x 28, at most 1,024 features: halve the height, then
    # the width, 28 -> 14 -> 7 -> 4 -> 2 (height) and 28 -> 14 -> 7 -> 4 (width): 128 x 2 x 4 = 1,024
    assert decoder_grid(128, 28, 1024) == (2, 4)
    # 512 maps of 7 x 7, at most 4,096: 7 -> 4 (height), 7 -> 4 (width), 4 -> 2 (height): 512 x 2 x 4 = 4,096
    assert decoder_grid(512, 7, 4096) == (2, 4)
    assert decoder_grid(16, 8, 4096) == (8, 8)  # small enough already


@pytest.mark.parametrize("backbone, in_shape, published", [
    ("vgg8b", (1, 28, 28), 7.3e6), ("vgg8b", (3, 32, 32), 8.9e6), ("vgg11b", (3, 32, 32), 11.6e6)])
def test_local_loss_networks_have_the_published_sizes(backbone, in_shape, published):
    # local-loss's README: "#Params" of vgg8b on Fashion-MNIST and CIFAR-10, vgg11b on CIFAR-10 (10 classes,
    # the backbone and its output layer; its convs have biases, capsmm's do not: 0.05% of the count)
    model = build_model(backbone, num_classes=10, in_shape=in_shape, mode="local-pred")
    output_layer = 1024 * 10 + 10
    count = sum(p.numel() for p in model.encoders.parameters()) + output_layer
    assert count == pytest.approx(published, rel=0.01)


def test_local_loss_mlp_has_the_published_size():
    model = build_model("mlp", num_classes=10, in_shape=(1, 28, 28), mode="local-pred", hidden=1024, block_batchnorm=True)
    count = sum(p.numel() for p in model.encoders.parameters()) + 1024 * 10 + 10
    assert count == pytest.approx(2.9e6, rel=0.02)


@pytest.mark.parametrize("mode", PEERS)
def test_peers_learn_fashion_mnist(data_root, tmp_path, mode):
    # 188 steps of a 3 x 256 MLP with local-loss's block (batch norm); chance error is 0.9
    results = train_fashion(data_root, tmp_path, mode)
    assert results["test_error"] < 0.28  # 1.5x: measured 0.17-0.18 for every peer; chance 0.9


def train_fashion(data_root, out, mode):
    from capsmm.training import train

    return train(fashion(data_root, out, **{"model.backbone": "mlp", "model.hidden": 256, "model.block_batchnorm": True,
                                            "model.dropout": 0.0, "train.mode": mode}), log=print)
