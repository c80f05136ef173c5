"""Memory-lean CAPs gives exactly the gradients of plain caps, and updates BN statistics once."""

import pytest
import torch

from capsmm import build_model
from capsmm.config import TrainConfig
from capsmm.strategies import build_strategy

CASES = {
    "mlp": dict(in_shape=(1, 8, 8), hidden=48),
    "vgg8": dict(in_shape=(3, 16, 16), width_mult=1 / 16),
}
CPU = torch.device("cpu")


def align(reference, other):
    """Give ``other`` the parameters of ``reference``: Adam turns the last-bit differences of two exact
    computations of a gradient into visible ones (its first update is about lr * sign(g)), so each step
    is compared from the same parameters. Buffers are not copied: they must stay equal on their own."""
    with torch.no_grad():
        for a, b in zip(reference.model.parameters(), other.model.parameters()):
            b.copy_(a)


def twin_strategies(backbone, mode, norm, **train):
    options = dict(CASES[backbone])
    in_shape = options.pop("in_shape")
    strategies = []
    for memory in ("standard", "lean"):
        torch.manual_seed(0)
        model = build_model(backbone, num_classes=6, in_shape=in_shape, mode=mode, pattern_width=40, readout_norm=norm,
                            dropout=0.2, **options).train()
        strategies.append(build_strategy(model, TrainConfig(mode=mode, memory=memory, lr=0.01, **train), CPU))
    torch.manual_seed(1)
    x, y = torch.randn(10, *in_shape), torch.arange(10) % 6
    return strategies, x, y


@pytest.mark.parametrize("backbone", list(CASES))
@pytest.mark.parametrize("mode", ["caps", "local"])
@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("keep_last", [0, 2])
def test_lean_gradients_equal_plain_gradients(backbone, mode, norm, keep_last):
    (plain, lean), x, y = twin_strategies(backbone, mode, norm, lean_keep=keep_last)
    for step in range(2):  # the second step checks that BN statistics, RNG and parameters stayed in lockstep
        torch.manual_seed(10 + step)
        plain_out = plain.step(x, y)
        torch.manual_seed(10 + step)
        lean_out = lean.step(x, y)
        torch.testing.assert_close(lean_out.loss, plain_out.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lean_out.logits, plain_out.logits, rtol=1e-4, atol=1e-4)
        for (name, a), b in zip(plain.model.named_parameters(), lean.model.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
        for (name, a), b in zip(plain.model.named_buffers(), lean.model.buffers()):
            torch.testing.assert_close(b, a, msg=name)  # running stats updated exactly once
        align(plain, lean)


def test_lean_leaves_the_rng_where_a_plain_step_would():
    (plain, lean), x, y = twin_strategies("mlp", "caps", "batchnorm")
    torch.manual_seed(5)
    plain.step(x, y)
    after_plain = torch.rand(4)
    torch.manual_seed(5)
    lean.step(x, y)
    assert torch.equal(torch.rand(4), after_plain)
