import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from retinaface_tf.config import Config, ConfigError
from conftest import REPO


@pytest.mark.parametrize("name", ["mobilenet025", "mobilenet050", "mobilenet100", "mobilenetv2", "resnet18", "resnet34",
                                  "resnet50"])
def test_yaml_files_equal_presets(name):
    assert Config.from_yaml(REPO / "configs" / f"{name}.yaml") == Config.preset(name)


def test_reference_values():
    m = Config.preset("mobilenet025")
    assert m.anchors.min_sizes == ((16, 32), (64, 128), (256, 512))
    assert m.anchors.steps == (8, 16, 32) and m.anchors.variances == (0.1, 0.2)
    assert (m.model.fpn_channels, m.data.image_size, m.model.fpn_leaky) == (64, 640, 0.1)
    r = Config.preset("resnet50")
    assert (r.model.fpn_channels, r.data.image_size, r.train.batch_size, r.model.fpn_leaky) == (256, 840, 24, 0.0)


def test_roundtrip_and_overrides(tmp_path):
    cfg = Config.preset("mobilenet025").override({"train.batch_size": "16", "postprocess.iou_threshold": 0.3})
    assert cfg.train.batch_size == 16 and cfg.postprocess.iou_threshold == 0.3
    cfg.to_yaml(tmp_path / "c.yaml")
    assert Config.from_yaml(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("text, needle", [
    ("data:\n  image_size: 630\n", "field 'data.image_size': must be a multiple of the smallest anchor step 8"),
    ("train:\n  batch_sise: 3\n", "field 'train.batch_sise': unknown field"),
    ("train:\n  batch_size: many\n", "field 'train.batch_size': expected an integer"),
    ("model: [1, 2\n", "line"),
    ("base: mobilenet3\n", "field 'base': unknown config name 'mobilenet3'"),
])
def test_bad_config_names_file_and_field(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        Config.from_yaml(path)
    msg = str(err.value)
    assert str(path) in msg and needle in msg and "\n" not in msg


# ---------------------------------------------------------------------- packaged configs (by name)

def test_names_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert Config.names() == ["mobilenet025", "mobilenet025_short", "mobilenet025_short_plus", "mobilenet050", "mobilenet100", "mobilenetv2", "resnet18", "resnet34", "resnet50"]
    short = Config.load("mobilenet025_short")
    assert short.name == "mobilenet025_short" and short.model.backbone == "mobilenet025"
    assert (short.data.image_size, short.train.epochs, short.train.decay_epochs) == (320, 40, (30, 36))
    assert (short.train.learning_rate, short.train.warmup_epochs) == (1e-3, 0)
    # our faster recipe is the reference's short recipe with only the learning rate and warm-up changed
    plus = Config.load("mobilenet025_short_plus")
    assert (plus.name, plus.train.learning_rate, plus.train.warmup_epochs) == ("mobilenet025_short_plus", 1e-2, 3)
    assert plus.override({"name": short.name, "train.learning_rate": 1e-3, "train.warmup_epochs": 0}) == short
    assert Config.load("mobilenet025") == Config.preset("mobilenet025")
    assert Config.load("resnet50") == Config.preset("resnet50")


@pytest.mark.parametrize("name", ["mobilenet025", "mobilenet025_short", "mobilenet025_short_plus", "mobilenet050", "mobilenet100", "mobilenetv2", "resnet18", "resnet34", "resnet50"])
def test_packaged_yaml_files_load(name):
    assert Config.from_yaml(REPO / "configs" / f"{name}.yaml") == Config.load(name)


@pytest.mark.parametrize("spec, needle", [
    ("mobilenet3", "unknown config 'mobilenet3': not a YAML file or a config name "
                   "(known: mobilenet025, mobilenet025_short, mobilenet025_short_plus, mobilenet050, mobilenet100, "
                   "mobilenetv2, resnet18, resnet34, resnet50)"),
    ("configs/nope.yaml", "configs/nope.yaml: no such config file (or give a config name: mobilenet025, "
                          "mobilenet025_short, mobilenet025_short_plus, mobilenet050, mobilenet100, mobilenetv2, "
                          "resnet18, resnet34, resnet50)"),
])
def test_unknown_config_lists_the_names(tmp_path, monkeypatch, spec, needle):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        Config.load(spec)
    assert str(err.value) == needle


@pytest.mark.parametrize("start, name", [("mobilenet025_short", "mobilenet025_short"), ("mobilenet025_short", "my_run"),
                                         ("resnet50", "my_resnet")])
def test_saved_config_with_any_name_loads_back(tmp_path, start, name):
    """A run's config.yaml has a name but no base: it must load back as it was saved."""
    cfg = Config.load(start).override({"name": name, "train.epochs": "5", "data.image_size": "256"})
    cfg.to_yaml(tmp_path / "config.yaml")
    assert Config.load(str(tmp_path / "config.yaml")) == cfg


def test_partial_yaml_without_base_starts_from_its_backbone(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: my_resnet\nmodel:\n  backbone: resnet50\n")
    cfg = Config.load(path)
    assert cfg.name == "my_resnet" and cfg.model.fpn_channels == 256 and cfg.data.image_size == 840


def test_circular_base_is_an_error(tmp_path, monkeypatch):
    import retinaface_tf.config as config_module
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "mobilenet025.yaml").write_text("name: mobilenet025\n")
    (folder / "a.yaml").write_text("base: b\n")
    (folder / "b.yaml").write_text("base: a\n")
    monkeypatch.setattr(config_module, "_packaged_configs",
                        lambda: {p.stem: str(p) for p in sorted(folder.glob("*.yaml"))})
    with pytest.raises(ConfigError, match="circular"):
        Config.load("a")


def test_train_command_defaults_to_the_packaged_name(tmp_path, monkeypatch):
    from retinaface_tf.cli import build_parser
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["train", "--output", str(tmp_path / "run")])
    assert args.config == "mobilenet025"
    assert Config.load(args.config) == Config.preset("mobilenet025")


def test_setup_cfg_ships_the_configs():
    text = (REPO / "setup.cfg").read_text()
    assert "    retinaface_tf.configs\n" in text and "retinaface_tf.configs = configs" in text
    assert "retinaface_tf.configs = *.yaml" in text
    assert (REPO / "configs" / "__init__.py").exists()


@pytest.mark.slow
def test_wheel_ships_configs_and_train_finds_them_outside_the_checkout(tmp_path):
    """Build a wheel from a copy of the sources (the checkout gets no build/ folder), check its
    file list, install it with --target and load a config by name from an unrelated folder."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("retinaface_tf", "configs", "saved_models"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, cwd=tmp_path, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("retinaface_tf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in ("mobilenet025", "mobilenet025_short", "mobilenet025_short_plus", "resnet50"):
        assert f"retinaface_tf/configs/{config}.yaml" in names, sorted(names)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, cwd=tmp_path, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = ("import retinaface_tf, sys; from retinaface_tf.config import Config; "
            "assert retinaface_tf.__file__.startswith(sys.argv[1]), retinaface_tf.__file__; "
            "print(Config.load('mobilenet025_short').data.image_size)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "320", out.stderr
    # `train` with no --config gets as far as the (refused) override: the default config loaded.
    out = subprocess.run([sys.executable, "-m", "retinaface_tf", "train", "--output", "run", "--set", "train.batch_size=0"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    last = out.stderr.splitlines()[-1] if out.stderr else ""
    assert out.returncode == 2 and last.startswith("retinaface-tf train: error: command line:"), out.stderr
    assert "train.batch_size" in last and not (elsewhere / "run").exists()


def test_old_field_name_rgb_mean_is_read_as_bgr_mean(tmp_path):
    """Configs saved before the rename (a run's or model's config.yaml) load unchanged."""
    old = Config.preset("mobilenet025").to_dict()
    old["data"]["rgb_mean"] = old["data"].pop("bgr_mean")
    old["data"]["rgb_mean"][0] = 100.0
    path = tmp_path / "old.yaml"
    path.write_text(__import__("yaml").safe_dump(old))
    cfg = Config.from_yaml(path)
    assert cfg.data.bgr_mean == (100.0, 117.0, 123.0) and "rgb_mean" not in cfg.to_yaml()
    assert Config.preset("mobilenet025").override({"data.rgb_mean": "[1, 2, 3]"}).data.bgr_mean == (1.0, 2.0, 3.0)
    with pytest.raises(ConfigError, match=r"field 'data.rgb_mean': is the old name of 'data.bgr_mean', which is set too"):
        Config.preset("mobilenet025").override({"data.rgb_mean": "[1, 2, 3]", "data.bgr_mean": "[1, 2, 3]"})
    with pytest.raises(ConfigError, match=r"field 'data.rgb_mean': expected a list of 3 values"):
        Config.preset("mobilenet025").override({"data.rgb_mean": "[1, 2]"})
