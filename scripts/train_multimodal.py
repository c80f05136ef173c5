#!/usr/bin/env python
"""Train an image + audio model: CAP encoders in one shared prototype space (--fusion joint), late
fusion of single-modality models (late), or end-to-end bp over concatenated features (concat-bp).

Records the test error of every modality subset (image, audio, audio+image: inference with a
modality missing), cross-modal retrieval (audio->image, image->audio: recall@1, mAP) and the
vision results' fields. Images and audio are paired by class index; --test-speakers holds FSDD
speakers out for a speaker-independent test.

Examples:
  python scripts/train_multimodal.py --image-dataset fashion-mnist --audio-dataset fsdd --test-speakers lucas --epochs 20
  python scripts/train_multimodal.py --config configs/multimodal_fashion_fsdd.yaml
  python scripts/train_multimodal.py --set multimodal.modalities=[image] --out runs/mm_image   # then add audio:
  python scripts/train_multimodal.py --set multimodal.extend_from=runs/mm_image --out runs/mm_image_plus_audio
"""

from __future__ import annotations

import argparse
import sys

from capsmm.cli import MULTIMODAL_FLAGS, config_parser, guarded, runs_from_args
from capsmm.config import multimodal_schema
from capsmm.distributed import is_main_process
from capsmm.reporting import comparison_report, record_of
from capsmm.training_multimodal import train_multimodal


def build_parser() -> argparse.ArgumentParser:
    return config_parser("train_multimodal.py", __doc__, multimodal_schema(), MULTIMODAL_FLAGS)


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    runs = runs_from_args(args, MULTIMODAL_FLAGS, multimodal_schema())
    results = [train_multimodal(run, resume=args.resume, force=args.force) for run in runs]
    if not is_main_process():
        return 0
    for result in results:
        errors = ", ".join(f"{k} {100 * v:.2f}%" for k, v in result["test_error_by_modality"].items())
        retrieval = ", ".join(f"{k} R@1 {100 * v['recall@1']:.1f}% mAP {100 * v['map']:.1f}%" for k, v in result.get("retrieval", {}).items())
        print(f"{result['fusion']:9s} {result['mode']}: test error {errors}" + (f" | {retrieval}" if retrieval else ""))
    if len(results) > 1:
        print(comparison_report([record_of(r) for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
