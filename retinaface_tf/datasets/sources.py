"""Where a dataset job reads and writes: local paths and the URIs pyarrow's filesystems open
(``file://``, ``s3://bucket/prefix?endpoint_override=http://host:port``, ``gs://``, ...).

The inputs are listed on the driver (:func:`list_inputs`) and read on the workers
(:func:`read_files`), one error row per file that cannot be read: nothing stops the job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from retinaface_tf.errors import ImageError, RetinaFaceError, UsageError
from retinaface_tf.fileio import IMAGE_EXTENSIONS, expand_image_paths, max_file_bytes, open_regular_file

# a list file: at most this many bytes and bytes per line (a path, not a data file)
MAX_LIST_BYTES = 2 << 30
MAX_LINE_BYTES = 4096


def _fs():
    import pyarrow.fs  # the ray extra brings it; lazy so the package imports without it
    return pyarrow.fs


def is_uri(text: str) -> bool:
    return "://" in text


@dataclass(frozen=True)
class Location:
    """A folder or file: ``filesystem`` (a picklable ``pyarrow.fs.FileSystem``, what workers use)
    and ``path`` inside it (absolute for local ones); ``text``: as the user gave it."""

    filesystem: object
    path: str
    text: str

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, _fs().LocalFileSystem)

    def join(self, *parts: str) -> str:
        if self.local:
            return os.path.join(self.path, *parts)
        return "/".join([self.path.rstrip("/"), *parts])


def location(text: str, flag: str) -> Location:
    """``text`` (a path or URI given as ``flag``) as a :class:`Location`; a bad URI is a one-line
    :class:`UsageError`."""
    fs = _fs()
    if not is_uri(text):
        return Location(fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text)), text)
    try:
        filesystem, path = fs.FileSystem.from_uri(text)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ValueError, ... for bad URIs
        raise UsageError(f"{flag} {text}: cannot open ({_first_line(exc)})") from None
    if isinstance(filesystem, fs.LocalFileSystem):
        path = os.path.abspath(path)
    return Location(filesystem, path.rstrip("/") or "/", text)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


@dataclass(frozen=True)
class Inputs:
    """The job's inputs: ``names`` (the ``path`` column: relative to SOURCE, or as its list file
    writes them), ``paths`` (where the workers read them) and ``sizes`` (bytes, -1 unknown)."""

    source: Location
    names: list
    paths: list
    sizes: list


def list_inputs(source: Location, *, exclude: Location | None = None) -> Inputs:
    """Every input of SOURCE: a folder (walked recursively, sorted; the image files ``detect``
    reads), or a text file listing one path per line (relative to its folder, or absolute; blank
    lines and ``#`` comments skipped, repeated names once)."""
    fs = _fs()
    if source.local:
        if os.path.isdir(source.path):
            skip = [exclude.path] if exclude is not None and exclude.local else []
            found = expand_image_paths([source.path], exclude=skip)
            names = [os.path.relpath(p, source.path) for p in found]
            return Inputs(source, names, found, [_local_size(p) for p in found])
        if not os.path.exists(source.path):
            raise UsageError(f"SOURCE {source.text}: no such folder or file")
        return _list_file(source)
    try:
        info = source.filesystem.get_file_info(source.path)
    except Exception as exc:
        raise UsageError(f"SOURCE {source.text}: cannot read ({_first_line(exc)})") from None
    if info.type == fs.FileType.NotFound:
        raise UsageError(f"SOURCE {source.text}: no such folder or file")
    if info.type == fs.FileType.File:
        return _list_file(source)
    try:
        infos = source.filesystem.get_file_info(fs.FileSelector(source.path, recursive=True))
    except Exception as exc:
        raise UsageError(f"SOURCE {source.text}: cannot list ({_first_line(exc)})") from None
    root = source.path.rstrip("/") + "/"
    found = sorted((i.path, i.size) for i in infos
                   if i.type == fs.FileType.File and i.path.lower().endswith(IMAGE_EXTENSIONS)
                   and not (exclude is not None and _inside(i.path, exclude.path)))
    return Inputs(source, [p[len(root):] if p.startswith(root) else p for p, _ in found],
                  [p for p, _ in found], [-1 if s is None else int(s) for _, s in found])


def _inside(path: str, folder: str) -> bool:
    folder = folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")


def _local_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _list_file(source: Location) -> Inputs:
    """The inputs a list file names (see :func:`list_inputs`)."""
    try:
        with source.filesystem.open_input_stream(source.path) as f:
            data = f.read(MAX_LIST_BYTES + 1)
    except Exception as exc:
        raise UsageError(f"SOURCE {source.text}: cannot read the list file ({_first_line(exc)})") from None
    if len(data) > MAX_LIST_BYTES:
        raise UsageError(f"SOURCE {source.text}: list file larger than {MAX_LIST_BYTES >> 30} GiB; split it")
    if b"\0" in data[:65536]:
        raise UsageError(f"SOURCE {source.text}: not a folder or a text file listing image paths (binary data)")
    folder = os.path.dirname(source.path) if source.local else source.path.rsplit("/", 1)[0]
    names, paths, seen = [], [], set()
    for number, raw in enumerate(data.split(b"\n"), 1):
        if len(raw) > MAX_LINE_BYTES:
            raise UsageError(f"{source.text}:{number}: line longer than {MAX_LINE_BYTES} bytes (one path per line)")
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise UsageError(f"{source.text}:{number}: not UTF-8 text (one path per line)") from None
        if not line or line.startswith("#") or line in seen:
            continue
        if "\0" in line:
            raise UsageError(f"{source.text}:{number}: NUL character in a path")
        seen.add(line)
        names.append(line)
        if source.local:
            paths.append(os.path.normpath(os.path.join(folder, os.path.expanduser(line))))
        else:
            paths.append(line.lstrip("/") if line.startswith("/") else f"{folder}/{line}")
    return Inputs(source, names, paths, [-1] * len(names))


def read_one(filesystem, path: str, name: str, size: int, max_pixels: int | None) -> bytes:
    """The bytes of one input file; a file that cannot be an image within ``max_pixels`` (too
    large) is refused unread. Errors: one-line :class:`ImageError` naming ``name``."""
    fs = _fs()
    limit = max_file_bytes(max_pixels)
    if isinstance(filesystem, fs.LocalFileSystem):
        with open_regular_file(path) as f:  # a named pipe or device is refused, never waited on
            size = os.fstat(f.fileno()).st_size
            _check_size(name, size, limit, max_pixels)
            data = f.read()
    else:
        try:
            with filesystem.open_input_file(path) as f:
                size = f.size()
                _check_size(name, size, limit, max_pixels)
                data = f.read()
        except RetinaFaceError:
            raise
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except Exception as exc:
            raise ImageError(f"{name}: cannot read ({_first_line(exc)})") from None
    if not data:
        raise ImageError(f"{name}: empty file")
    return bytes(data)


def _check_size(name: str, size: int, limit: int | None, max_pixels: int | None) -> None:
    if limit is not None and size > limit:
        raise ImageError(f"{name}: {size} bytes, more than any image within the limit of "
                         f"{max_pixels / 1e6:g} megapixels needs (raise it with --max-pixels)")


def read_files(batch, *, filesystem, max_pixels: int | None):
    """Ray Data stage: rows ``{path, file, size}`` → ``{path, bytes, error}`` (``bytes`` null and
    ``error`` set for a file that cannot be read)."""
    import pyarrow as pa
    names = [os.fsdecode(n) if isinstance(n, bytes) else str(n) for n in batch["path"]]
    data, errors = [], []
    for name, path, size in zip(names, batch["file"], batch["size"]):
        try:
            data.append(read_one(filesystem, str(path), name, int(size), max_pixels))
            errors.append(None)
        except ImageError as exc:
            data.append(None)
            errors.append(" ".join(str(exc).split()))
        except (OSError, MemoryError) as exc:
            data.append(None)
            errors.append(f"{name}: cannot read ({type(exc).__name__}: {_first_line(exc)})")
    return pa.table({"path": pa.array(names, pa.string()), "bytes": pa.array(data, pa.binary()),
                     "error": pa.array(errors, pa.string())})
