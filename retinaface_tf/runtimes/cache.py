"""The on-disk cache of converted networks and of the runtime chosen for them on this machine.

``Detector(runtime="auto")`` (the default) times the runtimes this installation has (TensorFlow,
LiteRT, ONNX Runtime) on its network once per machine and keeps the fastest one's converted model
here, so that every later process loads it in a fraction of a second instead of converting again.

An entry is one folder, ``<root>/runtimes/<key>/``, where ``key`` is the sha256 of everything the
choice and the converted model depend on (:func:`entry_key`): the weights' bytes, the baked
post-processing settings, the threads, the package versions, whether TensorFlow runs oneDNN, the
fused network's Winograd setting and the machine's CPU. It holds ``choice.json`` (the runtime, the timings that chose it, each file's
sha256) and the chosen runtime's model file, each written to a temporary file and renamed into
place, the description last. An entry that does not parse, names a runtime this installation lacks,
or whose file is missing or does not match its sha256 is **damaged**: :meth:`CacheEntry.load`
answers ``None`` and the caller rebuilds and rewrites it. A cache folder that cannot be written
costs the conversion again next time, nothing else.

The root: ``$RETINAFACE_TF_CACHE``, else ``$XDG_CACHE_HOME/retinaface-tf``, else
``~/.cache/retinaface-tf`` (without a home folder: ``<temp>/retinaface-tf-cache-<uid>``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from retinaface_tf import fileio
from retinaface_tf.errors import RetinaFaceError
from retinaface_tf.runtimes import available_cores

CACHE_ENV = "RETINAFACE_TF_CACHE"
FORMAT = 1                     # bumped when an entry's layout changes: older entries are not read
MAX_CHOICE_BYTES = 64 * 1024   # choice.json is a few hundred bytes: anything larger is damage
MAX_MODEL_BYTES = 1 << 30      # a converted ResNet-50 is ~110 MB


def cache_root() -> Path:
    """Where the cache lives (see the module's documentation)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):  # no $HOME and no passwd entry (some containers)
            base = os.path.join(tempfile.gettempdir(), f"retinaface-tf-cache-{os.getuid()}")
            return Path(base)
    return Path(base).expanduser() / "retinaface-tf"


def weights_digest(model) -> str:
    """sha256 of a Keras model's weights: each variable's path, shape, dtype and bytes, in order."""
    h = hashlib.sha256()
    for variable in model.weights:
        value = np.ascontiguousarray(np.asarray(variable))
        h.update(f"{variable.path}|{value.shape}|{value.dtype}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def machine_identity() -> dict:
    """The CPU the timings were taken on: its model name, flags and the cores this process may use
    (a choice made on one machine is not reused on another)."""
    model = flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = hashlib.sha256(value.strip().encode()).hexdigest()[:16]
                if model and flags:
                    break
    except OSError:  # not Linux: the platform's own description
        model = platform.processor()
    return {"machine": platform.machine(), "cpu": model, "flags": flags, "cores": available_cores()}


def entry_key(parts: dict) -> str:
    """The entry's name: sha256 of ``parts`` (JSON, sorted keys) and the cache format."""
    text = json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CacheEntry:
    """One entry of the cache (see the module's documentation); ``root`` defaults to
    :func:`cache_root`."""

    CHOICE = "choice.json"

    def __init__(self, key: str, root: str | os.PathLike | None = None):
        self.key = key
        self.dir = Path(root if root is not None else cache_root()) / "runtimes" / key

    def load(self, runtimes=None) -> dict | None:
        """The stored record, with ``files`` mapped to their bytes (``{"runtime", "timings_ms",
        ..., "data": {name: bytes}}``), or ``None`` when the entry is absent or damaged (see the
        module). ``runtimes``: the runtimes this installation can run; a record naming another
        one is not used."""
        try:
            text = fileio.read_regular_file(self.dir / self.CHOICE, max_bytes=MAX_CHOICE_BYTES,
                                            what="cache entry").decode("utf-8")
            record = json.loads(text)
            if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("key") != self.key:
                return None
            if runtimes is not None and record.get("runtime") not in runtimes:
                return None
            files = record.get("files")
            if not isinstance(files, dict):
                return None
            data = {}
            for name, digest in files.items():
                if not isinstance(name, str) or os.path.basename(name) != name or name == self.CHOICE:
                    return None
                blob = fileio.read_regular_file(self.dir / name, max_bytes=MAX_MODEL_BYTES, what="cached model")
                if _sha256(blob) != digest:
                    return None
                data[name] = blob
        except (OSError, ValueError, UnicodeDecodeError, RetinaFaceError):
            return None
        record["data"] = data
        return record

    def store(self, record: dict, files: dict[str, bytes]) -> bool:
        """Write ``files`` then ``record`` (with their sha256 added) atomically. ``False`` if the
        cache folder cannot be written (nothing half-written is ever read: see :meth:`load`)."""
        record = {**record, "format": FORMAT, "key": self.key,
                  "files": {name: _sha256(blob) for name, blob in files.items()}}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / self.CHOICE).unlink(missing_ok=True)  # the old description first: never new files + old record
            for name, blob in files.items():
                fileio.write_bytes_atomic(self.dir / name, blob)
            fileio.write_text_atomic(self.dir / self.CHOICE, json.dumps(record, indent=1, sort_keys=True))
        except OSError:
            return False
        return True


def time_candidates(candidates: dict, *, rounds: int = 3, calls: int = 3) -> dict[str, float]:
    """``{name: best ms}`` of each ``candidates[name]()`` (a callable running one detection),
    alternating the candidates round by round after one warm-up call each, so that a machine
    that slows down for a while slows every candidate alike."""
    for run in candidates.values():
        run()
    best = {name: math.inf for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            for _ in range(calls):
                start = time.perf_counter()
                run()
                best[name] = min(best[name], (time.perf_counter() - start) * 1000.0)
    return best
