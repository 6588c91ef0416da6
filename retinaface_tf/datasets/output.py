"""A dataset job's DEST: ``faces/`` and ``crops/`` (Parquet part files), ``job.json`` (the
settings its rows were made with) and, while a job runs, ``.lock``.

Part files are written under a hidden temporary name and renamed (object stores publish an
object only when its upload completes), so a reader or a rerun never sees half a part. A part is
named by its rows' paths: a retried task rewrites the same part, never a second copy. A batch's
``crops/`` part is written before its ``faces/`` part; the ``faces/`` rows say what is done, so a
rerun deletes ``crops/`` parts without their ``faces/`` part and processes those inputs again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid

from retinaface_tf.datasets.sources import Location, _first_line
from retinaface_tf.errors import OutputError

TOOL = "retinaface-tf detect-dataset"
JOB_FILE = "job.json"
LOCK_FILE = ".lock"
FACES, CROPS = "faces", "crops"
OWNED = (JOB_FILE, LOCK_FILE, FACES, CROPS)
# settings that change the rows: a rerun into the same DEST must use the same ones
RESULT_SETTINGS = ("source", "score_threshold", "max_size", "max_pixels", "weights", "config", "crops", "crop_size")


def _pa():
    import pyarrow  # the ray extra brings it; lazy so the package imports without it
    import pyarrow.fs
    import pyarrow.parquet
    return pyarrow


def part_name(paths) -> str:
    """``part-<hash of the rows' paths>.parquet``: the same rows always give the same name."""
    digest = hashlib.sha256("\0".join(str(p) for p in paths).encode("utf-8", "surrogateescape")).hexdigest()
    return f"part-{digest[:24]}.parquet"


def write_part(dest: Location, folder: str, name: str, table) -> None:
    """``table`` as ``DEST/folder/name``, whole or not at all (temporary name, then rename)."""
    pa = _pa()
    fs = dest.filesystem
    target = dest.join(folder, name)
    tmp = dest.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        pa.parquet.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, target)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
        raise


def _exists(dest: Location, *parts: str) -> bool:
    return _pa().fs.FileType.NotFound != dest.filesystem.get_file_info(dest.join(*parts)).type


def _read_json(dest: Location, name: str):
    with dest.filesystem.open_input_stream(dest.join(name)) as f:
        return json.loads(f.read(1 << 20).decode("utf-8"))


def _write_json(dest: Location, name: str, data) -> None:
    fs = dest.filesystem
    tmp = dest.join(f".{name}.{uuid.uuid4().hex}.tmp")
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
    fs.move(tmp, dest.join(name))


def check_destination(dest: Location, settings: dict) -> bool:
    """Refuse (one line, nothing changed) a DEST that is not a folder, holds what no
    detect-dataset wrote, or holds rows made with other :data:`RESULT_SETTINGS`. Returns whether
    it holds an earlier job's output (a resume)."""
    pa = _pa()
    fs = dest.filesystem
    try:
        info = fs.get_file_info(dest.path)
        if info.type == pa.fs.FileType.NotFound:
            return False
        if info.type != pa.fs.FileType.Directory:
            raise OutputError(f"--output {dest.text}: exists and is not a folder; give a new or empty folder")
        entries = sorted(os.path.basename(i.path.rstrip("/"))
                         for i in fs.get_file_info(pa.fs.FileSelector(dest.path)))
        entries = [e for e in entries if e != LOCK_FILE]  # a job starting there: the lock says so
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(f"--output {dest.text}: cannot read ({_first_line(exc)})") from None
    if not entries:
        return False
    if JOB_FILE not in entries:
        raise OutputError(f"--output {dest.text}: folder is not empty and holds no {JOB_FILE} from an earlier "
                          f"detect-dataset (it holds {entries[0]!r}); give a new or empty folder (nothing was changed)")
    try:
        previous = _read_json(dest, JOB_FILE)
    except Exception as exc:
        raise OutputError(f"--output {dest.text}: {JOB_FILE} cannot be read ({_first_line(exc)}); "
                          "give a new or empty folder (nothing was changed)") from None
    if not isinstance(previous, dict) or previous.get("tool") != TOOL:
        raise OutputError(f"--output {dest.text}: {JOB_FILE} was not written by {TOOL}; give a new or empty folder")
    for key in RESULT_SETTINGS:
        if previous.get(key) != settings.get(key):
            raise OutputError(f"--output {dest.text}: holds rows made with {key} = {previous.get(key)!r}, this job "
                              f"has {settings.get(key)!r}; rerun with the same settings or give a new folder")
    return True


def start_destination(dest: Location, settings: dict) -> None:
    """Create DEST's folders and write ``job.json`` (after :func:`check_destination` and the lock)."""
    fs = dest.filesystem
    for folder in (FACES, CROPS) if settings.get("crops") else (FACES,):
        fs.create_dir(dest.join(folder), recursive=True)
    _write_json(dest, JOB_FILE, {"tool": TOOL, **{k: settings.get(k) for k in RESULT_SETTINGS}})


def _files(dest: Location, folder: str) -> list:
    pa = _pa()
    if not _exists(dest, folder):
        return []
    infos = dest.filesystem.get_file_info(pa.fs.FileSelector(dest.join(folder)))
    return sorted(os.path.basename(i.path) for i in infos if i.type == pa.fs.FileType.File)


def done_rows(dest: Location) -> dict:
    """``{path: error or None}`` of every row in ``DEST/faces/``, after removing what an
    interrupted job left: temporary files and ``crops/`` parts without their ``faces/`` part."""
    pa = _pa()
    fs = dest.filesystem
    faces = _files(dest, FACES)
    parts = {n for n in faces if n.startswith("part-") and n.endswith(".parquet")}
    for folder, names in ((FACES, faces), (CROPS, _files(dest, CROPS))):
        for name in names:
            orphan = folder == CROPS and name.startswith("part-") and name not in parts
            if (name.startswith(".") and name.endswith(".tmp")) or orphan:
                fs.delete_file(dest.join(folder, name))
    rows: dict = {}
    for name in sorted(parts):
        where = dest.join(FACES, name)
        try:
            table = pa.parquet.read_table(where, columns=["path", "error"], filesystem=fs)
        except Exception as exc:
            raise OutputError(f"{dest.text}/{FACES}/{name}: cannot be read as a part file ({_first_line(exc)}); "
                              "move it away and rerun (its inputs are then processed again)") from None
        for path, error in zip(table.column("path").to_pylist(), table.column("error").to_pylist()):
            rows[path] = error
    return rows


def count_rows(dest: Location) -> tuple[int, int]:
    """``(rows, distinct paths)`` in ``DEST/faces/``."""
    pa = _pa()
    total, paths = 0, set()
    for name in _files(dest, FACES):
        if name.startswith("part-") and name.endswith(".parquet"):
            column = pa.parquet.read_table(dest.join(FACES, name), columns=["path"],
                                           filesystem=dest.filesystem).column("path")
            total += len(column)
            paths.update(column.to_pylist())
    return total, len(paths)


# ---------------------------------------------------------------------- the lock
def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``; ``None`` elsewhere or when gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _process_start(pid)
    return started is None or now is None or now == started  # another start time: the pid was reused


@contextlib.contextmanager
def _dest_lock(dest: Location):
    """Hold ``DEST/.lock`` (pid, host, process start time, when) for the block. A lock of a live
    job is a one-line :class:`OutputError`; one left by a job that is gone (same host, its process
    no longer running) is taken over. Local folders are locked atomically (``O_EXCL``); object
    stores have no atomic create here, so two jobs started in the same instant could both pass."""
    fs = dest.filesystem
    fs.create_dir(dest.path, recursive=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = dest.join(LOCK_FILE)
    for _ in range(3):
        if dest.local:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    json.dump(mine, f)
                break
        elif not _exists(dest, LOCK_FILE):
            _write_json(dest, LOCK_FILE, mine)
            break
        try:
            other = _read_json(dest, LOCK_FILE)
        except Exception:
            other = None
        if not isinstance(other, dict):
            if _lock_age(dest) > 60:  # unreadable and old: a lock whose writer died mid-write
                fs.delete_file(path)
                continue
            raise OutputError(f"--output {dest.text}: another detect-dataset job is starting there "
                              f"({LOCK_FILE} being written); wait for it or give another folder")
        stale = other.get("host") == mine["host"] and isinstance(other.get("pid"), int) and not _alive(
            other["pid"], other.get("process_start"))
        if not stale:
            raise OutputError(f"--output {dest.text}: another detect-dataset job writes there (pid {other.get('pid')} "
                              f"on {other.get('host')}, since {other.get('time')}); wait for it, or delete "
                              f"{LOCK_FILE} there if that job is gone")
        fs.delete_file(path)
    else:
        raise OutputError(f"--output {dest.text}: cannot take {LOCK_FILE}")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            if _read_json(dest, LOCK_FILE) == mine:
                fs.delete_file(path)


def _lock_age(dest: Location) -> float:
    info = dest.filesystem.get_file_info(dest.join(LOCK_FILE))
    mtime = getattr(info, "mtime", None)
    return 0.0 if mtime is None else time.time() - mtime.timestamp()
