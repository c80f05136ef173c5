import pytest
import torch

from capsmm.readout import CAPReadout, pooling_grid


@pytest.mark.parametrize(
    "channels, spatial, width, grid",
    [
        (64, (28, 28), 1024, (4, 4)),
        (128, (14, 14), 1024, (2, 4)),
        (256, (7, 7), 1024, (2, 2)),
        (512, (2, 2), 1024, (1, 2)),
        (1024, (4, 4), 1024, (1, 1)),
        (2048, (2, 2), 1024, (1, 1)),
        (3000, (), 1024, ()),
        (32, (100,), 1024, (32,)),
        (128, (16, 8), 1024, (4, 2)),  # the longer grid side follows the longer spatial side
    ],
)
def test_pooling_grid(channels, spatial, width, grid):
    assert pooling_grid(channels, spatial, width) == grid


@pytest.mark.parametrize("shape", [(3000,), (10,), (64, 28, 28), (128, 7, 7), (512, 1, 1), (96, 5, 5), (2048, 2, 2), (40, 50)])
@pytest.mark.parametrize("norm", ["batchnorm", "layernorm", "none"])
def test_every_activation_shape_reads_out_to_the_fixed_width(shape, norm):
    readout = CAPReadout(shape, width=1024, norm=norm)
    assert readout(torch.randn(4, *shape)).shape == (4, 1024)


def test_pooling_is_spatial_average_per_channel_when_channels_divide_width():
    # a map whose value is constant within each channel pools to that value in each of its cells
    channels = torch.arange(64, dtype=torch.float32)
    activation = channels.view(1, 64, 1, 1).expand(2, 64, 28, 28)
    pooled = CAPReadout((64, 28, 28), width=1024, norm="none").pool(activation)
    assert torch.equal(pooled[0], channels.repeat_interleave(16))


def test_pooling_averages_each_grid_cell():
    activation = torch.randn(3, 64, 8, 8)
    pooled = CAPReadout((64, 8, 8), width=1024, norm="none").pool(activation)
    expected = activation.view(3, 64, 4, 2, 4, 2).mean(dim=(3, 5)).reshape(3, 1024)
    torch.testing.assert_close(pooled, expected)


def test_wide_vectors_average_neighbouring_units():
    # 2048 units -> 1024: each output is the mean of two neighbours
    activation = torch.randn(5, 2048)
    pooled = CAPReadout((2048,), width=1024, norm="none").pool(activation)
    torch.testing.assert_close(pooled, activation.view(5, 1024, 2).mean(-1))


def test_batchnorm_readout_standardises_each_dimension_in_training():
    readout = CAPReadout((64, 8, 8), width=1024, norm="batchnorm").train()
    out = readout(torch.rand(256, 64, 8, 8) * 5 + 3)
    torch.testing.assert_close(out.mean(0), torch.zeros(1024), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(1024), atol=1e-2, rtol=0)


def test_layernorm_readout_standardises_each_sample():
    out = CAPReadout((3000,), width=1024, norm="layernorm")(torch.rand(4, 3000) * 7)
    torch.testing.assert_close(out.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
