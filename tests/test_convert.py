"""The safe .pth reader and the weight mapping: refuses code, fails loudly, writes nothing."""

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from retinaface_tf.cli import main
from retinaface_tf.models.weights import convert_checkpoint
from retinaface_tf.convert.mapping import assign_state_dict
from retinaface_tf.convert.torch_weights import CheckpointError, load_torch_checkpoint
from retinaface_tf.models.backbones import build_backbone

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# ------------------------------------------------------------ writing checkpoints without torch
class _FakeTorch:
    """Temporarily registers stand-in `torch` / `torch._utils` modules so the std pickler
    emits exactly the globals torch.save emits (torch itself is not a dependency)."""

    def __enter__(self):
        self.saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
        torch = types.ModuleType("torch")
        utils = types.ModuleType("torch._utils")
        torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})

        def _rebuild_tensor_v2(*args):
            raise AssertionError("never called while writing")

        _rebuild_tensor_v2.__module__ = "torch._utils"
        _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
        utils._rebuild_tensor_v2 = _rebuild_tensor_v2
        torch._utils = utils
        sys.modules.update({"torch": torch, "torch._utils": utils})
        self.torch = torch
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, np.ascontiguousarray(array, np.float32)


class _TensorRef:
    """Pickles as torch.save pickles a tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, rebuild):
        self.storage, self.rebuild = storage, rebuild

    def __reduce__(self):
        a = self.storage.array
        stride = tuple(s // a.itemsize for s in a.strides)
        return (self.rebuild, (self.storage, 0, a.shape, stride, False, collections.OrderedDict()))


def _pickle_state(state: dict, ft) -> tuple[bytes, list]:
    storages = [_Storage(str(i), v) for i, v in enumerate(state.values())]

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", ft.torch.FloatStorage, obj.key, "cpu", obj.array.size)
            return None

    wrapped = collections.OrderedDict(
        (k, _TensorRef(st, ft.torch._utils._rebuild_tensor_v2)) for k, st in zip(state, storages))
    buf = io.BytesIO()
    P(buf, protocol=2).dump(wrapped)
    return buf.getvalue(), storages


def write_zip_checkpoint(path, state: dict):
    with _FakeTorch() as ft:
        data, tensors = _pickle_state(state, ft)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data)
        for t in tensors:
            zf.writestr(f"archive/data/{t.key}", t.array.tobytes())


def write_legacy_checkpoint(path, state: dict):
    with _FakeTorch() as ft:
        data, tensors = _pickle_state(state, ft)
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(data)
        pickle.dump([t.key for t in tensors], f, protocol=2)
        for t in tensors:
            f.write(struct.pack("<q", t.array.size))
            f.write(t.array.tobytes())


# ------------------------------------------------------------ tests
def test_reads_official_checkpoints(reference_dir):
    sd = load_torch_checkpoint(reference_dir / "mobilenet0.25_Final.pth")
    assert len(sd) == 300
    assert sd["body.stage1.0.0.weight"].shape == (8, 3, 3, 3)
    assert sd["LandmarkHead.2.conv1x1.bias"].shape == (20,)
    bb = load_torch_checkpoint(reference_dir / "mobilenetV1X0.25_pretrain.tar")
    assert len(bb) == 164 and "fc.weight" in bb and "stage3.1.3.weight" in bb  # module. prefix stripped


@pytest.mark.parametrize("writer", [write_zip_checkpoint, write_legacy_checkpoint])
def test_zip_and_legacy_formats_round_trip(tmp_path, writer):
    rng = np.random.default_rng(0)
    state = {"a.weight": rng.normal(size=(4, 3, 3, 3)), "b.bias": rng.normal(size=(5,)),
             "module.c": np.float32(3.5) * np.ones(())}
    path = tmp_path / "ckpt.pth"
    writer(path, state)
    sd = load_torch_checkpoint(path)
    assert set(sd) == {"a.weight", "b.bias", "c"}
    np.testing.assert_array_equal(sd["a.weight"], state["a.weight"].astype(np.float32))
    np.testing.assert_array_equal(sd["b.bias"], state["b.bias"].astype(np.float32))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/retinaface_pwned",))


def test_refuses_code_in_pickle(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, {}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump({"x": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"refusing to load: .* import (posix|os)\.system"):
        load_torch_checkpoint(path)
    zpath = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": _Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_torch_checkpoint(zpath)
    assert not os.path.exists("/tmp/retinaface_pwned")


@pytest.mark.parametrize("content, needle", [
    (b"", "not a PyTorch checkpoint"),
    (b"hello world", "not a PyTorch checkpoint"),
    (pickle.dumps({"a": 1}, protocol=2), "bad magic number"),
])
def test_foreign_files(tmp_path, content, needle):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=needle) as err:
        load_torch_checkpoint(path)
    assert str(path) in str(err.value)


def test_truncated_checkpoint(tmp_path, official_pth):
    path = tmp_path / "cut.pth"
    path.write_bytes(official_pth.read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_torch_checkpoint(path)
    assert str(path) in str(err.value)


def test_mapping_fails_loudly_and_assigns_nothing(official_pth):
    sd = load_torch_checkpoint(official_pth)
    model = build_backbone("mobilenet025")
    before = [w.numpy().copy() for w in model.weights]
    body = {k[len("body."):]: v for k, v in sd.items() if k.startswith("body.")}
    missing = dict(body)
    del missing["stage2.3.4.running_var"]
    with pytest.raises(CheckpointError, match=r"missing tensor stage2\.3\.4\.running_var"):
        assign_state_dict(model, missing, path="x.pth")
    extra = dict(body, **{"stage9.0.0.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"1 tensors fit no Keras layer: stage9\.0\.0\.weight"):
        assign_state_dict(model, extra, path="x.pth")
    bad = dict(body, **{"stage1.1.3.weight": np.zeros((17, 8, 1, 1), np.float32)})
    with pytest.raises(CheckpointError, match=r"stage1\.1\.3\.weight has shape"):
        assign_state_dict(model, bad, path="x.pth")
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_backbone_conversion_and_cli(reference_dir, tmp_path, capsys):
    out = tmp_path / "bb"
    rc = main(["convert", str(reference_dir / "mobilenetV1X0.25_pretrain.tar"), "--output", str(out)])
    assert rc == 0
    assert "135 tensors mapped, 29 skipped" in capsys.readouterr().out
    net = build_backbone("mobilenet025")
    net.load_weights(str(out / "backbone.weights.h5"))
    sd = load_torch_checkpoint(reference_dir / "mobilenetV1X0.25_pretrain.tar")
    np.testing.assert_array_equal(net.get_layer("stage3_1_pw").kernel.numpy(),
                                  sd["stage3.1.3.weight"].transpose(2, 3, 1, 0))


def test_bad_checkpoint_cli_writes_nothing_and_keeps_old_output(tmp_path, capsys, official_pth):
    out = tmp_path / "model"
    assert main(["convert", str(official_pth), "--output", str(out)]) == 0
    good = (out / "model.weights.h5").read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02garbage")
    rc = main(["convert", str(bad), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and len(err.strip().splitlines()) == 1
    assert (out / "model.weights.h5").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth", "model"]  # no temp folders left
