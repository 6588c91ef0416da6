"""Read PyTorch ``.pth`` checkpoints without PyTorch, safely, and map them onto the Keras model.

:func:`load_torch_checkpoint` understands both serialisations ``torch.save`` has used: the
legacy one (a magic number, protocol, sys-info and object pickle, then the raw storages: the
official biubug6 files) and the zip one (``archive/data.pkl`` + ``archive/data/<key>``). The
unpickler is restricted: it resolves only the handful of globals a state dict needs
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, the
``torch.*Storage`` types) to local, inert stand-ins. Any other global (``os.system``,
``builtins.eval``, a model class, ...) raises :class:`CheckpointError` before it is created.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from retinaface_tf.errors import RetinaFaceError


class CheckpointError(RetinaFaceError):
    """A checkpoint is corrupt, foreign or does not fit the model. The message names the file."""


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A lazily filled flat buffer (legacy files store the bytes after the object pickle)."""

    def __init__(self, dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.array: np.ndarray | None = None


def _rebuild_tensor(storage: _Storage, offset, size, stride, *args):
    return ("tensor", storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *args):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str, storages: dict):
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            if _STORAGE_DTYPES[name] is None:
                raise CheckpointError(f"{self._path}: unsupported tensor type torch.{name}")
            return _StorageType(name)
        raise CheckpointError(
            f"{self._path}: refusing to load: the checkpoint asks to import {module}.{name}, which a "
            "plain weights file never needs (only tensors and containers are allowed)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
            raise CheckpointError(f"{self._path}: unknown persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path}: storage {key} has no tensor type")
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type.dtype, int(numel))
        return self._storages[key]


def _materialise(obj, path: str):
    if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == "tensor":
        _, storage, offset, size, stride = obj
        if storage.array is None:
            raise CheckpointError(f"{path}: tensor data is missing (truncated file?)")
        itemsize = storage.array.itemsize
        count = int(np.prod(size)) if size else 1
        if count and offset + sum((s - 1) * st for s, st in zip(size, stride)) >= storage.array.size:
            raise CheckpointError(f"{path}: tensor view exceeds its storage (corrupt file)")
        view = np.lib.stride_tricks.as_strided(
            storage.array[offset:], shape=size, strides=tuple(st * itemsize for st in stride))
        return np.array(view)  # contiguous copy
    if isinstance(obj, dict):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialise(v, path)
        return out
    if isinstance(obj, list):
        return [_materialise(v, path) for v in obj]
    return obj


def _load_legacy(data: bytes, path: str):
    f = io.BytesIO(data)
    storages: dict[str, _Storage] = {}
    magic = _RestrictedUnpickler(f, path, storages).load()
    if magic != _LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    protocol = _RestrictedUnpickler(f, path, storages).load()
    if protocol != 1001:
        raise CheckpointError(f"{path}: unsupported legacy protocol {protocol!r}")
    _RestrictedUnpickler(f, path, storages).load()  # sys_info
    obj = _RestrictedUnpickler(f, path, storages).load()
    keys = _RestrictedUnpickler(f, path, storages).load()
    if not isinstance(keys, list):
        raise CheckpointError(f"{path}: corrupt storage index")
    for key in keys:
        key = str(key)
        if key not in storages:
            raise CheckpointError(f"{path}: storage {key} is listed but never used")
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointError(f"{path}: truncated at storage {key}")
        (numel,) = struct.unpack("<q", header)
        st = storages[key]
        nbytes = numel * np.dtype(st.dtype).itemsize
        raw = f.read(nbytes)
        if numel < 0 or len(raw) != nbytes:
            raise CheckpointError(f"{path}: truncated at storage {key}")
        st.array = np.frombuffer(raw, dtype=st.dtype)
    return _materialise(obj, path)


def _load_zip(data: bytes, path: str):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise CheckpointError(f"{path}: zip file without data.pkl: not a PyTorch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), path, storages).load()
        for key, st in storages.items():
            try:
                raw = zf.read(f"{prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"{path}: storage data/{key} is missing") from None
            st.array = np.frombuffer(raw, dtype=st.dtype)
    return _materialise(obj, path)


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.pth``/``.tar`` checkpoint into ``{name: numpy array}`` (no torch needed).

    Accepts a bare state dict, or a dict holding one under ``state_dict``/``model``; strips the
    ``module.`` prefix DataParallel adds. Raises :class:`CheckpointError` naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        if data[:4] == b"PK\x03\x04":
            obj = _load_zip(data, path)
        elif data[:1] == b"\x80":
            obj = _load_legacy(data, path)
        else:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither zip nor legacy pickle)")
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            struct.error, zipfile.BadZipFile, AttributeError, MemoryError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint: {type(exc).__name__}: {exc}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: no state dict found in checkpoint")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            continue
        k = str(k)
        out[k[len("module."):] if k.startswith("module.") else k] = v
    if not out:
        raise CheckpointError(f"{path}: the state dict holds no tensors")
    return out
