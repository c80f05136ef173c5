"""Memory-lean CAPs gives exactly the gradients of plain caps, and updates BN statistics once."""

import pytest
import torch

from capsmm import build_model, training_loss
from capsmm.lean import lean_backward, lean_forward

CASES = {
    "mlp": dict(in_shape=(1, 8, 8), hidden=48),
    "vgg8": dict(in_shape=(3, 16, 16), width_mult=1 / 16),
}


def twin_models(backbone, mode, norm):
    options = dict(CASES[backbone])
    in_shape = options.pop("in_shape")
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(build_model(backbone, num_classes=6, in_shape=in_shape, mode=mode, pattern_width=40,
                                  readout_norm=norm, dropout=0.2, **options).train())
    torch.manual_seed(1)
    x, y = torch.randn(10, *in_shape), torch.arange(10) % 6
    return models, x, y


@pytest.mark.parametrize("backbone", list(CASES))
@pytest.mark.parametrize("mode", ["caps", "local"])
@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("keep_last", [0, 2])
def test_lean_gradients_equal_plain_gradients(backbone, mode, norm, keep_last):
    (plain, lean), x, y = twin_models(backbone, mode, norm)
    for step in range(2):  # the second step checks that BN statistics and RNG stayed in lockstep
        torch.manual_seed(10 + step)
        out = plain(x)
        plain_loss = training_loss(out, y)
        plain_loss.backward()
        torch.manual_seed(10 + step)
        lean_out, state = lean_forward(lean, x, keep_last)
        lean_loss = training_loss(lean_out, y)
        lean_backward(lean_loss, state)
        assert not state.recompute and not state.graphs  # nothing outlives the step
        torch.testing.assert_close(lean_loss, plain_loss)
        torch.testing.assert_close(lean_out.logits, out.logits)
        for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
        for (name, a), b in zip(plain.named_buffers(), lean.buffers()):
            torch.testing.assert_close(b, a, msg=name)  # running stats updated exactly once
        for model in (plain, lean):
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
            model.zero_grad()


def test_lean_leaves_the_rng_where_a_plain_step_would():
    (plain, lean), x, y = twin_models("mlp", "caps", "batchnorm")
    torch.manual_seed(5)
    training_loss(plain(x), y).backward()
    after_plain = torch.rand(4)
    torch.manual_seed(5)
    out, state = lean_forward(lean, x)
    lean_backward(training_loss(out, y), state)
    assert torch.equal(torch.rand(4), after_plain)


def test_lean_needs_a_detached_mode():
    (model, _), x, _ = twin_models("mlp", "caps-full", "batchnorm")
    with pytest.raises(Exception, match="detached mode"):
        lean_forward(model, x)
