"""A run's input pipeline, saved beside its checkpoint: what applying the model to new inputs needs
from the training data (:func:`capsmm.inference.load_run` reads it back)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_json
from .data import ModalSplit
from .data.batches import Normalize

#: the file in a run folder that holds its input pipeline
PIPELINE = "input_pipeline.json"
#: its layout; a file of another format was written by an incompatible capsmm version
PIPELINE_FORMAT = 1


def describe_inputs(split: ModalSplit, in_shape: Sequence[int], classes: Sequence[str], section: Any) -> dict[str, Any]:
    """What applying a model to new inputs of one modality needs from its training data: the input
    shape and class names; images, the normalisation of ``split`` (the training set's channel mean
    and std); audio, the sample rate of ``section``."""
    pipeline: dict[str, Any] = {"in_shape": [int(n) for n in in_shape], "classes": [str(c) for c in classes]}
    if isinstance(split.prepare, Normalize):
        pipeline |= {"mean": split.prepare.mean.flatten().tolist(), "std": split.prepare.std.flatten().tolist()}
    if hasattr(section, "sample_rate"):
        pipeline["sample_rate"] = int(section.sample_rate)
    return pipeline


def save_input_pipeline(out_dir: Path, pipelines: Mapping[str, dict[str, Any]]) -> None:
    """Write ``input_pipeline.json`` (atomically) into the folder of a finished run, unless it holds
    that very file already: rerunning a finished run rewrites nothing."""
    path = Path(out_dir) / PIPELINE
    content = {"format": PIPELINE_FORMAT, "modalities": json.loads(json.dumps(dict(pipelines)))}
    try:
        if json.loads(path.read_text()) == content:
            return
    except (OSError, ValueError):
        pass
    atomic_write_json(path, content)
