"""Every backbone x mode x readout norm x head builds, has the documented shape contract, and learns a step."""

import pytest
import torch

from capsmm import MODES, build_model, training_loss
from capsmm.encoder import ENCODERS
from capsmm.errors import ConfigError
from modalities.image import VGG_CHANNELS

BACKBONES = ["mlp", "vgg6", "vgg8", "vgg11", "vgg16", "vgg19", "vgg8b", "vgg11b", "resnet20", "resnet18", "vit-tiny"]
TINY = ({"mlp": dict(hidden=64)} | {name: dict(width_mult=1 / 16) for name in [*VGG_CHANNELS, "vgg8b", "vgg11b", "resnet18"]}
        | {"resnet20": dict(width_mult=0.25), "vit-tiny": dict(width_mult=1 / 16, depth=2)})


def test_registry_lists_the_papers_backbones():
    assert set(BACKBONES) <= set(ENCODERS.names())


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("norm", ["batchnorm", "layernorm", "none"])
@pytest.mark.parametrize("head", ["cosine", "template"])
def test_builds_and_steps(backbone, mode, norm, head):
    torch.manual_seed(0)
    build = lambda: build_model(backbone, num_classes=7, in_shape=(1, 20, 20), mode=mode, pattern_width=48,  # noqa: E731
                                readout_norm=norm, head=head, **TINY[backbone])
    if mode == "ff" and backbone != "mlp":  # Forward-Forward writes the label over input values: vector blocks only
        with pytest.raises(ConfigError, match="backbones of vector blocks"):
            build()
        return
    model = build()
    x, y = torch.randn(6, 1, 20, 20), torch.arange(6) % 7
    with torch.no_grad():
        out = model.eval()(x)
    model.train()
    assert out.logits.shape == (6, 7)
    expected_patterns = 1 if mode == "bp" else len(model.blocks)
    widths = [model.pattern_widths["image"][b] for b in model.read_blocks["image"]]
    assert [tuple(p.shape) for p in out.patterns] == [(6, w) for w in widths] and len(widths) == expected_patterns
    if model.head is not None:  # CAP readouts: every block's pattern has the pattern width
        assert widths == [48] * expected_patterns
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):  # two steps: a peer's zero-initialised decoders pass no gradient to their block in the first
        optimizer.zero_grad()
        loss = training_loss(model(x, y), y)  # the labels: ff writes them into its input
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters()), "every parameter takes part in the objective"
        optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("name, convs", [("vgg6", 5), ("vgg8", 6), ("vgg11", 8), ("vgg16", 13), ("vgg19", 16)])
def test_vgg_blocks_are_conv_layers(name, convs):
    model = build_model(name, num_classes=10, in_shape=(3, 32, 32), mode="caps", width_mult=1 / 8)
    assert len(model.blocks) == convs
    assert all(isinstance(block[0], torch.nn.Conv2d) for block in model.blocks)


def test_width_multiplier_scales_channels():
    for mult, widest in [(1, 512), (2, 1024), (4, 2048)]:
        encoder = ENCODERS.get("vgg11")(in_shape=(3, 32, 32), width_mult=mult)
        assert max(block[0].out_channels for block in encoder.blocks) == widest


@pytest.mark.parametrize("name", ["vgg11", "vgg16", "vgg19"])
def test_classic_vgg_parameter_counts_match_torchvision(name):
    # torchvision's vgg*_bn features, minus the conv biases (redundant before BN, so capsmm has none)
    import torchvision

    reference = getattr(torchvision.models, f"{name}_bn")().features
    conv_biases = sum(m.bias.numel() for m in reference if isinstance(m, torch.nn.Conv2d))
    encoder = ENCODERS.get(name)(in_shape=(3, 32, 32))
    assert sum(p.numel() for p in encoder.parameters()) == sum(p.numel() for p in reference.parameters()) - conv_biases


@pytest.mark.parametrize("name, blocks, published", [
    ("resnet20", 10, 0.27e6), ("resnet32", 16, 0.46e6), ("resnet56", 28, 0.85e6), ("resnet110", 55, 1.7e6), ("resnet18", 9, 11.17e6)])
def test_resnets_have_the_published_sizes(name, blocks, published):
    # He et al. 2016, Table 6 (CIFAR-10, with their 10-way output layer); ResNet-18 for CIFAR: 11.17M
    encoder = ENCODERS.get(name)(in_shape=(3, 32, 32))
    width = encoder.block_shapes((3, 32, 32))[-1][0]
    assert len(encoder.blocks) == blocks  # the stem, then one CAP block per residual block
    assert sum(p.numel() for p in encoder.parameters()) + width * 10 + 10 == pytest.approx(published, rel=0.02)


def test_vit_tiny_is_deit_tiny_sized_and_reads_tokens():
    encoder = ENCODERS.get("vit-tiny")(in_shape=(3, 32, 32))
    assert len(encoder.blocks) == 12 and encoder.block_shapes((3, 32, 32)) == [(192, 64)] * 12  # (width, tokens) per layer
    assert sum(p.numel() for p in encoder.parameters()) == pytest.approx(5.36e6, rel=0.01)  # DeiT-Ti: 5.7M with class token and head


@pytest.mark.parametrize("name, options", [("resnet20", {}), ("resnet32", {}), ("resnet56", {"width_mult": 0.5}),
                                           ("resnet110", {"width_mult": 0.25}), ("resnet18", {"width_mult": 0.125}),
                                           ("vit-tiny", {"depth": 3, "width_mult": 0.5})])
def test_no_gradient_crosses_a_residual_or_transformer_block_in_caps(name, options):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, in_shape=(3, 16, 16), mode="caps", pattern_width=32, **options).train()
    out = model(torch.randn(4, 3, 16, 16))
    blocks = list(model.blocks)
    for j in range(1, len(blocks), max(1, len(blocks) // 6)):
        grads = torch.autograd.grad(out.patterns[j].sum(), list(blocks[j - 1].parameters()), allow_unused=True, retain_graph=True)
        assert all(g is None for g in grads), f"{name}: pattern {j} reaches block {j - 1}"
    own = torch.autograd.grad(out.patterns[-1].sum(), list(blocks[-1].parameters()), allow_unused=True)
    assert all(g is not None for g in own)  # the skip connection inside a block still carries its gradient


def test_mlp_default_is_3x3000():
    encoder = ENCODERS.get("mlp")(in_shape=(1, 28, 28))
    linears = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 3000), (3000, 3000), (3000, 3000)]


def test_vgg_handles_28x28_inputs_without_padding():
    model = build_model("vgg11", num_classes=10, in_shape=(1, 28, 28), mode="caps", width_mult=1 / 8)
    shapes = next(iter(model.encoders.values())).block_shapes((1, 28, 28))
    assert [s[1:] for s in shapes] == [(14, 14), (7, 7), (7, 7), (4, 4), (4, 4), (2, 2), (2, 2), (1, 1)]


def test_unknown_backbone_option_is_a_config_error():
    with pytest.raises(ConfigError, match="does not take option.*depth.*it takes: width_mult, dropout"):
        build_model("vgg11", num_classes=10, in_shape=(3, 32, 32), mode="caps", depth=3)
