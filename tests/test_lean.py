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


SEGMENTED = {
    "mlp": dict(in_shape=(1, 8, 8), hidden=48, block_batchnorm=True),  # one batch norm per block
    "vgg8": dict(in_shape=(3, 16, 16), width_mult=1 / 16),  # conv, batch norm, pooling, dropout
    "resnet20": dict(in_shape=(3, 16, 16), width_mult=1 / 4),  # two or three batch norms, a shortcut
}


def segmented_twins(backbone, mode, segments, **train):
    options = dict(SEGMENTED[backbone])
    in_shape = options.pop("in_shape")
    strategies = []
    for memory, split in (("standard", 1), ("lean", segments)):
        torch.manual_seed(0)
        model = build_model(backbone, num_classes=6, in_shape=in_shape, mode=mode, pattern_width=40, dropout=0.2, **options).train()
        strategies.append(build_strategy(model, TrainConfig(mode=mode, memory=memory, lr=0.01, lean_segments=split, **train), CPU))
    torch.manual_seed(1)
    return strategies, torch.randn(10, *in_shape), torch.arange(10) % 6


@pytest.mark.parametrize("backbone, segments", [("mlp", 3), ("vgg8", 3), ("vgg8", "auto"), ("resnet20", 3)])
@pytest.mark.parametrize("mode", ["caps", "dgl"])
def test_segmented_lean_gradients_and_statistics_equal_plain(backbone, segments, mode):
    """Batch norms inside the split blocks, dropout masks, uneven micro-batches (10 rows in 3), DGL's
    batch norms in the readouts: gradients and running statistics are plain caps' (float32)."""
    (plain, lean), x, y = segmented_twins(backbone, mode, segments)
    assert lean.segments and max(lean.segments.values()) > 1, lean.segments
    for step in range(2):
        torch.manual_seed(10 + step)
        plain_out = plain.step(x, y)
        torch.manual_seed(10 + step)
        lean_out = lean.step(x, y)
        torch.testing.assert_close(lean_out.loss, plain_out.loss, rtol=1e-5, atol=1e-6)
        for (name, a), b in zip(plain.model.named_parameters(), lean.model.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
        for (name, a), b in zip(plain.model.named_buffers(), lean.model.buffers()):
            torch.testing.assert_close(b, a, msg=name)
        align(plain, lean)


def test_segmented_lean_in_channels_last_and_with_kept_graphs():
    (plain, lean), x, y = segmented_twins("vgg8", "local", 4, channels_last=True, lean_keep=3)
    for step in range(2):
        torch.manual_seed(10 + step)
        plain.step(x, y)
        torch.manual_seed(10 + step)
        lean.step(x, y)
        for (name, a), b in zip(plain.model.named_parameters(), lean.model.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
        align(plain, lean)


def block_calls(strategy, x, y, index=0):
    """Batch sizes block ``index`` of the encoder ran on during one step, in order."""
    sizes = []
    handle = strategy.model.encoders["image"].blocks[index].register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    try:
        strategy.step(x, y)
    finally:
        handle.remove()
    return sizes


def test_a_split_block_runs_once_whole_then_per_micro_batch_once_per_batch_norm_and_once_more():
    (_, lean), x, y = segmented_twins("vgg8", "caps", 3)
    assert lean.segments[("image", 0)] == 3
    # step 1 on the whole batch; one pass for the block's batch norm (the readout's runs whole); the last pass
    assert block_calls(lean, x, y) == [10, 3, 4, 3, 3, 4, 3]
    (_, whole), x, y = segmented_twins("vgg8", "caps", 1)
    assert block_calls(whole, x, y) == [10, 10]


def step_activation_mib(strategy, x, y):
    from capsmm.profiling import TensorMemoryMeter

    strategy.optimizer.zero_grad(set_to_none=True)
    with TensorMemoryMeter() as meter:
        strategy.step(x, y)
    return meter.peak_without(p.grad for p in strategy.model.parameters() if p.grad is not None) / 2**20


def test_segments_lower_the_peak_below_whole_block_recomputation():
    """What the setting is for: VGG's first block, recomputed whole, holds the step's peak; split in 4 it
    drops to about what step 1's forward holds anyway."""
    peaks = {}
    for segments in (1, 4):
        torch.manual_seed(0)
        model = build_model("vgg8", num_classes=10, in_shape=(3, 32, 32), mode="caps", width_mult=0.25).train()
        lean = build_strategy(model, TrainConfig(mode="caps", memory="lean", lean_segments=segments), CPU)
        x, y = torch.randn(32, 3, 32, 32), torch.arange(32) % 10
        lean.step(x, y)
        peaks[segments] = step_activation_mib(lean, x, y)
    assert peaks[4] < 0.7 * peaks[1], peaks


def test_segment_counts_split_the_largest_block_and_whatever_exceeds_its_share():
    from capsmm.strategies.segments import BlockMemory, segment_counts

    # VGG11's first blocks at CIFAR shapes, per 128 samples (MiB): input, output, whole recomputation
    blocks = list(enumerate([BlockMemory(1.5, 8, 144), BlockMemory(8, 4, 72), BlockMemory(4, 8, 48), BlockMemory(8, 2, None)]))
    assert segment_counts(1, blocks, floor=63) == {}
    assert segment_counts(2, blocks, floor=63) == {0: 2}
    assert segment_counts(4, blocks, floor=63) == {0: 4, 1: 2, 2: 2}  # 36 MiB each at most
    # auto: until a block's micro-batch, with the inputs kept and its output's gradient, fits under the floor:
    # block 0 has 63 - 9.5 MiB for 144 (3 micro-batches), block 1 63 - 13.5 for 72 (2); block 2 fits whole
    assert segment_counts("auto", blocks, floor=63) == {0: 3, 1: 2}
    assert segment_counts("auto", blocks, floor=200) == {}  # whatever is split, step 1 needs more


def test_a_random_draw_that_cannot_be_replayed_is_a_one_line_error():
    from capsmm import CAPModel
    from capsmm.encoder import CAPEncoder
    from capsmm.errors import ConfigError

    class Noisy(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x + 0.1 * torch.randn_like(x))

    blocks = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), Noisy()), torch.nn.Sequential(torch.nn.Linear(32, 32), Noisy())]
    model = CAPModel({"image": CAPEncoder(blocks)}, {"image": (1, 8, 8)}, num_classes=6, mode="caps", pattern_width=16).train()
    lean = build_strategy(model, TrainConfig(mode="caps", memory="lean", lean_segments=2), CPU)
    with pytest.raises(ConfigError, match="randn.*can't replay; use train.lean_segments=1") as info:
        lean.step(torch.randn(10, 1, 8, 8), torch.arange(10) % 6)
    assert "\n" not in str(info.value)


def test_fused_dropout_masks_are_replayed_too():
    """``native_dropout`` is the fused dropout CUDA runs; called directly, it runs on CPU as well."""
    from capsmm import CAPModel
    from capsmm.encoder import CAPEncoder

    class FusedDropout(torch.nn.Module):
        def forward(self, x):
            return torch.native_dropout(x, 0.4, True)[0]

    def model():
        torch.manual_seed(0)
        blocks = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), FusedDropout()),
                  torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), FusedDropout())]
        return CAPModel({"image": CAPEncoder(blocks)}, {"image": (1, 8, 8)}, num_classes=6, mode="caps", pattern_width=16).train()

    plain = build_strategy(model(), TrainConfig(mode="caps", lr=0.01), CPU)
    lean = build_strategy(model(), TrainConfig(mode="caps", memory="lean", lr=0.01, lean_segments=3), CPU)
    x, y = torch.randn(10, 1, 8, 8), torch.arange(10) % 6
    for strategy in (plain, lean):
        torch.manual_seed(3)
        strategy.step(x, y)
    assert lean.segments and all(count > 1 for count in lean.segments.values())  # the blocks were split: the masks were replayed
    for (name, a), b in zip(plain.model.named_parameters(), lean.model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
