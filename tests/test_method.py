"""The defining properties of CAPs: block-local partial derivatives of ONE global objective."""

import pytest
import torch
import torch.nn.functional as F

import capsmm
from capsmm import build_model, training_loss

SMALL = {
    "mlp": dict(in_shape=(1, 8, 8), hidden=24, depth=3),
    "vgg6": dict(in_shape=(3, 16, 16), width_mult=1 / 16),
}


def make(backbone, mode, *, dropout=0.1, dtype=torch.float32, **extra):
    torch.manual_seed(0)
    options = dict(SMALL[backbone])
    in_shape = options.pop("in_shape")
    model = build_model(backbone, num_classes=5, in_shape=in_shape, mode=mode, pattern_width=32, dropout=dropout, **options, **extra)
    model = model.to(dtype).train()
    x = torch.randn(12, *in_shape, dtype=dtype)
    y = torch.arange(12) % 5
    return model, x, y


def block_params(model, i):
    return [p for p in model.blocks[i].parameters()]


@pytest.mark.parametrize("backbone", list(SMALL))
@pytest.mark.parametrize("mode", ["caps", "caps-full"])
def test_block_gradient_is_the_partial_derivative_pulled_back_through_the_block(backbone, mode):
    """In caps, dL/dtheta_i = (dL/dm_i)^T dm_i/dtheta_i with dL/dm_i taken with m as a leaf (eq. 9-11).

    In caps-full the same identity must fail for every block but the last: there the gradient also
    holds the indirect terms through deeper blocks (eq. 10).
    """
    model, x, y = make(backbone, mode)
    out = model(x)
    leaves = [p.detach().requires_grad_() for p in out.patterns]
    partials = torch.autograd.grad(F.cross_entropy(model.head(leaves), y), leaves)
    pulled_back = [
        torch.autograd.grad(out.patterns[i], block_params(model, i), grad_outputs=partials[i], retain_graph=True)
        for i in range(len(model.blocks))
    ]
    training_loss(out, y).backward()
    last = len(model.blocks) - 1
    for i in range(len(model.blocks)):
        matches = all(torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7) for p, g in zip(block_params(model, i), pulled_back[i]))
        if mode == "caps" or i == last:
            assert matches, f"block {i}: gradient is not the pulled-back partial derivative"
        else:
            assert not matches, f"block {i}: caps-full gradient lacks the indirect terms"


@pytest.mark.parametrize("backbone", list(SMALL))
@pytest.mark.parametrize("mode, cut", [("caps", True), ("local", True), ("caps-full", False), ("bp", False)])
def test_no_pattern_reaches_an_earlier_block_exactly_when_the_mode_cuts(backbone, mode, cut):
    model, x, _ = make(backbone, mode)
    out = model(x)
    later_pattern = out.patterns[-1]  # the last block's pattern exists in every mode
    for i in range(len(model.blocks) - 1):
        grads = torch.autograd.grad(later_pattern.sum(), block_params(model, i), allow_unused=True, retain_graph=True)
        reached = any(g is not None for g in grads)
        assert reached != cut, f"block {i}: path to the last pattern {'exists' if reached else 'missing'} in {mode}"
    if mode in ("caps", "local"):
        for j, pattern in enumerate(out.patterns):
            for i in range(j):
                grads = torch.autograd.grad(pattern.sum(), block_params(model, i), allow_unused=True, retain_graph=True)
                assert all(g is None for g in grads), f"pattern {j} reaches block {i}"


@pytest.mark.parametrize("backbone", list(SMALL))
@pytest.mark.parametrize("mode, global_objective", [("caps", True), ("local", False)])
def test_caps_objective_is_global_local_is_not(backbone, mode, global_objective):
    """Changing the LAST block changes block 0's caps gradient (||m||, softmax, prototypes couple the
    blocks), but not its gradient under the sum of per-block losses."""

    def first_block_grad(model, x, y):
        model.zero_grad()
        training_loss(model(x), y).backward()
        return [p.grad.clone() for p in block_params(model, 0)]

    model, x, y = make(backbone, mode, dropout=0.0)
    before = first_block_grad(model, x, y)
    with torch.no_grad():
        for p in block_params(model, len(model.blocks) - 1):
            p.add_(torch.randn_like(p) * 0.5)
    after = first_block_grad(model, x, y)
    changed = max((a - b).abs().max().item() for a, b in zip(after, before))
    if global_objective:
        assert changed > 1e-6
    else:
        assert changed == 0.0


@pytest.mark.parametrize("backbone", list(SMALL))
def test_caps_full_is_the_true_gradient_of_the_global_loss_and_caps_is_not(backbone):
    """Directional derivative by central differences (float64) against grad . v for block 0."""
    results = {}
    for mode in ("caps-full", "caps"):
        model, x, y = make(backbone, mode, dropout=0.0, dtype=torch.float64)
        params = block_params(model, 0)
        torch.manual_seed(1)
        direction = [torch.randn_like(p) for p in params]
        training_loss(model(x), y).backward()
        analytic = sum((p.grad * v).sum() for p, v in zip(params, direction)).item()
        eps = 1e-6

        def loss_at(scale):
            with torch.no_grad():
                for p, v in zip(params, direction):
                    p.add_(scale * eps * v)
                value = training_loss(model(x), y).item()
                for p, v in zip(params, direction):
                    p.sub_(scale * eps * v)
            return value

        numeric = (loss_at(1) - loss_at(-1)) / (2 * eps)
        results[mode] = (analytic, numeric)
    analytic, numeric = results["caps-full"]
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    analytic, numeric = results["caps"]
    assert analytic != pytest.approx(numeric, rel=1e-2)


def test_last_block_gradient_is_the_same_in_caps_and_caps_full():
    grads = {}
    for mode in ("caps", "caps-full"):
        model, x, y = make("vgg6", mode, dropout=0.0)
        training_loss(model(x), y).backward()
        grads[mode] = [p.grad for p in block_params(model, len(model.blocks) - 1)]
    for a, b in zip(grads["caps"], grads["caps-full"]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", ["bp", "caps", "caps-full"])
def test_training_loss_is_cross_entropy_of_the_logits(mode):
    model, x, y = make("mlp", mode)
    out = model(x)
    assert out.block_logits is None
    torch.testing.assert_close(training_loss(out, y), F.cross_entropy(out.logits, y))


def test_local_loss_sums_each_blocks_ce_against_its_own_prototype_slice():
    model, x, y = make("mlp", "local", dropout=0.0)
    out = model(x)
    expected = sum(F.cross_entropy(model.head([p], [i]), y) for i, p in enumerate(out.patterns))
    torch.testing.assert_close(training_loss(out, y), expected)
    torch.testing.assert_close(out.logits, out.block_logits[-1])


def test_bp_reads_only_the_last_block():
    model, x, _ = make("vgg6", "bp")
    out = model(x)
    assert len(out.patterns) == 1 and len(model.readouts["image"]) == 1
    assert model.head.weight.shape == (5, 32)


def test_modes_switch_only_within_a_head_family():
    model, _, _ = make("mlp", "caps")
    model.set_mode("caps-full")
    model.set_mode("local")
    with pytest.raises(capsmm.ConfigError, match="different heads"):
        model.set_mode("bp")
