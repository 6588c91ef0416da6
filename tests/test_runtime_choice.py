"""``Detector(runtime="auto")`` (the default): the fastest runtime installed is timed once per
network, settings and machine, and kept with its converted model in the on-disk cache
(``retinaface_tf.runtimes.cache``); a later Detector loads it without converting; a damaged entry
is rebuilt; an unwritable cache costs nothing but the conversion; ``$RETINAFACE_TF_RUNTIME`` and
``runtime=`` force one. The suite runs TensorFlow otherwise (``tests/conftest.py``)."""

import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from retinaface_tf import inference
from retinaface_tf.errors import DetectorError
from retinaface_tf.fileio import bundled_image
from retinaface_tf.inference import Detector, installed_runtimes
from retinaface_tf.runtimes import cache as runtime_cache
from retinaface_tf.runtimes import onnx as onnx_runtime
from retinaface_tf.runtimes.litert import LiteRTNetwork


@pytest.fixture(scope="module")
def photo():
    return cv2.imread(str(bundled_image()), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runtime-cache")


@pytest.fixture
def auto(monkeypatch, cache_dir):
    """runtime="auto" as a user gets it, on this module's cache folder."""
    monkeypatch.delenv(inference.RUNTIME_ENV, raising=False)
    monkeypatch.setenv(runtime_cache.CACHE_ENV, str(cache_dir))
    return cache_dir


@pytest.fixture(scope="module")
def tf_detector(bundled_model):
    model, config = bundled_model
    return Detector(model=model, config=config, runtime="tf")


def _entries(cache_dir):
    root = cache_dir / "runtimes"
    return sorted(p for p in root.iterdir()) if root.is_dir() else []


def _assert_same(a, b):
    assert len(a) == len(b) > 20
    np.testing.assert_array_equal(a.anchor_indices, b.anchor_indices)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2, rtol=0)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-2, rtol=0)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4, rtol=0)


def _forbid_conversion(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("converted or timed again although the cache holds the choice")
    monkeypatch.setattr(LiteRTNetwork, "__init__", refuse)
    monkeypatch.setattr(onnx_runtime.OnnxNetwork, "__init__", refuse)
    monkeypatch.setattr(runtime_cache, "time_candidates", refuse)


def test_auto_times_every_installed_runtime_and_caches_the_fastest(auto, bundled_model, tf_detector, photo):
    model, config = bundled_model
    det = Detector(model=model, config=config)
    assert set(det.runtime_timings) == set(installed_runtimes()) >= {"tf", "litert", "onnx"}
    assert det.runtime == min(det.runtime_timings, key=det.runtime_timings.get)
    assert all(0 < ms < 10_000 for ms in det.runtime_timings.values())
    [entry] = _entries(auto)
    record = json.loads((entry / "choice.json").read_text())
    assert record["runtime"] == det.runtime and record["timings_ms"] == det.runtime_timings
    want_files = {"tf": set(), "litert": {"network.tflite"}, "onnx": {"detect.onnx"}}[det.runtime]
    assert set(record["files"]) == want_files == {p.name for p in entry.iterdir()} - {"choice.json"}
    _assert_same(det.detect(photo), tf_detector.detect(photo))


def test_a_later_detector_loads_the_cached_choice_without_converting(auto, bundled_model, tf_detector, photo,
                                                                     monkeypatch):
    model, config = bundled_model
    first = Detector(model=model, config=config)  # the first test's entry, or made now when run alone
    _forbid_conversion(monkeypatch)
    again = Detector(model=model, config=config)
    assert (again.runtime, again.runtime_timings) == (first.runtime, first.runtime_timings)
    assert len(_entries(auto)) == 1
    _assert_same(again.detect(photo), tf_detector.detect(photo))
    # other baked settings are another entry (they are inside the converted model)
    monkeypatch.setattr(runtime_cache, "time_candidates", lambda candidates: {name: 1.0 for name in candidates})
    monkeypatch.setattr(inference, "installed_runtimes", lambda: ["tf"])  # nothing to convert
    Detector(model=model, config=config, max_detections=100)
    assert len(_entries(auto)) == 2
    # TensorFlow's kernels (oneDNN on or off, set by TF_ENABLE_ONEDNN_OPTS before it loads) are another entry
    other = {"grouped": "native", "native": "grouped"}[inference.default_depthwise()]
    monkeypatch.setattr(inference, "default_depthwise", lambda: other)
    Detector(model=model, config=config, max_detections=100)
    assert len(_entries(auto)) == 3


def test_a_damaged_entry_is_rebuilt(auto, bundled_model, tf_detector, photo):
    model, config = bundled_model
    first = Detector(model=model, config=config)
    [entry] = [e for e in _entries(auto)
               if json.loads((e / "choice.json").read_text())["timings_ms"] == first.runtime_timings]
    record = json.loads((entry / "choice.json").read_text())
    if record["files"]:  # the converted model cut short: its sha256 no longer matches
        name = next(iter(record["files"]))
        (entry / name).write_bytes((entry / name).read_bytes()[:1000])
    else:
        (entry / "choice.json").write_text('{"runtime": "tf", "fil')
    assert runtime_cache.CacheEntry(entry.name, auto).load(installed_runtimes()) is None
    det = Detector(model=model, config=config)  # converted and timed again, the entry rewritten
    assert runtime_cache.CacheEntry(entry.name, auto).load(installed_runtimes())["runtime"] == det.runtime
    _assert_same(det.detect(photo), tf_detector.detect(photo))


def test_an_unwritable_cache_costs_only_the_conversion(monkeypatch, tmp_path, bundled_model, photo, tf_detector):
    model, config = bundled_model
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.delenv(inference.RUNTIME_ENV, raising=False)
    monkeypatch.setenv(runtime_cache.CACHE_ENV, str(blocker))
    monkeypatch.setattr(inference, "installed_runtimes", lambda: ["tf", "litert"])
    det = Detector(model=model, config=config)
    assert det.runtime in ("tf", "litert") and set(det.runtime_timings) == {"tf", "litert"}
    assert blocker.read_text().startswith("a file")
    _assert_same(det.detect(photo), tf_detector.detect(photo))


def test_the_environment_and_runtime_force_a_runtime(monkeypatch, tmp_path, bundled_model):
    model, config = bundled_model
    monkeypatch.setenv(runtime_cache.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(inference.RUNTIME_ENV, "tf")
    det = Detector(model=model, config=config)
    assert det.runtime == "tf" and det.runtime_timings == {} and not (tmp_path / "runtimes").exists()
    monkeypatch.setenv(inference.RUNTIME_ENV, "tpu")
    with pytest.raises(DetectorError) as err:
        Detector(model=model, config=config)
    assert str(err.value) == "$RETINAFACE_TF_RUNTIME must be one of auto, tf, litert, onnx, got 'tpu'"
    monkeypatch.delenv(inference.RUNTIME_ENV)
    assert Detector(model=model, config=config, fused=False).runtime == "tf"  # nothing converted unfused


def test_onnx_runtime_detects_batches_like_tensorflow(bundled_model, tf_detector, photo):
    model, config = bundled_model
    det = Detector(model=model, config=config, runtime="onnx", threads=2)
    assert det.runtime == "onnx" and not det.mixed_sizes
    small = cv2.resize(photo, (517, 333))
    images = [photo, small, photo, photo[:, ::-1].copy()]
    for got, want in zip(det.detect_batch(images), tf_detector.detect_batch(images)):
        _assert_same(got, want)


@pytest.mark.parametrize("damage", ["garbage", "wrong key", "other runtime", "path in name", "missing file"])
def test_cache_entry_refuses_damage(tmp_path, damage):
    entry = runtime_cache.CacheEntry("k" * 32, tmp_path)
    assert entry.load() is None  # absent
    assert entry.store({"runtime": "litert", "timings_ms": {"litert": 1.0}}, {"network.tflite": b"model bytes"})
    assert entry.load(["tf", "litert"])["data"] == {"network.tflite": b"model bytes"}
    choice = entry.dir / "choice.json"
    record = json.loads(choice.read_text())
    if damage == "garbage":
        choice.write_bytes(b"\x00\xff{")
    elif damage == "wrong key":
        choice.write_text(json.dumps({**record, "key": "x"}))
    elif damage == "other runtime":
        assert entry.load(["tf", "onnx"]) is None
        return
    elif damage == "path in name":
        choice.write_text(json.dumps({**record, "files": {"../network.tflite": record["files"]["network.tflite"]}}))
    else:
        (entry.dir / "network.tflite").unlink()
    assert entry.load(["tf", "litert"]) is None


def test_entry_key_follows_every_part():
    parts = {"weights": "a", "threads": 2, "machine": runtime_cache.machine_identity()}
    assert runtime_cache.entry_key(parts) == runtime_cache.entry_key(dict(reversed(parts.items())))
    assert runtime_cache.entry_key(parts) != runtime_cache.entry_key({**parts, "threads": 1})
    assert runtime_cache.entry_key(parts) != runtime_cache.entry_key({**parts, "weights": "b"})


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime_cache.CACHE_ENV, str(tmp_path / "mine"))
    assert runtime_cache.cache_root() == tmp_path / "mine"
    monkeypatch.delenv(runtime_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime_cache.cache_root() == tmp_path / "xdg" / "retinaface-tf"
    monkeypatch.delenv("XDG_CACHE_HOME")

    def no_home():
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(runtime_cache.Path, "home", staticmethod(no_home))
    root = runtime_cache.cache_root()  # a container without $HOME or a passwd entry: still somewhere writable
    assert root.name.startswith("retinaface-tf-cache-") and root.parent == Path(tempfile.gettempdir())
