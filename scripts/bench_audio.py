#!/usr/bin/env python
"""Wall time of the audio pipeline per epoch, side by side: the default (audio-cnn over a log-mel
normalised per utterance, no augmentation) against other configurations, and the share of each
epoch spent augmenting the training batches (waveform augmentations run in the batch loader,
SpecAugment inside the front end).

Every configuration trains one epoch on the same FSDD training clips (audio alone, caps), round-robin
over ``--repeats`` rounds; figures are medians.

Example:
  CAPSMM_DATA=../shared/data python scripts/bench_audio.py --set audio.shift=0.1 --set audio.noise_snr=10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from capsmm.cli import OneLineArgumentParser, guarded
from capsmm.config import MultimodalRun, build_runs, multimodal_schema, parse_assignment
from capsmm.data import BatchLoader, load_dataset
from capsmm.multimodal import build_fusion_model
from capsmm.training_multimodal import encoder_specs
from capsmm.strategies import build_strategy
from modalities.audio import AudioDataset

BASE = ["multimodal.modalities=[audio]", "multimodal.anchor=audio", "train.progress=false", "train.device=cpu"]


def epoch_seconds(config: MultimodalRun, data: AudioDataset, augment_only: bool) -> float:
    """One epoch of ``config``'s audio training on ``data`` (or only its batches, augmented: ``augment_only``)."""
    train, _ = data.modal_splits(config.audio)
    loader = BatchLoader(train, config.train.batch_size, shuffle=True, seed=0)
    if augment_only:
        began = time.perf_counter()
        for _ in loader.epoch(0):
            pass
        return time.perf_counter() - began
    torch.manual_seed(0)
    specs = encoder_specs(config, {"audio": data.in_shape}, ["audio"])
    model = build_fusion_model("joint", specs, num_classes=data.num_classes, mode="caps", head_options=config.model.head_options())
    strategy = build_strategy(model, config.train, torch.device("cpu"))
    model.train()
    began = time.perf_counter()
    for inputs, labels in loader.epoch(0):
        strategy.step({"audio": inputs}, labels)
    return time.perf_counter() - began


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="bench_audio.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the configuration to compare with the default")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = {"default": [], "asked": [parse_assignment(text) for text in args.set]}
    configs = {name: build_runs(None, [*BASE, *overrides], multimodal_schema())[0].validate() for name, overrides in settings.items()}
    data = {name: load_dataset("audio", config.audio) for name, config in configs.items()}  # read once, outside the timings
    times: dict[str, dict[str, list[float]]] = {name: {"epoch": [], "batches": []} for name in configs}
    for _ in range(args.repeats):
        for name, config in configs.items():
            times[name]["epoch"].append(epoch_seconds(config, data[name], augment_only=False))
            times[name]["batches"].append(epoch_seconds(config, data[name], augment_only=True))
    print("| audio pipeline | epoch (s) | loading + augmenting the batches (s) | share of the epoch |")
    print("|---|---|---|---|")
    for name, figures in times.items():
        epoch, batches = statistics.median(figures["epoch"]), statistics.median(figures["batches"])
        label = name if name == "default" else ", ".join(args.set) or "default"
        print(f"| {label} | {epoch:.1f} | {batches:.2f} | {batches / epoch:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
