"""The layer-local peers CAPs competes with, as readouts of the same blocks.

Each block of a peer model gets a :class:`PeerReadout` in place of the CAP readout; the block's
input is cut by the same stop-gradient, so every block learns from its own local loss alone.

- **local-loss** (Nøkland & Eidnes 2019, "Training neural networks with local error signals";
  code: anokland/local-loss): per block, ``pred`` = a linear decoder (zero-initialised) on the
  block's output average-pooled to at most ``dim_in_decoder`` features, trained with CE; ``sim`` =
  MSE between the similarity matrix of a projected output (a 3x3 conv for feature maps, a linear
  layer for vectors; both without bias; feature maps reduced to their std over space) and that of
  the one-hot labels; ``predsim`` = ``(1 - beta) pred + beta sim``. The prediction is an output
  layer (linear, zero-initialised) on the last block's output behind a stop-gradient, trained with
  CE, weighted ``1 - beta`` in predsim.
- **DGL** (Belilovsky, Eickenberg & Oyallon 2020, "Decoupled greedy learning of CNNs"; code:
  eugenium/DGL): per block an auxiliary network (its ``mlp-sr`` type: average-pool to a quarter of
  the resolution, ``aux_convs`` 1x1 conv-BN-ReLU layers, average-pool to 2x2, ``aux_mlp_layers``
  linear-BN-ReLU layers, a linear classifier), trained with CE. The last block's auxiliary network
  is the classifier (DGL's has no convs there).

Deviations, for capsmm's blocks to serve every method alike: the auxiliary modules read a block's
output as the block gives it (local-loss reads before dropout; capsmm's ``vgg8b``/``vgg11b`` apply
dropout and pooling at the start of the next block, so their outputs match local-loss's); the
decoder's pooling is adaptive average pooling to local-loss's grid; DGL's MLP width is ``4C``
capped at ``aux_width`` (vector blocks: their width, capped), so that wide layers stay affordable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .encoder import stop_gradient
from .errors import ConfigError

PEER_FAMILIES = ("local-pred", "local-sim", "local-predsim", "dgl")


def similarity_matrix(features: Tensor) -> Tensor:
    """(B, D) -> (B, B): cosine similarity of the rows after centring each (local-loss's adjusted cosine)."""
    centred = features - features.mean(dim=1, keepdim=True)
    unit = centred / (1e-8 + centred.norm(dim=1, keepdim=True))
    return (unit @ unit.T).clamp(-1, 1)


def _spatial(in_shape: Sequence[int]) -> tuple[int, ...]:
    if len(in_shape) not in (1, 2, 3):
        raise ConfigError(f"layer-local peers read vector (D,), sequence (C, L) or feature-map (C, H, W) blocks, got {tuple(in_shape)}")
    return tuple(in_shape[1:])


def _layers(spatial: tuple[int, ...]) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    """(convolution, adaptive average pooling, batch norm) for maps of these spatial dimensions (1-D: tokens)."""
    return (nn.Conv1d, nn.AdaptiveAvgPool1d, nn.BatchNorm1d) if len(spatial) == 1 else (nn.Conv2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d)


def decoder_grid(channels: int, size: int, dim_in_decoder: int) -> tuple[int, int]:
    """local-loss's pooled grid for the pred decoder of a (channels, size, size) map: halve the
    height, then the width, until ``channels * h * w <= dim_in_decoder`` (or the map is one cell high)."""
    ks_h = ks_w = 1
    h = w = size
    while channels * h * w > dim_in_decoder and ks_h < size:
        ks_h *= 2
        h = math.ceil(size / ks_h)
        if channels * h * w > dim_in_decoder:
            ks_w *= 2
            w = math.ceil(size / ks_w)
    return h, w


class Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return rearrange(x, "b ... -> b (...)")


class LocalPredictor(nn.Sequential):
    """local-loss ``pred``: average-pool to at most ``dim_in_decoder`` features, then a zero-initialised linear decoder."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, dim_in_decoder: int) -> None:
        spatial = _spatial(in_shape)
        layers: list[nn.Module] = []
        features = in_shape[0]
        if len(spatial) == 2:
            grid = decoder_grid(in_shape[0], spatial[0], dim_in_decoder)
            layers.append(nn.AdaptiveAvgPool2d(grid))
            features = in_shape[0] * grid[0] * grid[1]
        elif spatial:  # tokens: as many cells as fit in dim_in_decoder
            cells = max(1, min(spatial[0], dim_in_decoder // in_shape[0]))
            layers.append(nn.AdaptiveAvgPool1d(cells))
            features = in_shape[0] * cells
        decoder = nn.Linear(features, num_classes)
        nn.init.zeros_(decoder.weight)
        super().__init__(*layers, Flatten(), decoder)


class SimilarityProjection(nn.Module):
    """local-loss ``sim``: the features whose similarity matrix is matched to the labels' (B, D')."""

    def __init__(self, in_shape: Sequence[int]) -> None:
        super().__init__()
        spatial = _spatial(in_shape)
        channels = in_shape[0]
        conv = _layers(spatial)[0]
        self.project = conv(channels, channels, 3, padding=1, bias=False) if spatial else nn.Linear(channels, channels, bias=False)
        self.std_over_space = bool(spatial) and channels > 3 and spatial[0] > 1

    def forward(self, activation: Tensor) -> Tensor:
        projected = self.project(activation)
        if self.std_over_space:
            return rearrange(projected, "b c ... -> b c (...)").std(dim=2)
        return rearrange(projected, "b ... -> b (...)")


class AuxiliaryNetwork(nn.Sequential):
    """DGL's auxiliary problem for one block (its ``mlp-sr`` type; see the module docstring)."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, convs: int, mlp_layers: int, width: int) -> None:
        spatial = _spatial(in_shape)
        channels = in_shape[0]
        layers: list[nn.Module] = []
        if spatial:
            conv, pool, norm = _layers(spatial)
            layers.append(pool(tuple(math.ceil(s / 4) for s in spatial)))
            for _ in range(convs):
                layers += [conv(channels, channels, 1, bias=False), norm(channels), nn.ReLU(inplace=True)]
            layers.append(pool((2, 2) if len(spatial) == 2 else 4))  # 4 cells either way, as DGL's 2 x 2
            features = 4 * channels
        else:
            features = channels
        layers.append(Flatten())
        hidden = min(features, width)
        for _ in range(mlp_layers):
            layers += [nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            features = hidden
        layers.append(nn.Linear(features, num_classes))
        super().__init__(*layers)


class OutputLayer(nn.Module):
    """local-loss's output layer: a zero-initialised linear classifier on the last block's output,
    behind the stop-gradient, so its CE trains only itself."""

    def __init__(self, in_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(in_shape), num_classes)
        nn.init.zeros_(self.linear.weight)

    def forward(self, activation: Tensor) -> Tensor:
        return self.linear(rearrange(stop_gradient(activation), "b ... -> b (...)"))


class PeerReadout(nn.Module):
    """What a layer-local peer attaches to one block. Its output, the block's *pattern*, is the
    concatenation of its parts (``pred``, ``sim``, ``output``: (B, width) each); :meth:`split`
    takes them apart again, wherever the pattern travelled (a lean leaf, another rank)."""

    def __init__(self, family: str, in_shape: Sequence[int], num_classes: int, *, last: bool, dim_in_decoder: int = 4096,
                 aux_convs: int = 3, aux_mlp_layers: int = 3, aux_width: int = 1024) -> None:
        super().__init__()
        if family not in PEER_FAMILIES:
            raise ConfigError(f"unknown layer-local peer '{family}'; valid: {', '.join(PEER_FAMILIES)}")
        parts: dict[str, nn.Module] = {}
        if family in ("local-pred", "local-predsim"):
            parts["pred"] = LocalPredictor(in_shape, num_classes, dim_in_decoder)
        if family in ("local-sim", "local-predsim"):
            parts["sim"] = SimilarityProjection(in_shape)
        if family == "dgl":
            parts["pred"] = AuxiliaryNetwork(in_shape, num_classes, 0 if last else aux_convs, 2 if last else aux_mlp_layers, aux_width)
        elif last:
            parts["output"] = OutputLayer(in_shape, num_classes)
        self.parts = nn.ModuleDict(parts)
        with torch.no_grad():
            was_training = self.training
            probe = self.eval()._outputs(torch.zeros(2, *in_shape))
            self.train(was_training)
        self.widths = {name: out.shape[1] for name, out in probe.items()}

    def _outputs(self, activation: Tensor) -> dict[str, Tensor]:
        return {name: module(activation) for name, module in self.parts.items()}

    @property
    def width(self) -> int:
        return sum(self.widths.values())

    def forward(self, activation: Tensor) -> Tensor:
        return torch.cat(list(self._outputs(activation).values()), dim=1)

    def split(self, pattern: Tensor) -> dict[str, Tensor]:
        return dict(zip(self.widths, pattern.split(list(self.widths.values()), dim=1)))


def peer_loss(family: str, parts: Sequence[dict[str, Tensor]], targets: Tensor, num_classes: int, beta: float) -> Tensor:
    """The sum over blocks of a peer's local losses, plus its output layer's CE (see the module docstring)."""
    pred_weight, sim_weight = {"local-pred": (1.0, 0.0), "local-sim": (0.0, 1.0), "local-predsim": (1 - beta, beta), "dgl": (1.0, 0.0)}[family]
    label_similarity = similarity_matrix(F.one_hot(targets, num_classes).float()) if sim_weight else None
    loss = torch.zeros((), device=targets.device)
    for block in parts:
        if "pred" in block:
            loss = loss + pred_weight * F.cross_entropy(block["pred"].float(), targets)
        if "sim" in block:
            loss = loss + sim_weight * F.mse_loss(similarity_matrix(block["sim"].float()), label_similarity)
        if "output" in block:
            loss = loss + (1 - beta if family == "local-predsim" else 1.0) * F.cross_entropy(block["output"].float(), targets)
    return loss
