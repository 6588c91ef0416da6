"""TF Serving models: ``NAME/<version>/`` SavedModel folders, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf
import yaml

from retinaface_tf.errors import ExportError
from retinaface_tf.fileio import atomic_directory
from retinaface_tf.models.fused import fuse_for_inference
from retinaface_tf.serving.module import (ExportSettings, build_export_module, export_info, network_order,
                                          resolved_config)

SAVED_MODEL_ENTRIES = ("saved_model.pb", "variables", "assets", "assets.extra", "fingerprint.pb")


def next_version(model_dir: str | os.PathLike) -> int:
    """1 + the highest numeric version folder under ``model_dir`` (1 when there is none)."""
    model_dir = Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise ExportError(f"{model_dir}: exists and is not a folder")
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def saved_model_network(model, config, channel_order: str = "rgb") -> tuple:
    """What :func:`export_saved_model` saves: ``(network, network_order)``.

    :func:`~retinaface_tf.models.fused.fuse_for_inference` of ``model`` (batch norm folded into
    the convolutions, bias and activation in fusable patterns, merged heads; for MobileNetV1-0.25
    and RGB input the channel flip folded into the first convolution) with **native depthwise
    convolutions**: the grouped form the Detector uses with oneDNN fails in a TensorFlow without
    it ("Fused conv implementation does not support grouped convolutions"), and a TF Serving
    build may lack oneDNN. Same outputs as ``model`` to float rounding."""
    order = network_order(config, channel_order)
    return fuse_for_inference(model, depthwise="native", input_order=order), order


def export_saved_model(model, config, output: str | os.PathLike, settings: ExportSettings, *,
                       version: int | None = None, fuse: bool = True) -> Path:
    """Write a TF Serving model ``output/<version>/`` (SavedModel with the signatures of the
    module docstring) and return the version folder.

    ``version`` ``None`` takes the next free number (1 for a new model), so TF Serving picks
    the new export up; an explicit existing version is replaced. The folder appears in one
    rename once complete (a failed export leaves what was there). ``assets.extra/config.yaml``
    holds the resolved config, ``assets.extra/export.yaml`` the export settings and signatures.

    The graph saved runs :func:`saved_model_network` of ``model`` (``fuse=False``: ``model`` as it
    is, the slower graph of earlier versions). A SavedModel is for serving: its variables are the
    folded inference weights, not a checkpoint to train from.
    """
    output = Path(output)
    version = next_version(output) if version is None else int(version)
    if version < 1:
        raise ExportError(f"--version must be >= 1, got {version}")
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output}: exists and is not a folder")
    network, order = saved_model_network(model, config, settings.channel_order) if fuse else (model, "bgr")
    module = build_export_module(network, config, settings, network_order=order)
    signatures = module.signatures()
    target = output / str(version)
    # an existing version folder is replaced only when it is a SavedModel this command wrote
    ours = (target / "saved_model.pb").is_file() and (target / "assets.extra" / "export.yaml").is_file()
    with atomic_directory(target, owned=SAVED_MODEL_ENTRIES if ours else None, companions=()) as tmp:
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        resolved_config(config, settings).to_yaml(extra / "config.yaml")
        info = export_info("saved_model", settings, version=version, network=network.name, signatures={
            name: {"inputs": sorted(spec.name for spec in tf.nest.flatten(fn.structured_input_signature)),
                   "outputs": sorted(fn.structured_outputs)}
            for name, fn in signatures.items()})
        (extra / "export.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    return target
