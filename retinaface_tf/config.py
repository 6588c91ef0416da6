"""Typed, frozen configuration.

Every setting lives in a frozen dataclass. A YAML file (``configs/*.yaml``, shipped as package
data ``retinaface_tf.configs`` so a bare name such as ``mobilenet025_short`` works from any
directory) overrides the config its ``base`` names; ``Config.to_dict`` / ``Config.to_yaml``
write the *resolved* config, which is saved next to every checkpoint and export. Library
functions take explicit keyword arguments, never the whole config: the config is unpacked once,
at the edge (CLI, Detector, training).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from retinaface_tf.errors import RetinaFaceError


class ConfigError(RetinaFaceError):
    """A config file or override is invalid. The message names the file and the field."""


@dataclass(frozen=True)
class AnchorConfig:
    """Anchor (prior) layout, identical to the reference's ``cfg_mnet`` / ``cfg_re50``."""

    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variances: tuple[float, float] = (0.1, 0.2)
    clip: bool = False


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "mobilenet025"  # "mobilenet025" | "resnet50"
    fpn_channels: int = 64
    # LeakyReLU slope in FPN / SSH: the reference uses 0.1 when channels <= 64, else 0 (ReLU).
    fpn_leaky: float = 0.1
    # LeakyReLU slope inside MobileNetV1-0.25 (conv_bn / conv_dw in the reference).
    backbone_leaky: float = 0.1
    num_anchors: int = 2
    # Optional local ImageNet weights for the backbone (.weights.h5 written by `convert`, or a
    # keras.applications ResNet50 .h5). Never downloaded.
    backbone_weights: str | None = None


@dataclass(frozen=True)
class PostprocessConfig:
    """Decode + NMS settings shared by inference, evaluation and every export."""

    score_threshold: float = 0.02
    pre_nms_top_k: int = 5000
    iou_threshold: float = 0.4
    max_detections: int = 750


@dataclass(frozen=True)
class LossConfig:
    match_threshold: float = 0.35
    # The best anchor of each face is forced to match it only if that IoU reaches this.
    force_match_min_iou: float = 0.2
    neg_pos_ratio: int = 7
    loc_weight: float = 2.0
    landmark_weight: float = 1.0


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 640
    rgb_mean: tuple[float, float, float] = (104.0, 117.0, 123.0)  # BGR order, as the reference
    crop_scales: tuple[float, ...] = (0.3, 0.45, 0.6, 0.8, 1.0)
    crop_candidates: int = 250
    mirror_probability: float = 0.5
    shuffle_buffer: int = 1000


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    epochs: int = 250
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_epochs: tuple[int, ...] = (190, 220)
    decay_factor: float = 0.1
    warmup_epochs: int = 0
    mixed_precision: bool = False
    seed: int = 0


@dataclass(frozen=True)
class Config:
    name: str = "mobilenet025"
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def preset(name: str) -> "Config":
        """The reference presets: ``mobilenet025`` (cfg_mnet) and ``resnet50`` (cfg_re50)."""
        if name == "mobilenet025":
            cfg = Config()
        elif name == "resnet50":
            cfg = Config(
                name="resnet50",
                model=ModelConfig(backbone="resnet50", fpn_channels=256, fpn_leaky=0.0),
                data=DataConfig(image_size=840),
                train=TrainConfig(batch_size=24, epochs=100, decay_epochs=(70, 90)),
            )
        else:
            raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        cfg.validate()
        return cfg

    @staticmethod
    def names() -> list[str]:
        """Every config a bare name selects: the presets and the packaged ``configs/*.yaml``."""
        return sorted(set(PRESETS) | set(_packaged_configs()))

    @staticmethod
    def named(name: str, _seen: tuple[str, ...] = ()) -> "Config":
        """A config by name: a preset (``mobilenet025``, ``resnet50``) or a packaged YAML
        (``mobilenet025_short``); an unknown name is an error listing the known ones."""
        if name in PRESETS:
            return Config.preset(name)
        packaged = _packaged_configs()
        if not isinstance(name, str) or name not in packaged:
            raise ConfigError(f"unknown config name {name!r} (known: {', '.join(Config.names())})")
        if name in _seen:
            raise ConfigError(f"{packaged[name]}: field 'base': circular ({' -> '.join((*_seen, name))})")
        return Config.from_yaml(packaged[name], _seen=(*_seen, name))

    @staticmethod
    def from_dict(data: dict[str, Any], source: str = "<dict>", _seen: tuple[str, ...] = ()) -> "Config":
        """Build from a (possibly partial) nested dict on top of a base config; unknown keys,
        wrong types and out-of-range values are errors naming ``source`` and the field.

        The base is ``base`` (a config name) if given, else ``name`` when that names a known
        config, else the preset of ``model.backbone`` (so a saved, complete config with any
        ``name`` loads back as it was)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
        data = dict(data)
        if "base" in data:
            base_name, base_field = data.pop("base"), "base"
        elif isinstance(data.get("name"), str) and data["name"] in Config.names():
            base_name, base_field = data["name"], "name"
        else:
            model = data.get("model")
            backbone = model.get("backbone") if isinstance(model, dict) else None
            base_name, base_field = (backbone if backbone in PRESETS else "mobilenet025"), None
        try:
            base = Config.named(base_name, _seen)
        except ConfigError as exc:
            if base_field is None:
                raise
            raise ConfigError(f"{source}: field '{base_field}': {exc}") from None
        cfg = _merge(base, data, source, prefix="")
        cfg.validate(source)
        return cfg

    @staticmethod
    def from_yaml(path: str | os.PathLike, _seen: tuple[str, ...] = ()) -> "Config":
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
        return Config.from_dict({} if data is None else data, source=path, _seen=_seen)

    @staticmethod
    def load(spec: "str | os.PathLike | Config") -> "Config":
        """A config name (:meth:`names`: ``mobilenet025``, ``resnet50``, ``mobilenet025_short``),
        a YAML path, or a Config as is. Names work from any directory: they are package data."""
        if isinstance(spec, Config):
            return spec
        spec = os.fspath(spec)
        if spec in Config.names():
            return Config.named(spec)
        if spec.endswith((".yaml", ".yml")) or os.sep in spec or "/" in spec or os.path.exists(spec):
            if not os.path.exists(spec):
                raise ConfigError(f"{spec}: no such config file (or give a config name: {', '.join(Config.names())})")
            return Config.from_yaml(spec)
        raise ConfigError(f"unknown config {spec!r}: not a YAML file or a config name "
                          f"(known: {', '.join(Config.names())})")

    def override(self, dotted: dict[str, Any], source: str = "command line") -> "Config":
        """Apply ``{"train.batch_size": 16, ...}`` overrides (values may be YAML strings)."""
        nested: dict[str, Any] = {}
        for key, value in dotted.items():
            if isinstance(value, str):
                value = yaml.safe_load(value)
            node = nested
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        cfg = _merge(self, nested, source, prefix="")
        cfg.validate(source)
        return cfg

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from retinaface_tf.fileio import write_text_atomic
            write_text_atomic(path, text)
        return text

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "config") -> None:
        a, m, p, d = self.anchors, self.model, self.postprocess, self.data
        if len(a.min_sizes) != len(a.steps):
            raise ConfigError(f"{source}: anchors.min_sizes has {len(a.min_sizes)} levels but anchors.steps has {len(a.steps)}")
        if len(a.steps) != 3:
            raise ConfigError(f"{source}: anchors.steps: the network has 3 pyramid levels, got {len(a.steps)}")
        if any(len(s) != m.num_anchors for s in a.min_sizes):
            raise ConfigError(f"{source}: anchors.min_sizes: every level needs model.num_anchors={m.num_anchors} sizes")
        if list(a.steps) != [8, 16, 32]:
            raise ConfigError(f"{source}: anchors.steps must be [8, 16, 32] (the backbone's strides), got {list(a.steps)}")
        if m.backbone not in ("mobilenet025", "resnet50"):
            raise ConfigError(f"{source}: model.backbone must be 'mobilenet025' or 'resnet50', got {m.backbone!r}")
        if m.fpn_channels % 4:
            raise ConfigError(f"{source}: model.fpn_channels must be divisible by 4 (SSH splits it), got {m.fpn_channels}")
        if not 0 < p.iou_threshold <= 1:
            raise ConfigError(f"{source}: postprocess.iou_threshold must be in (0, 1], got {p.iou_threshold}")
        if p.max_detections < 1 or p.pre_nms_top_k < 1:
            raise ConfigError(f"{source}: postprocess.max_detections and pre_nms_top_k must be >= 1")
        # The network and the anchors agree for any size (both use ceil(size / step)); a
        # training size must still put the finest anchor grid on whole pixels. cfg_re50's 840
        # is not a multiple of 32, so the largest step cannot be required.
        if d.image_size < max(a.steps) or d.image_size % min(a.steps):
            raise ConfigError(
                f"{source}: data.image_size={d.image_size} must be a multiple of the smallest step {min(a.steps)} "
                f"and at least the largest step {max(a.steps)}")
        if self.train.batch_size < 1:
            raise ConfigError(f"{source}: train.batch_size must be >= 1, got {self.train.batch_size}")


PRESETS = ("mobilenet025", "resnet50")


# ---------------------------------------------------------------------- helpers

def _packaged_configs() -> dict[str, str]:
    """``{name: path}`` of the YAML files shipped as ``retinaface_tf.configs`` (the checkout's
    ``configs/`` folder when running from source)."""
    folders = []
    try:
        from importlib.resources import files
        folders.append(str(files("retinaface_tf.configs")))
    except (ImportError, TypeError):  # a checkout used without (re)installing
        pass
    folders.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "mobilenet025.yaml")):
            return {f[:-5]: os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".yaml")}
    return {}


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _coerce(value: Any, template: Any, where: str) -> Any:
    """Convert YAML values to the type of the dataclass default (lists → tuples)."""
    if isinstance(template, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = template[0] if template else None
        return tuple(_coerce(v, inner, where) if inner is not None else v for v in value)
    if isinstance(template, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(template, int) and not isinstance(template, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(template, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(template, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _merge(obj: Any, data: dict[str, Any], source: str, prefix: str) -> Any:
    known = {f.name: f for f in fields(obj)}
    changes = {}
    for key, value in data.items():
        where = f"{source}: field '{prefix}{key}'"
        if key not in known:
            raise ConfigError(f"{where}: unknown field (known: {', '.join(known)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping")
            changes[key] = _merge(current, value, source, prefix=f"{prefix}{key}.")
        elif current is None:
            changes[key] = value
        else:
            changes[key] = _coerce(value, current, where)
    return dataclasses.replace(obj, **changes)
