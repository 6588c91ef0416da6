import pytest

from retinaface_tf.config import Config, ConfigError
from conftest import REPO


@pytest.mark.parametrize("name", ["mobilenet025", "resnet50"])
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
    ("data:\n  image_size: 630\n", "data.image_size=630 must be a multiple of the smallest step 8"),
    ("train:\n  batch_sise: 3\n", "field 'train.batch_sise': unknown field"),
    ("train:\n  batch_size: many\n", "field 'train.batch_size': expected an integer"),
    ("model: [1, 2\n", "line"),
    ("name: mobilenet3\n", "unknown preset"),
])
def test_bad_config_names_file_and_field(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        Config.from_yaml(path)
    msg = str(err.value)
    assert str(path) in msg and needle in msg and "\n" not in msg
