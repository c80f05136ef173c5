"""A trained model in use: :func:`load_run` turns a finished run folder back into a model in eval mode
with everything needed to apply it (class names, the input pipeline of its training run, its
modalities), for vision, multimodal and class-incremental runs alike.

The input pipeline (per modality: the input shape, the class names, an image set's per-channel
mean and std, an audio set's sample rate) is written at training time to ``input_pipeline.json`` in
the run folder (:mod:`capsmm.pipeline`). A run written before that file existed has it recomputed from the training set its
config names (so that data must be reachable: ``data_root`` points at it).

How a modality's inputs are read from files and brought to a run's pipeline is the modality's
business: it registers an :class:`InputKind` in :data:`INPUT_KINDS` (images here, audio in
``modalities.audio``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from .checkpoint import load_checkpoint
from .config import RunConfig, config_from_saved, multimodal_schema
from .data.batches import Normalize
from .errors import CapsmmError, CheckpointError, DataError
from .model import CAPModel, CAPOutput, resolve_amp
from .modes import ModeSchedule
from .pipeline import PIPELINE, PIPELINE_FORMAT, describe_inputs
from .registry import Registry
from .trainer import CHECKPOINT, RESULTS

# ---------------------------------------------------------------------------------------------- input kinds


@dataclass(frozen=True)
class InputKind:
    """How one modality's inputs reach a trained model."""

    suffixes: tuple[str, ...]
    """file suffixes that a folder given to ``predict.py`` expands to"""
    read: Callable[[Path, dict[str, Any]], Tensor]
    """one file -> one sample in stored form (as the training batches store it), fitted to the pipeline"""
    conform: Callable[[Tensor, dict[str, Any]], Tensor]
    """stored samples of another data set (N, ...) -> this pipeline's shape"""
    prepare: Callable[[dict[str, Any]], Callable[[Tensor], Tensor]]
    """pipeline -> (stored batch -> model input), the training run's own preparation"""
    scale: float
    """one unit of the input's natural range ([0, 1] pixels, [-1, 1] audio) in stored units"""
    bounds: tuple[float, float]
    """the valid range of a stored value, which perturbations respect"""


#: modality -> how its inputs are read, conformed and prepared
INPUT_KINDS: Registry[InputKind] = Registry("input kind", builtin_modules=("capsmm.inference",))

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def conform_images(images: Tensor, pipeline: dict[str, Any]) -> Tensor:
    """uint8 (N, C, H, W) images of any size and channel count as the pipeline's (C', H', W'):
    colour to grey by luminance (ITU-R 601, as PIL's ``convert("L")``), grey to colour by
    repetition, then resized with antialiasing when the size differs."""
    channels, height, width = pipeline["in_shape"]
    if images.shape[1] == 4:
        images = images[:, :3]  # alpha dropped, as PIL's convert("RGB") does
    if images.shape[1] != channels:
        images = TF.rgb_to_grayscale(images) if channels == 1 else images.expand(-1, 3, -1, -1)
    if tuple(images.shape[2:]) != (height, width):
        images = TF.resize(images, [height, width], antialias=True)
    return images.contiguous()


def read_image(path: Path, pipeline: dict[str, Any]) -> Tensor:
    """One image file of any mode (grey, RGB, RGBA, palette...) as uint8 (C, H, W) of the pipeline,
    prepared as an image-folder training set is read (:func:`capsmm.data.vision.load_image_folder`):
    decoded by PIL, converted (``convert("RGB")``, as torchvision's ImageFolder loader does, or
    ``convert("L")`` for a grey model) and, when its size differs, resized on the PIL image by the
    very function training's ``v2.Resize`` calls. A tensor resize would round some pixels
    differently. ``convert("L")`` of a grey image equals the red channel of ``convert("RGB")``,
    which a grey training set keeps, and PIL resizes each band alike, so a grey model sees the
    pixels training would have given it; a colour image is brought to grey by luminance."""
    from PIL import Image

    channels, height, width = pipeline["in_shape"]
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = TF.resize(image, [height, width], antialias=True)
    array = np.asarray(image)
    return torch.from_numpy(np.array(array[None] if array.ndim == 2 else array.transpose(2, 0, 1), order="C"))  # a writable copy


INPUT_KINDS.register("image")(InputKind(
    suffixes=IMAGE_SUFFIXES, read=read_image, conform=conform_images,
    prepare=lambda pipeline: Normalize(pipeline["mean"], pipeline["std"]), scale=255.0, bounds=(0.0, 255.0)))


def read_input(modality: str, path: Path, pipeline: dict[str, Any]) -> Tensor:
    """One file as a stored sample of ``modality`` fitted to ``pipeline``; an unreadable one is a
    one-line :class:`DataError` naming it. A function of the pipeline alone, so that the worker
    processes of :func:`read_batches` need nothing of the model."""
    try:
        return INPUT_KINDS.get(modality).read(path if isinstance(path, Path) else Path(path), pipeline)
    except CapsmmError:
        raise
    except Exception as error:  # noqa: BLE001 - PIL: UnidentifiedImageError, OSError, DecompressionBombError...; numpy: ValueError
        raise DataError(f"cannot read {modality} file {path} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None


#: one input to predict: modality -> its file
InputFiles = Mapping[str, Path]


@dataclass
class ReadBatch:
    """A batch of inputs as read, ready for :meth:`TrainedModel.predict`."""

    groups: list[tuple[list[int], dict[str, Tensor]]]
    """per set of modalities that inputs give: the positions in the batch of those read, and their
    stored samples stacked (modality -> (N, ...))"""
    errors: list[str]
    """one line for each input that could not be read, in the batch's order"""


def read_batch(batch: Sequence[InputFiles], pipelines: Mapping[str, dict[str, Any]]) -> ReadBatch:
    """Read every file of ``batch``; one that cannot be read drops its input and leaves a line in
    ``errors`` (the other inputs are still read)."""
    read: dict[tuple[str, ...], tuple[list[int], list[dict[str, Tensor]]]] = {}
    errors = []
    for position, files in enumerate(batch):
        try:
            stored = {m: read_input(m, p, pipelines[m]) for m, p in files.items()}
        except DataError as error:
            errors.append(str(error))
            continue
        positions, samples = read.setdefault(tuple(sorted(files)), ([], []))
        positions.append(position)
        samples.append(stored)
    groups = [(positions, {m: torch.stack([s[m] for s in samples]) for m in names}) for names, (positions, samples) in read.items()]
    return ReadBatch(groups, errors)


class _BatchFiles(torch.utils.data.Dataset):
    """Batches of input files as a data set whose n-th sample is the n-th batch read, for a
    DataLoader's workers (without automatic batching, a DataLoader hands a ReadBatch on as it is)."""

    def __init__(self, batches: Sequence[Sequence[InputFiles]], pipelines: Mapping[str, dict[str, Any]]) -> None:
        self.batches, self.pipelines = batches, pipelines

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> ReadBatch:
        return read_batch(self.batches[index], self.pipelines)


def read_batches(inputs: Sequence[InputFiles], pipelines: Mapping[str, dict[str, Any]], batch_size: int,
                 workers: int = 0) -> Iterator[tuple[Sequence[InputFiles], ReadBatch]]:
    """``inputs`` in batches of ``batch_size``, each with its :class:`ReadBatch`, in order.

    With ``workers`` > 0, that many processes (a DataLoader's) read the next batches while the
    caller predicts on this one: decoding small files costs about as much as a small model's
    forward pass, and the two then overlap instead of adding up. The batches, and so every
    prediction, are the same as with ``workers=0``, which reads each batch when it is asked for.
    """
    batches = [inputs[start:start + batch_size] for start in range(0, len(inputs), batch_size)]
    if workers == 0 or len(batches) < 2:  # one batch: nothing to read ahead of
        for batch in batches:
            yield batch, read_batch(batch, pipelines)
        return
    loader = torch.utils.data.DataLoader(_BatchFiles(batches, pipelines), batch_size=None, num_workers=min(workers, len(batches)))
    yield from zip(batches, loader)


# ---------------------------------------------------------------------------------------------- the trained model


@dataclass
class TrainedModel:
    """A finished run's model in eval mode, and what it needs to be applied (see :func:`load_run`)."""

    model: nn.Module
    classes: list[str]
    pipelines: dict[str, dict[str, Any]]
    """modality -> its input pipeline (:func:`describe_inputs`)"""
    config: Any
    """the run's resolved config (a :class:`~capsmm.config.RunConfig` or multimodal run config)"""
    run_dir: Path
    kind: str
    """``vision``, ``multimodal`` or ``incremental``"""
    device: torch.device
    _prepare: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict, repr=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted(self.pipelines))

    def input_kind(self, modality: str) -> InputKind:
        return INPUT_KINDS.get(modality)

    def read(self, modality: str, path: Path) -> Tensor:
        """One file as a stored sample of ``modality`` (an unreadable one is a one-line :class:`DataError`)."""
        return read_input(modality, path, self.pipelines[modality])

    def model_inputs(self, stored: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Stored batches (any subset of the modalities) -> the model's inputs, on its device."""
        unknown = sorted(set(stored) - set(self.pipelines))
        if unknown:
            raise DataError(f"this model takes {', '.join(self.modalities)} inputs, not {', '.join(unknown)}")
        for name in stored:
            self._prepare.setdefault(name, self.input_kind(name).prepare(self.pipelines[name]))
        return {name: self._prepare[name](x.to(self.device)) for name, x in sorted(stored.items())}

    def output(self, stored: Mapping[str, Tensor]) -> CAPOutput:
        """The model's output for stored batches (with gradients if enabled; the model stays in eval mode)."""
        inputs = self.model_inputs(stored)
        return self.model(inputs if len(self.pipelines) > 1 else next(iter(inputs.values())))

    def similarity(self, output: CAPOutput, present: Sequence[str]) -> Tensor | None:
        """(B, C) cosine between the sample's CAP pattern and every class prototype (its CAP
        similarity), or None for a model without prototypes (a layer-local peer)."""
        return cap_similarity(self.model, output, present)

    @torch.inference_mode()
    def predict(self, stored: Mapping[str, Tensor]) -> dict[str, Tensor | None]:
        """``probabilities`` (B, C), ``similarity`` (B, C) or None, ``logits``; for a multimodal model
        given several modalities also each one's own ``probabilities.<modality>`` and, when its joint
        prediction is gated, ``gates`` (M, B)."""
        output = self.output(stored)
        present = sorted(stored)
        result: dict[str, Tensor | None] = {"logits": output.logits.float(), "probabilities": output.logits.float().softmax(1),
                                            "similarity": self.similarity(output, present)}
        if len(present) > 1:
            for name in present:
                result[f"probabilities.{name}"] = self.output({name: stored[name]}).logits.float().softmax(1)
            model = self.model
            if getattr(model, "gated", False) and output.typicality is not None:
                result["gates"] = model.gate.gates(list(output.modalities), output.typicality)
        return result


def cap_similarity(model: nn.Module, output: CAPOutput, present: Sequence[str]) -> Tensor | None:
    """(B, C) cosine of the pattern to every prototype over the present modalities' slices; a late
    fusion of CAP models: the mean of its models' similarities."""
    if isinstance(model, CAPModel):
        if model.head is None:
            return None
        ungated = not (model.gated and output.typicality is not None)
        if model.head.kind == "cosine" and model.mode != "local" and model.class_mask is None and ungated:
            return output.logits.float() * model.head.temperature  # the cosine head's logits are these cosines over tau
        slices = [s for name in model.encoders if name in present for s in model.slices[name]]
        m = torch.cat([p.float() for p in output.patterns], dim=1)
        return F.normalize(m, dim=1) @ F.normalize(model.head.prototype_slices(slices).float(), dim=1).T
    models = getattr(model, "models", None)
    if models is None:
        return None
    parts, start = [], 0
    for name in present:  # LateFusion: patterns come in the present modalities' order, each model's own
        sub = models[name]
        count = len(sub.read_blocks[name])
        parts.append(cap_similarity(sub, CAPOutput(output.logits, output.patterns[start:start + count]), [name]))
        start += count
    return None if any(p is None for p in parts) else torch.stack(parts).mean(0)


# ---------------------------------------------------------------------------------------------- loading


def _finished_results(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a folder; give the folder of a finished run (holding {RESULTS} and {CHECKPOINT})")
    try:
        results = json.loads((run_dir / RESULTS).read_text())
    except OSError:
        raise CheckpointError(f"{run_dir} is not a finished run: it has no {RESULTS} (train it to the end, or give a run folder)") from None
    except ValueError as error:
        raise CheckpointError(f"{run_dir / RESULTS} is unreadable ({error}); give the folder of a finished run") from None
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        raise CheckpointError(f"{run_dir / RESULTS} holds no run config: it was not written by capsmm's training")
    return results


def run_kind(config: Mapping[str, Any]) -> str:
    """``multimodal``, ``incremental`` or ``vision``, from the sections of a saved config."""
    return "multimodal" if "multimodal" in config else "incremental" if "incremental" in config else "vision"


def _schema(kind: str) -> type:
    if kind == "multimodal":
        return multimodal_schema()
    if kind == "incremental":
        from .incremental import IncrementalRunConfig

        return IncrementalRunConfig
    return RunConfig


def rebuild_config(saved: Mapping[str, Any], run_dir: Path) -> Any:
    """The run's config object from its saved dict (an incremental task's ``task`` record aside)."""
    return config_from_saved(_schema(run_kind(saved)), {k: v for k, v in saved.items() if k != "task"}, run_dir)


def _checkpoint_path(run_dir: Path, kind: str, results: Mapping[str, Any]) -> Path:
    """The checkpoint of the finished model: a class-incremental run's is that of its last task."""
    if kind == "incremental":
        return run_dir / f"task-{len(results.get('tasks') or [None]) - 1}" / CHECKPOINT
    return run_dir / CHECKPOINT


def _recomputed_pipelines(config: Any, kind: str) -> dict[str, dict[str, Any]]:
    """The input pipeline of a run written before ``input_pipeline.json`` existed, from its training data."""
    from .data import load_dataset

    sections = {name: getattr(config, name) for name in config.multimodal.modalities} if kind == "multimodal" else {"image": config.data}
    pipelines = {}
    for name, section in sections.items():
        try:
            data = load_dataset(name, section, config.train.seed)  # the subset the run trained on
        except DataError as error:
            raise DataError(f"this run has no {PIPELINE} (an older capsmm), so its input pipeline is recomputed from its training "
                            f"set, which is not reachable: {error}") from None
        pipelines[name] = describe_inputs(data.modal_splits(section)[0], data.in_shape, data.classes, section)
    return pipelines


def _pipelines(run_dir: Path, config: Any, kind: str, data_root: str | None) -> dict[str, dict[str, Any]]:
    path = run_dir / PIPELINE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError as error:
            raise CheckpointError(f"{path} is unreadable ({error}); delete it to recompute it from the training data") from None
        if saved.get("format") != PIPELINE_FORMAT:
            raise CheckpointError(f"{path} has format {saved.get('format')}, this capsmm reads {PIPELINE_FORMAT}: "
                                  "an incompatible capsmm version wrote it")
        return saved["modalities"]
    if data_root:
        for section in ([getattr(config, m) for m in config.multimodal.modalities] if kind == "multimodal" else [config.data]):
            section.root = data_root
    return _recomputed_pipelines(config, kind)


def _build(config: Any, kind: str, pipelines: dict[str, dict[str, Any]]) -> nn.Module:
    """The run's model, built from its config as its training script built it."""
    classes = next(iter(pipelines.values()))["classes"]
    if kind != "multimodal":
        from .training import model_from_config

        return model_from_config(config, len(classes), tuple(pipelines["image"]["in_shape"]))
    from .multimodal import build_fusion_model
    from .training_multimodal import encoder_specs, extend_trained_model

    names = sorted(pipelines)
    specs = encoder_specs(config, {n: tuple(pipelines[n]["in_shape"]) for n in names}, names)
    if config.multimodal.extend_from:
        return extend_trained_model(config, specs, len(classes))[0]
    return build_fusion_model(config.multimodal.fusion, specs, num_classes=len(classes), mode=config.train.mode,
                              head_options=config.model.head_options())


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", *, data_root: str | None = None) -> TrainedModel:
    """The model of a finished run folder, in eval mode on ``device`` (``cpu``, ``cuda``, ``auto``).

    Vision, multimodal (any fusion; a gated joint model predicts gated, as in training) and
    class-incremental runs (the model after the last task). The model runs in the last mode of its
    training schedule, and in the precision its run was trained and tested in (``amp`` in
    results.json: a run made in bf16 predicts in bf16 and reproduces its test error). ``data_root``: where the training data lies, needed only for a run written
    before ``input_pipeline.json`` existed.

    Raises:
        CheckpointError: not a finished run, a corrupted or foreign checkpoint, or a run written by
            an incompatible capsmm version (one line each).
    """
    from .training import resolve_device

    run_dir = Path(run_dir)
    results = _finished_results(run_dir)
    kind = run_kind(results["config"])
    config = rebuild_config(results["config"], run_dir)
    checkpoint = _checkpoint_path(run_dir, kind, results)
    if not checkpoint.is_file():
        raise CheckpointError(f"{run_dir} is not a finished run: {checkpoint.relative_to(run_dir)} is missing")
    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{checkpoint} holds no model state: it is not a capsmm training checkpoint")
    pipelines = _pipelines(run_dir, config, kind, data_root)
    model = _build(config, kind, pipelines)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{checkpoint} does not fit the model its config describes ({str(error).splitlines()[0]}): "
                              "a foreign checkpoint, or one written by an incompatible capsmm version") from None
    model.set_mode(ModeSchedule.parse(config.train.mode).segments[-1][0])
    if kind == "multimodal" and isinstance(model, CAPModel) and model.gate is not None and config.multimodal.gate:
        model.gated = True
    target = resolve_device(str(device))
    model.set_precision(results.get("amp") or resolve_amp(config.train.amp, target))  # results of older runs lack "amp"
    model.to(target).eval()
    classes = next(iter(pipelines.values()))["classes"]
    return TrainedModel(model, list(classes), {k: pipelines[k] for k in sorted(pipelines)}, config, run_dir, kind, target)


__all__ = ["INPUT_KINDS", "InputFiles", "InputKind", "ReadBatch", "TrainedModel", "cap_similarity", "conform_images", "load_run",
           "read_batch", "read_batches", "read_image", "read_input"]
