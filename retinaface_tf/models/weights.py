"""Model weights: finding them, loading them, and converting the reference's checkpoints.

A model folder holds ``model.weights.h5`` and ``config.yaml`` (what ``convert`` and ``train``
write, and the bundled ``saved_models/mobilenet025``). Weights may also be a ``.weights.h5`` file
or a reference ``.pth`` (read without PyTorch by :mod:`retinaface_tf.convert` and converted in
memory). Every failure is a one-line :class:`~retinaface_tf.errors.WeightsError` or
:class:`~retinaface_tf.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from retinaface_tf.config import Config
from retinaface_tf.convert.mapping import BACKBONE, FULL, CheckpointInfo, assign_checkpoint, identify_checkpoint
from retinaface_tf.convert.torch_weights import load_torch_checkpoint
from retinaface_tf.errors import CheckpointError, WeightsError
from retinaface_tf.fileio import atomic_directory, bundled_model, bundled_model_dir, check_output_folder
from retinaface_tf.models.backbones import build_backbone
from retinaface_tf.models.retinaface import build_from_config

WEIGHTS_FILE = "model.weights.h5"
BACKBONE_FILE = "backbone.weights.h5"
CONFIG_FILE = "config.yaml"
REFERENCE_SUFFIXES = (".pth", ".pt", ".tar")  # read as the reference's PyTorch checkpoints


def resolve_weights(weights: str | os.PathLike | None, config: Config | str | os.PathLike | None = None):
    """Find the weights file and its config.

    ``weights`` may be ``None`` or a bundled model's name (``"mobilenet025"``, from any folder;
    an existing path of that name wins), a folder holding ``model.weights.h5`` and
    ``config.yaml`` (what ``convert`` and ``train`` write), a ``.weights.h5`` file (config from
    ``config`` or a ``config.yaml`` beside it), or a PyTorch RetinaFace ``.pth`` of either family
    (converted in memory; config: its network's preset unless ``config`` is given).
    Returns ``(path, Config)``.
    """
    path = Path(weights) if weights is not None else bundled_model_dir()
    if weights is not None and not os.path.lexists(path):
        path = bundled_model(weights) or path
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file or folder")
    if path.is_dir():
        folder, path = path, path / WEIGHTS_FILE
        if not path.exists():
            raise WeightsError(f"{folder}: folder has no {WEIGHTS_FILE}")
    if config is not None:
        cfg = Config.load(config)
    elif path.suffix in REFERENCE_SUFFIXES:  # a PyTorch checkpoint says which network it is
        cfg = Config.preset(read_checkpoint(path, FULL)[1].backbone)
    elif (path.parent / CONFIG_FILE).exists():
        cfg = Config.from_yaml(path.parent / CONFIG_FILE)
    else:
        cfg = Config.preset("mobilenet025")
    return path, cfg


def _load_keras_weights(model: keras.Model, path: Path) -> None:
    try:
        model.load_weights(str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise WeightsError(f"{path}: cannot load these weights into {model.name}: {reason}") from None


def read_checkpoint(path: str | os.PathLike, kind: str) -> tuple[dict, CheckpointInfo]:
    """A PyTorch checkpoint's tensors and what they are (:func:`identify_checkpoint`), which
    must be of ``kind`` (``full`` or ``backbone``)."""
    path = os.fspath(path)
    state_dict = load_torch_checkpoint(path)
    info = identify_checkpoint(state_dict, path)
    if info.kind != kind:
        hint = ("convert it with `retinaface-tf convert` and pass it as backbone weights" if info.kind == BACKBONE
                else "pass it as full model weights")
        raise CheckpointError(f"{path}: is {info.describe()}, not a {kind} checkpoint: {hint}")
    return state_dict, info


def load_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Full-model weights into ``model``: a ``.weights.h5`` file, or a PyTorch RetinaFace
    ``.pth`` of either family (converted in memory; its network must be ``model``'s)."""
    path = Path(path)
    if path.suffix in REFERENCE_SUFFIXES:
        state_dict, info = read_checkpoint(path, FULL)
        assign_checkpoint(model, state_dict, info, path=str(path))
    else:
        _load_keras_weights(model, path)


def load_backbone_weights(model: keras.Model, path: str | os.PathLike) -> Path:
    """ImageNet weights into the backbone of ``model``: ``backbone.weights.h5`` (or a folder
    holding it, what ``convert`` writes) or the reference's ``.tar``. Returns the file read."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: backbone weights not found")
    body = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    if path.is_dir():
        path = path / BACKBONE_FILE
    if path.suffix in REFERENCE_SUFFIXES:
        state_dict, info = read_checkpoint(path, BACKBONE)
        assign_checkpoint(body, state_dict, info, path=str(path))
    else:
        _load_keras_weights(body, path)
    return path


def load_initial_weights(model: keras.Model, *, weights=None, backbone_weights=None) -> str:
    """Where a training run starts: full model weights (fine-tuning; see :func:`resolve_weights`)
    or backbone weights (:func:`load_backbone_weights`), else from scratch. Returns a
    description."""
    if weights is not None:
        path, _ = resolve_weights(weights)
        load_weights(model, path)
        return f"full model from {path}"
    if backbone_weights is not None:
        return f"backbone from {load_backbone_weights(model, backbone_weights)}"
    return "from scratch"


def load_model(weights: str | os.PathLike | None = None, config: Config | str | None = None):
    """Build the Keras network and load weights (see :func:`resolve_weights`). Returns
    ``(model, config)``."""
    path, cfg = resolve_weights(weights, config)
    model = build_from_config(cfg)
    load_weights(model, path)
    return model, cfg


def convert_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, *, config=None) -> dict:
    """Convert a PyTorch ``checkpoint`` into the model folder ``output/``, atomically.

    The checkpoint says what it is (:func:`identify_checkpoint`: biubug6 or yakhyo RetinaFace,
    or an ImageNet backbone, and which network). ``config`` (a :class:`Config`, name or YAML)
    must then build that network, else a one-line error names both; ``None``: the network's
    preset. Full model → ``output/model.weights.h5``; backbone → ``output/backbone.weights.h5``;
    both with ``output/config.yaml`` (the resolved config). Nothing is written unless every
    tensor maps. ``output`` must be new, empty, or a model folder: only the files convert
    writes, plus a README or licence (carried over); anything else there is an error before any
    work. Returns a summary dict.
    """
    checkpoint = os.fspath(checkpoint)
    cfg = None if config is None else Config.load(config)
    owned = (WEIGHTS_FILE, BACKBONE_FILE, CONFIG_FILE)
    check_output_folder(output, owned=owned)  # before any work: never replace what convert did not write
    state_dict = load_torch_checkpoint(checkpoint)
    info = identify_checkpoint(state_dict, checkpoint)
    if cfg is None:
        cfg = Config.preset(info.backbone)
    elif cfg.model.backbone != info.backbone:
        raise CheckpointError(f"{checkpoint}: is {info.describe()} ({info.evidence}), but config {cfg.name} "
                              f"builds a {cfg.model.backbone} network")
    if info.kind == FULL:
        model = build_from_config(cfg)
        filename = WEIGHTS_FILE
    else:
        model = build_backbone(info.backbone, leaky=cfg.model.backbone_leaky)
        filename = BACKBONE_FILE
    n = assign_checkpoint(model, state_dict, info, path=checkpoint)
    with atomic_directory(output, owned=owned) as tmp:
        model.save_weights(str(Path(tmp) / filename))
        cfg.to_yaml(Path(tmp) / CONFIG_FILE)
    return {"kind": info.kind, "family": info.family, "backbone": info.backbone, "config": cfg.name,
            "tensors": n, "skipped": len(state_dict) - n, "weights": str(Path(output) / filename)}
