"""Typed, frozen configuration.

Every setting lives in a frozen dataclass. A YAML file (``configs/*.yaml``, shipped as package
data ``retinaface_tf.configs`` so a bare name such as ``mobilenet025_short`` works from any
directory) overrides the config its ``base`` names; every field is checked for type and range
(``Config.validate``), and each problem is a one-line ``ConfigError`` naming the source and the
dotted field. ``Config.to_dict`` / ``Config.to_yaml`` write the *resolved* config, which is
saved next to every checkpoint and export. Library functions take explicit keyword arguments,
never the whole config: the config is unpacked once, at the edge (CLI, Detector, training).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Any

import yaml

from retinaface_tf.constants import BGR_MEAN
from retinaface_tf.errors import ConfigError
from retinaface_tf.fileio import read_regular_file, write_text_atomic

# A config is a few kB of YAML: a file (or one --set value) past these is refused before parsing.
MAX_CONFIG_BYTES = 1 << 20
MAX_OVERRIDE_CHARS = 64 << 10


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing aliases (``*name``): a config never needs them, and a few
    lines of nested aliases expand to billions of nodes (a "billion laughs" bomb). Without
    aliases a document has at most as many nodes as it has bytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{str(event.anchor)[:40]}) are not allowed in a config; write the value out",
                event.start_mark)
        return super().compose_node(parent, index)


def _load_yaml(text: str):
    """YAML without aliases (:class:`_NoAliasLoader`); a document nested too deeply for the
    parser is a ``yaml.YAMLError`` like any other malformed one."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


@dataclass(frozen=True)
class AnchorConfig:
    """Anchor (prior) layout, identical to the reference's ``cfg_mnet`` / ``cfg_re50``."""

    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variances: tuple[float, float] = (0.1, 0.2)
    clip: bool = False


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "mobilenet025"  # one of BACKBONES (retinaface_tf.models.backbones)
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
    bgr_mean: tuple[float, float, float] = BGR_MEAN  # (B, G, R), as the reference; read as rgb_mean too
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
        """A preset: one per backbone, each its source's recipe (:data:`PRESETS`):
        ``mobilenet025`` (biubug6 cfg_mnet), ``resnet50`` (biubug6 cfg_re50), ``mobilenet050``,
        ``mobilenet100``, ``mobilenetv2``, ``resnet18``, ``resnet34`` (yakhyo/retinaface-pytorch's
        configs: FPN and SSH at 128 channels with ReLU)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        changes = _PRESET_CHANGES[name]
        cfg = Config(name=name, model=ModelConfig(backbone=name, **changes.get("model", {})),
                     data=DataConfig(**changes.get("data", {})), train=TrainConfig(**changes.get("train", {})))
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
        if isinstance(name, str) and name in PRESETS:
            return Config.preset(name)
        packaged = _packaged_configs()
        if not isinstance(name, str) or name not in packaged:
            raise ConfigError(f"unknown config name {_show(name)} (known: {', '.join(Config.names())})")
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
            raise ConfigError(f"{source}: top level must be a mapping, got {_show(data)}")
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
        raw = read_regular_file(path, max_bytes=MAX_CONFIG_BYTES, what="config file", error=ConfigError)
        try:
            data = _load_yaml(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: cannot read config: not a UTF-8 text file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}:{_yaml_where(exc)} invalid YAML: {_yaml_problem(exc)}") from None
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
        raise ConfigError(f"unknown config {_cut(spec)}: not a YAML file or a config name "
                          f"(known: {', '.join(Config.names())})")

    def override(self, dotted: dict[str, Any], source: str = "command line") -> "Config":
        """Apply ``{"train.batch_size": 16, ...}`` overrides (values may be YAML strings)."""
        nested: dict[str, Any] = {}
        for key, value in dotted.items():
            key = str(key)
            if len(key) > 200:
                raise ConfigError(f"{source}: field {_cut(key)}: no such field")
            if isinstance(value, str):
                if len(value) > MAX_OVERRIDE_CHARS:
                    raise ConfigError(f"{source}: field '{key}': value of {len(value)} characters {_cut(value)} is "
                                      f"longer than any config value ({MAX_OVERRIDE_CHARS})")
                try:
                    value = _load_yaml(value)
                except yaml.YAMLError as exc:
                    raise ConfigError(f"{source}: field '{key}': invalid YAML value {_cut(value)}: "
                                      f"{_yaml_problem(exc)}") from None
            node = nested
            parts = key.split(".")
            for i, part in enumerate(parts[:-1]):
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    section = ".".join(parts[:i + 1])
                    raise ConfigError(f"{source}: field '{key}': '{section}' is also set to a single value "
                                      f"({_show(node)}); it is a section")
            if isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict):
                raise ConfigError(f"{source}: field '{key}': expected a mapping (it is a section), got {_show(value)}")
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
            write_text_atomic(path, text)
        return text

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "config") -> None:
        """Check every field's type and range; the first problem is a one-line
        ``ConfigError``: ``SOURCE: field 'SECTION.NAME': must be ..., got VALUE``."""
        # Types first (a Config built in code skips _merge's conversion), then ranges.
        for name, hint in _hints(Config).items():
            value = getattr(self, name)
            if dataclasses.is_dataclass(hint):
                if not isinstance(value, hint):
                    raise ConfigError(f"{source}: field '{name}': expected a mapping, got {_show(value)}")
                for sub, sub_hint in _hints(hint).items():
                    _coerce(getattr(value, sub), sub_hint, f"{source}: field '{name}.{sub}'")
            else:
                _coerce(value, hint, f"{source}: field '{name}'")

        def need(ok: bool, where: str, requirement: str, value: Any) -> None:
            if not ok:
                raise ConfigError(f"{source}: field '{where}': {requirement}, got {_show(value)}")

        a, m, p, lo, d, t = self.anchors, self.model, self.postprocess, self.loss, self.data, self.train
        need(bool(self.name.strip()), "name", "must be a non-empty string", self.name)

        need(m.backbone in BACKBONES, "model.backbone", f"must be one of {', '.join(BACKBONES)}", m.backbone)
        need(m.fpn_channels >= 4 and m.fpn_channels % 4 == 0, "model.fpn_channels",
             "must be a positive multiple of 4 (SSH splits it)", m.fpn_channels)
        _range(need, "model.fpn_leaky", m.fpn_leaky, 0, 1)
        _range(need, "model.backbone_leaky", m.backbone_leaky, 0, 1)
        need(m.num_anchors >= 1, "model.num_anchors", "must be >= 1", m.num_anchors)
        need(m.backbone_weights is None or bool(m.backbone_weights.strip()), "model.backbone_weights",
             "must be a file path or null", m.backbone_weights)

        # anchors: the backbone's three strides; num_anchors positive sizes per level.
        need(list(a.steps) == [8, 16, 32], "anchors.steps", "must be [8, 16, 32] (the backbone's strides)", a.steps)
        need(len(a.min_sizes) == len(a.steps), "anchors.min_sizes",
             f"needs one list of sizes per anchor step ({len(a.steps)} levels)", a.min_sizes)
        need(all(len(s) == m.num_anchors for s in a.min_sizes), "anchors.min_sizes",
             f"every level needs model.num_anchors={m.num_anchors} sizes", a.min_sizes)
        need(all(v >= 1 for s in a.min_sizes for v in s), "anchors.min_sizes", "sizes must be >= 1 pixel", a.min_sizes)
        need(all(v > 0 for v in a.variances), "anchors.variances", "must both be > 0", a.variances)

        _range(need, "postprocess.score_threshold", p.score_threshold, 0, 1)
        need(p.pre_nms_top_k >= 1, "postprocess.pre_nms_top_k", "must be >= 1", p.pre_nms_top_k)
        _range(need, "postprocess.iou_threshold", p.iou_threshold, 0, 1, low_open=True)
        need(p.max_detections >= 1, "postprocess.max_detections", "must be >= 1", p.max_detections)

        _range(need, "loss.match_threshold", lo.match_threshold, 0, 1, low_open=True)
        _range(need, "loss.force_match_min_iou", lo.force_match_min_iou, 0, 1)
        need(lo.neg_pos_ratio >= 1, "loss.neg_pos_ratio", "must be >= 1", lo.neg_pos_ratio)
        need(lo.loc_weight >= 0, "loss.loc_weight", "must be >= 0", lo.loc_weight)
        need(lo.landmark_weight >= 0, "loss.landmark_weight", "must be >= 0", lo.landmark_weight)

        # The network and the anchors agree for any size (both use ceil(size / step)); a
        # training size must still put the finest anchor grid on whole pixels. cfg_re50's 840
        # is not a multiple of 32, so the largest step cannot be required.
        need(d.image_size >= max(a.steps) and d.image_size % min(a.steps) == 0, "data.image_size",
             f"must be a multiple of the smallest anchor step {min(a.steps)} and at least the largest step "
             f"{max(a.steps)}", d.image_size)
        need(all(0 <= v <= 255 for v in d.bgr_mean), "data.bgr_mean", "must be 3 pixel values in [0, 255]", d.bgr_mean)
        need(len(d.crop_scales) >= 1 and all(0 < v <= 1 for v in d.crop_scales), "data.crop_scales",
             "must be a non-empty list of fractions in (0, 1]", d.crop_scales)
        need(d.crop_candidates >= 1, "data.crop_candidates", "must be >= 1", d.crop_candidates)
        _range(need, "data.mirror_probability", d.mirror_probability, 0, 1)
        need(d.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1", d.shuffle_buffer)

        need(t.batch_size >= 1, "train.batch_size", "must be >= 1", t.batch_size)
        need(t.epochs >= 1, "train.epochs", "must be >= 1", t.epochs)
        need(t.learning_rate > 0, "train.learning_rate", "must be > 0", t.learning_rate)
        need(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)", t.momentum)
        need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0", t.weight_decay)
        need(all(e >= 0 for e in t.decay_epochs) and all(x < y for x, y in zip(t.decay_epochs, t.decay_epochs[1:])),
             "train.decay_epochs", "must be increasing epoch numbers >= 0", t.decay_epochs)
        _range(need, "train.decay_factor", t.decay_factor, 0, 1, low_open=True)
        need(t.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0", t.warmup_epochs)
        need(0 <= t.seed < 2**32, "train.seed", "must be in [0, 2**32)", t.seed)


# One preset per backbone: what differs from the defaults (cfg_mnet). FPN / SSH use LeakyReLU 0.1
# at <= 64 channels, else ReLU (both sources' rule).
_YAKHYO_128 = {"fpn_channels": 128, "fpn_leaky": 0.0}
_PRESET_CHANGES = {
    "mobilenet025": {},
    "mobilenet050": {"model": _YAKHYO_128},
    "mobilenet100": {"model": _YAKHYO_128},
    "mobilenetv2": {"model": _YAKHYO_128},
    "resnet18": {"model": _YAKHYO_128, "train": {"epochs": 150, "decay_epochs": (70, 90)}},
    "resnet34": {"model": _YAKHYO_128, "train": {"epochs": 100, "decay_epochs": (70, 90)}},
    "resnet50": {"model": {"fpn_channels": 256, "fpn_leaky": 0.0}, "data": {"image_size": 840},
                 "train": {"batch_size": 24, "epochs": 100, "decay_epochs": (70, 90)}},
}
BACKBONES = tuple(_PRESET_CHANGES)
PRESETS = BACKBONES
# Fields renamed since configs were first saved: the old dotted name is still read (a run's or
# model's saved config.yaml keeps loading), as the new field. ``rgb_mean`` always held BGR values.
RENAMED_FIELDS = {"data.rgb_mean": "data.bgr_mean"}


# ---------------------------------------------------------------------- helpers

def _packaged_configs() -> dict[str, str]:
    """``{name: path}`` of the YAML files shipped as ``retinaface_tf.configs`` (the checkout's
    ``configs/`` folder when running from source)."""
    folders = []
    try:
        folders.append(str(files("retinaface_tf.configs")))
    except (ImportError, TypeError):  # a checkout used without (re)installing
        pass
    folders.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "mobilenet025.yaml")):
            return {f[:-5]: os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".yaml")}
    return {}


def _range(need, where: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = (low < value if low_open else low <= value) and value <= high
    need(ok, where, f"must be in {'(' if low_open else '['}{low}, {high}]", value)


def _yaml_where(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" line {mark.line + 1}" if mark is not None else ""


def _yaml_problem(exc: Exception) -> str:
    return _cut(" ".join(str(getattr(exc, "problem", None) or exc).split()), 200, quote=False)


_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
for _name, _value in dict(maxlevel=3, maxdict=4, maxlist=6, maxtuple=6, maxset=4, maxstring=60, maxlong=40,
                          maxother=60).items():
    setattr(_SHORT, _name, _value)


def _show(value: Any) -> str:
    """A short, cut excerpt of ``value`` for a message: never the whole of a large value (the
    value is not expanded or copied to be shown)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = _to_plain(value)
    return _cut(_SHORT.repr(value), 80, quote=False)


def _cut(text: Any, limit: int = 80, *, quote: bool = True) -> str:
    """``repr(text)`` (or ``text`` itself with ``quote=False``) cut to about ``limit`` characters."""
    text = str(text)
    if quote:
        shown = repr(text[:limit])
        return shown if len(text) <= limit else shown + "..."
    return text if len(text) <= limit else text[:limit - 3] + "..."


@lru_cache(maxsize=None)
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# YAML 1.1 (PyYAML) reads "1e-3" as a string; a float field accepts it as the number it means.
_EXPONENT_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field type ``hint`` (lists → tuples, ints → floats), or a
    ``ConfigError`` naming ``where``. Floats must be finite."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [h for h in args if h is not type(None)]
        return _coerce(value, inner, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            inner = [args[0]] * len(value)
        else:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected a list of {len(args)} values, got {_show(value)}")
            inner = list(args)
        return tuple(_coerce(v, h, f"{where[:-1]}[{i}]'" if where.endswith("'") else f"{where}[{i}]")
                     for i, (v, h) in enumerate(zip(value, inner)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if hint is int:  # numpy integers too; never a bool
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        return int(value)
    if hint is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{where}: expected a number, got {_show(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {_show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        return value
    raise TypeError(f"config field type {hint!r} has no conversion")  # a programming error


def _merge(obj: Any, data: dict[str, Any], source: str, prefix: str) -> Any:
    hints = _hints(type(obj))
    changes = {}
    for key, value in data.items():
        where = f"{source}: field '{prefix}{key}'"
        renamed = RENAMED_FIELDS.get(f"{prefix}{key}")
        if renamed is not None:
            key = renamed[len(prefix):]
            if key in data:
                raise ConfigError(f"{where}: is the old name of '{renamed}', which is set too; keep one")
        if key not in hints:
            raise ConfigError(f"{where}: unknown field (known: {', '.join(hints)})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping (it is a section), got {_show(value)}")
            changes[key] = _merge(getattr(obj, key), value, source, prefix=f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, hint, where)
    return dataclasses.replace(obj, **changes)
