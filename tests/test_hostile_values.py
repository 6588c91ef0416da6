"""Hostile config values and noisy start-up: every config field is checked for type and range,
every problem is ONE line naming the source and the dotted field, the CLI exits 2 with that line
and writes nothing; TensorFlow's C++ start-up lines never reach a CLI user's terminal."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing

import pytest

from conftest import REPO
from retinaface_tf.cli import filtered_stderr, is_tensorflow_log_noise
from retinaface_tf.config import Config, ConfigError

BASE = Config.preset("mobilenet025")


def _dotted_fields() -> list[str]:
    out = []
    for name, hint in typing.get_type_hints(Config).items():
        if dataclasses.is_dataclass(hint):
            out += [f"{name}.{f.name}" for f in dataclasses.fields(hint)]
        else:
            out.append(name)
    return out


# One value per field that must be refused (each a YAML string, as `--set` passes it).
HOSTILE = {
    "name": "''",
    "anchors.min_sizes": "[[16, 32], [64, 128]]",
    "anchors.steps": "[8, 16]",
    "anchors.variances": "[0, 0]",
    "anchors.clip": "maybe",
    "model.backbone": "vgg16",
    "model.fpn_channels": "0",
    "model.fpn_leaky": "-0.1",
    "model.backbone_leaky": ".nan",
    "model.num_anchors": "0",
    "model.backbone_weights": "5",
    "postprocess.score_threshold": "1.5",
    "postprocess.pre_nms_top_k": "0",
    "postprocess.iou_threshold": "0",
    "postprocess.max_detections": "-1",
    "loss.match_threshold": "5",
    "loss.force_match_min_iou": "-0.1",
    "loss.neg_pos_ratio": "-1",
    "loss.loc_weight": "-2",
    "loss.landmark_weight": ".inf",
    "data.image_size": "100",
    "data.bgr_mean": "[104, 117]",
    "data.crop_scales": "[]",
    "data.crop_candidates": "0",
    "data.mirror_probability": "7",
    "data.shuffle_buffer": "0",
    "train.batch_size": "0",
    "train.epochs": "0",
    "train.learning_rate": "-1",
    "train.momentum": "1.5",
    "train.weight_decay": "-0.0005",
    "train.decay_epochs": "[220, 190]",
    "train.decay_factor": "-0.1",
    "train.warmup_epochs": "-1",
    "train.mixed_precision": "1",
    "train.seed": "-1",
}

# The audit's findings, plus their near relatives.
AUDIT = [
    ({"train.epochs": "0"}, "train.epochs", "must be >= 1, got 0"),
    ({"train.learning_rate": "-0.001"}, "train.learning_rate", "must be > 0"),
    ({"train.learning_rate": ".nan"}, "train.learning_rate", "must be a finite number, got nan"),
    ({"train.decay_factor": "-0.1"}, "train.decay_factor", "must be in (0, 1]"),
    ({"train.decay_factor": ".nan"}, "train.decay_factor", "finite"),
    ({"data.mirror_probability": "7"}, "data.mirror_probability", "must be in [0, 1], got 7.0"),
    ({"anchors.variances": "[0, 0]"}, "anchors.variances", "> 0"),
    ({"anchors.variances": "[0.1]"}, "anchors.variances", "list of 2 values"),
    ({"loss.neg_pos_ratio": "-1"}, "loss.neg_pos_ratio", "must be >= 1, got -1"),
    ({"loss.match_threshold": "5"}, "loss.match_threshold", "must be in (0, 1]"),
    ({"data.crop_scales": "[]"}, "data.crop_scales", "non-empty"),
    ({"data.crop_scales": "[0.3, 2]"}, "data.crop_scales", "(0, 1]"),
    ({"data.crop_candidates": "0"}, "data.crop_candidates", "must be >= 1"),
    ({"model.fpn_channels": "0"}, "model.fpn_channels", "positive multiple of 4"),
    ({"model.fpn_channels": "66"}, "model.fpn_channels", "positive multiple of 4"),
    ({"train": "5"}, "train", "expected a mapping"),
    ({"train": "5", "train.epochs": "3"}, "train.epochs", "'train' is also set to a single value"),
    ({"train.epochs": "[1"}, "train.epochs", "invalid YAML value '[1'"),
    ({"train.epochs": "3.5"}, "train.epochs", "expected an integer, got 3.5"),
    ({"train.epochs": "many"}, "train.epochs", "expected an integer, got 'many'"),
    ({"data.image_size": "636"}, "data.image_size", "multiple of the smallest anchor step 8"),
    ({"data.image_size": "16"}, "data.image_size", "at least the largest step 32"),
    ({"anchors.min_sizes": "[[16, 32], [64, 'x'], [256, 512]]"}, "anchors.min_sizes[1][1]", "expected an integer"),
    ({"anchors.min_sizes": "[[16, 32], [64, 0], [256, 512]]"}, "anchors.min_sizes", ">= 1 pixel"),
    ({"train.decay_epochs": "[-1, 20]"}, "train.decay_epochs", "increasing"),
    ({"postprocess": "{iou_threshold: 2}"}, "postprocess.iou_threshold", "(0, 1]"),
    ({"train.nope": "1"}, "train.nope", "unknown field"),
]


def _check_one_line(err: ConfigError, field: str, needle: str, source: str = "command line") -> None:
    msg = str(err)
    assert msg.startswith(f"{source}: field '{field}'"), msg
    assert needle in msg, msg
    assert "\n" not in msg, msg


def test_hostile_table_covers_every_field():
    assert sorted(HOSTILE) == sorted(_dotted_fields())


@pytest.mark.parametrize("field", sorted(HOSTILE))
def test_every_field_refuses_a_hostile_value(field):
    with pytest.raises(ConfigError) as err:
        BASE.override({field: HOSTILE[field]})
    msg = str(err.value)
    assert msg.startswith(f"command line: field '{field}"), msg
    assert "\n" not in msg and len(msg) < 300, msg


@pytest.mark.parametrize("overrides, field, needle", AUDIT, ids=[str(a[0]) for a in AUDIT])
def test_audit_cases_are_one_line_errors(overrides, field, needle):
    with pytest.raises(ConfigError) as err:
        BASE.override(overrides)
    _check_one_line(err.value, field, needle)


def test_exact_message_format():
    with pytest.raises(ConfigError) as err:
        BASE.override({"train.epochs": "0"})
    assert str(err.value) == "command line: field 'train.epochs': must be >= 1, got 0"


@pytest.mark.parametrize("overrides, check", [
    ({"train.learning_rate": "1e-3"}, lambda c: c.train.learning_rate == 0.001),  # YAML 1.1 reads it as text
    ({"train.decay_epochs": "[]"}, lambda c: c.train.decay_epochs == ()),
    ({"train.decay_factor": "1"}, lambda c: c.train.decay_factor == 1.0),
    ({"data.mirror_probability": "0"}, lambda c: c.data.mirror_probability == 0.0),
    ({"data.mirror_probability": "1"}, lambda c: c.data.mirror_probability == 1.0),
    ({"loss.match_threshold": "1"}, lambda c: c.loss.match_threshold == 1.0),
    ({"postprocess.score_threshold": "0"}, lambda c: c.postprocess.score_threshold == 0.0),
    ({"model.backbone_weights": "w.h5"}, lambda c: c.model.backbone_weights == "w.h5"),
    ({"data.image_size": "840"}, lambda c: c.data.image_size == 840),
    ({"train": "{epochs: 3, batch_size: 2}"}, lambda c: (c.train.epochs, c.train.batch_size) == (3, 2)),
])
def test_boundary_values_are_accepted(overrides, check):
    assert check(BASE.override(overrides))


def test_optional_field_can_be_reset_to_null():
    with_weights = BASE.override({"model.backbone_weights": "w.h5"})
    assert with_weights.override({"model.backbone_weights": "null"}).model.backbone_weights is None


def test_validate_checks_a_config_built_in_code():
    bad_type = dataclasses.replace(BASE, train=dataclasses.replace(BASE.train, epochs="3"))
    with pytest.raises(ConfigError) as err:
        bad_type.validate()
    _check_one_line(err.value, "train.epochs", "expected an integer, got '3'", source="config")
    bad_range = dataclasses.replace(BASE, data=dataclasses.replace(BASE.data, crop_scales=()))
    with pytest.raises(ConfigError) as err:
        bad_range.validate("mine")
    _check_one_line(err.value, "data.crop_scales", "non-empty", source="mine")


@pytest.mark.parametrize("text, field, needle", [
    ("train: 5\n", "train", "expected a mapping"),
    ("train:\n  learning_rate: .nan\n", "train.learning_rate", "finite"),
    ("anchors:\n  variances: [0.1, 0]\n", "anchors.variances", "> 0"),
    ("data:\n  crop_candidates: 0\n", "data.crop_candidates", ">= 1"),
    ("model:\n  backbone_weights: [a]\n", "model.backbone_weights", "expected a string"),
])
def test_yaml_file_errors_name_file_and_field(tmp_path, text, field, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        Config.from_yaml(path)
    _check_one_line(err.value, field, needle, source=str(path))


@pytest.mark.parametrize("content", [b"train: [1, 2\n", b"\xff\xfe\x00bad", b"- just\n- a list\n", b"a: b: c\n"])
def test_unreadable_yaml_is_one_line(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        Config.from_yaml(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


# ---------------------------------------------------------------------- the real command line

def _cli(*args, cwd, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the CLI's own default
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "retinaface_tf", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, field", [
    (["--set", "train.epochs=0"], "train.epochs"),
    (["--set", "data.crop_scales=[]"], "data.crop_scales"),
    (["--set", "train=5", "--epochs", "3"], "train.epochs"),
    (["--set", "anchors.variances=[0,0]"], "anchors.variances"),
    (["--set", "data.image_size=100"], "data.image_size"),
    (["--set", "train.learning_rate=.nan"], "train.learning_rate"),
])
def test_train_cli_refuses_hostile_values_with_one_line(tmp_path, args, field):
    out = tmp_path / "run"
    proc = _cli("train", "--output", str(out), "--label-file", "nowhere.txt", "--images", ".", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"retinaface-tf train: error: command line: field '{field}'"), lines[0]
    assert proc.stdout == "" and not out.exists()


def test_train_cli_malformed_yaml_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [3\n")
    proc = _cli("train", "--output", str(tmp_path / "run"), "--config", str(bad), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and f"{bad}: line" in proc.stderr
    assert "invalid YAML" in proc.stderr and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- TensorFlow start-up lines

@pytest.mark.parametrize("line, level, noise", [
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", 3, True),
    ("I0000 00:00:1795291276.491261    4251 port.cc:153] oneDNN custom operations are on.", 3, True),
    ("I0000 00:00:1795291276.491667    4251 cudart_stub.cc:31] Could not find cuda drivers", 3, True),
    ("E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory", 3, True),
    ("2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find", 3, True),
    ("E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory", 2, False),
    ("I0000 00:00:1795291276.491261    4251 port.cc:153] oneDNN custom operations are on.", 0, False),
    ("F0000 00:00:1795291276.491261    4251 foo.cc:1] fatal", 3, False),
    ("retinaface-tf detect: error: photo.jpg: no such file", 3, False),
    ("Traceback (most recent call last):", 3, False),
    ("Info: a line of ours", 3, False),
])
def test_tensorflow_log_noise_follows_min_log_level(line, level, noise):
    assert is_tensorflow_log_noise(line, level) is noise


def test_filtered_stderr_drops_cpp_log_lines_and_keeps_the_rest(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    with filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1795291276.491261    4251 port.cc:153] oneDNN custom operations are on.\n"
                    b"kept: a python warning\n")
        print("kept: via sys.stderr", file=sys.stderr)
    # (under pytest, sys.stderr bypasses file descriptor 2, so only the set is compared)
    assert sorted(capfd.readouterr().err.splitlines()) == ["kept: a python warning", "kept: via sys.stderr"]


def test_detect_prints_no_tensorflow_start_up_lines(tmp_path):
    """`import tensorflow` alone writes six C++ log lines on this kind of machine; none may
    reach the user of `retinaface-tf detect` on its defaults."""
    proc = _cli("detect", "--no-draw", "--output", str(tmp_path / "out"), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "detections.json").exists()
    assert proc.stderr.splitlines() == [], proc.stderr[-3000:]
