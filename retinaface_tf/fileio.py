"""File helpers: image reading with one-line errors, atomic directory/file writes, bundled assets."""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import errno
import fnmatch
import io
import itertools
import json
import math
import os
import socket
import sys
import time
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np

from retinaface_tf.errors import ImageError, OutputError, OutputInUseError, RetinaFaceError

try:
    import fcntl  # POSIX: clears O_NONBLOCK once a file is known to be a regular one; output locks
except ImportError:  # Windows opens no FIFO without blocking anyway (and takes no output lock)
    fcntl = None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pbm")

# Images above this many pixels are refused from their header, before any pixel is decoded: a
# small file can declare 30000 x 30000 pixels (2.7 GB of BGR) and take the process down.
# 100 megapixels holds any camera photo (a 24 MP photo is a quarter of it); raise it with
# ``max_pixels=`` / ``--max-pixels``.
DEFAULT_MAX_PIXELS = 100_000_000

# Formats whose header gives the size (what OpenCV's decoders read); anything else is refused.
KNOWN_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WebP", "TIFF", "JPEG 2000", "PNM", "PFM", "Sun raster",
                 "Radiance HDR", "AVIF")


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: ``format`` (one of :data:`KNOWN_FORMATS`), pixel size."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def parse_pixel_count(text: str) -> int:
    """``--max-pixels`` values: a whole number of pixels, optionally with a decimal ``K`` / ``M`` /
    ``G`` suffix (``400M`` = 400 000 000). Raises ``ValueError``."""
    raw = str(text).strip()
    factor = {"k": 10**3, "m": 10**6, "g": 10**9}.get(raw[-1:].lower(), 1)
    number = raw[:-1] if factor > 1 else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a pixel count: {text!r} (e.g. 100000000 or 100M)") from None
    if not math.isfinite(value) or value < 1 or value * factor != int(value * factor):
        raise ValueError(f"not a positive whole number of pixels: {text!r}")
    return int(value * factor)


def max_pixels_arg(text: str) -> int:
    """argparse ``type`` for ``--max-pixels``: :func:`parse_pixel_count` with argparse's message."""
    try:
        return parse_pixel_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_max_pixels(max_pixels) -> int | None:
    """Validate a ``max_pixels`` argument: a positive integer, or ``None`` for no limit."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise RetinaFaceError(f"max_pixels must be a positive whole number of pixels or None, got {max_pixels!r}")
    return int(max_pixels)


LIMIT_HINT = "raise it with --max-pixels"


def _pixel_limit_error(path: str, header: ImageHeader, max_pixels: int, hint: str = LIMIT_HINT) -> ImageError:
    return ImageError(f"{path}: {header.format} of {header.width}x{header.height} = {header.pixels / 1e6:.4g} "
                      f"megapixels, over the limit of {max_pixels / 1e6:g} megapixels ({hint})")


@contextlib.contextmanager
def open_regular_file(path: str | os.PathLike, what: str = "image"):
    """Open ``path`` for reading as a binary file object, refusing anything but a regular file
    with a one-line :class:`ImageError` naming it. A named pipe is opened without blocking and
    refused, so a ``pipe.jpg`` never hangs the caller; a directory or device is refused too."""
    path = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an {what}") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"{path}: is a directory, not an {what}")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{path}: not a regular file (a pipe, device or socket); only files are read")
        if fcntl is not None and getattr(os, "O_NONBLOCK", 0):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_regular_file(path: str | os.PathLike, *, max_bytes: int, what: str = "file",
                      error: type[RetinaFaceError] = RetinaFaceError) -> bytes:
    """The bytes of ``path``, read only when it is a regular file (never a named pipe, which would
    hang, nor a device such as ``/dev/zero``, which never ends) of at most ``max_bytes`` bytes.
    Anything else is a one-line ``error`` naming the file (``not a regular file``, too large,
    missing)."""
    path = os.fspath(path)
    try:
        with open_regular_file(path, what) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise error(f"{path}: {size} bytes, more than a {what} may hold ({max_bytes} bytes)")
            data = f.read(max_bytes + 1)
    except ImageError as exc:
        raise error(str(exc)) from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # it grew while read
        raise error(f"{path}: more than a {what} may hold ({max_bytes} bytes)")
    return data


def _u16(b, off, order):
    return struct.unpack_from(order + "H", b, off)[0]


def _u32(b, off, order):
    return struct.unpack_from(order + "I", b, off)[0]


def _jpeg_size(f) -> tuple[int, int]:
    """Walk the JPEG marker segments (seeking over EXIF / ICC blobs) to the first SOFn."""
    f.seek(2)
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":  # tolerate stray bytes between segments, as libjpeg does
            byte = f.read(1)
        while byte == b"\xff":  # fill bytes
            byte = f.read(1)
        if not byte:
            raise ValueError("JPEG ends before its frame header")
        marker = byte[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("JPEG has no frame header before its image data")
        length = f.read(2)
        if len(length) < 2 or struct.unpack(">H", length)[0] < 2:
            raise ValueError("JPEG segment header is truncated")
        length = struct.unpack(">H", length)[0]
        if marker in sof:
            seg = f.read(5)
            if len(seg) < 5:
                raise ValueError("JPEG frame header is truncated")
            height, width = struct.unpack(">HH", seg[1:5])
            if height == 0:
                raise ValueError("JPEG leaves its height to a DNL marker (not supported)")
            return width, height
        f.seek(length - 2, os.SEEK_CUR)


def _tiff_size(f, head: bytes) -> tuple[int, int]:
    order = "<" if head[:2] == b"II" else ">"
    big = _u16(head, 2, order) == 43
    f.seek(0)
    if big:
        f.seek(struct.unpack_from(order + "Q", f.read(16), 8)[0])
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("TIFF directory offset points past the end of the file")
        count, entry = struct.unpack(order + "Q", raw)[0], 20
    else:
        f.seek(_u32(f.read(8), 4, order))
        raw = f.read(2)
        if len(raw) < 2:
            raise ValueError("TIFF directory offset points past the end of the file")
        count, entry = _u16(raw, 0, order), 12
    table = f.read(min(count, 4096) * entry)
    found = {}
    value_at = 12 if big else 8  # entry: tag, type, count, then the value (or its offset)
    for i in range(len(table) // entry):
        tag, kind = struct.unpack_from(order + "HH", table, i * entry)
        if tag in (256, 257):
            if kind == 3:
                found[tag] = _u16(table, i * entry + value_at, order)
            elif kind in (4, 16):
                found[tag] = struct.unpack_from(order + ("I" if kind == 4 else "Q"), table, i * entry + value_at)[0]
    if 256 not in found or 257 not in found:
        raise ValueError("TIFF directory has no ImageWidth / ImageLength")
    return found[256], found[257]


def _jp2_size(f) -> tuple[int, int]:
    """JP2 boxes: the ``ihdr`` box inside the ``jp2h`` header box (height, width)."""

    def boxes(start, end):
        pos = start
        while end is None or pos + 8 <= end:
            f.seek(pos)
            raw = f.read(8)
            if len(raw) < 8:
                return
            size, kind = struct.unpack(">I4s", raw)
            header = 8
            if size == 1:
                size, header = struct.unpack(">Q", f.read(8))[0], 16
            elif size == 0:
                size = (end or f.seek(0, os.SEEK_END)) - pos
            if size < header:
                raise ValueError("JPEG 2000 box is malformed")
            yield kind, pos + header, pos + size
            pos += size

    for kind, body, end in boxes(0, None):
        if kind == b"jp2h":
            for sub, sub_body, _ in boxes(body, end):
                if sub == b"ihdr":
                    f.seek(sub_body)
                    raw = f.read(8)
                    if len(raw) < 8:
                        break
                    height, width = struct.unpack(">II", raw)
                    return width, height
            break
        if kind == b"jp2c":
            break
    raise ValueError("JPEG 2000 file has no image header box (jp2h/ihdr) before its codestream")


def _pnm_size(head: bytes) -> tuple[int, int]:
    """``P1``..``P6`` and PFM: magic, then width and height as text (``#`` comments allowed);
    ``P7`` (PAM): ``WIDTH`` / ``HEIGHT`` lines."""
    text = head.decode("latin-1")
    if text.startswith("P7"):
        fields = dict(line.split(None, 1) for line in text.splitlines()[1:] if len(line.split(None, 1)) == 2)
        return int(fields["WIDTH"]), int(fields["HEIGHT"])
    tokens = []
    for line in text[2:].splitlines():
        tokens.extend(line.split("#", 1)[0].split())
        if len(tokens) >= 2:
            return int(tokens[0]), int(tokens[1])
    raise ValueError("header ends before width and height")


def _hdr_size(head: bytes) -> tuple[int, int]:
    """Radiance: header lines, a blank line, then the resolution line ``-Y H +X W``."""
    lines = head.split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip() and i + 1 < len(lines):
            parts = lines[i + 1].split()
            if len(parts) == 4 and parts[0][1:] in (b"Y", b"X") and parts[2][1:] in (b"Y", b"X"):
                a, b = int(parts[1]), int(parts[3])
                return (b, a) if parts[0][1:] == b"Y" else (a, b)
            break
    raise ValueError("Radiance header has no resolution line")


def _avif_size(f) -> tuple[int, int]:
    """AVIF (ISO-BMFF): the largest ``ispe`` (image spatial extents) property of the meta box."""
    f.seek(0)
    blob = f.read(1 << 20)
    best, at = None, blob.find(b"ispe")
    while at >= 4:
        if at + 16 <= len(blob):
            width, height = struct.unpack_from(">II", blob, at + 8)
            if best is None or width * height > best[0] * best[1]:
                best = (width, height)
        at = blob.find(b"ispe", at + 4)
    if best is None:
        raise ValueError("AVIF file has no image size property (ispe)")
    return best


def _parse_header(f) -> ImageHeader:
    head = f.read(512)
    if head.startswith(b"\xff\xd8"):
        fmt, size = "JPEG", _jpeg_size(f)
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) < 24:
            raise ValueError("PNG header is truncated")
        if head[12:16] != b"IHDR":
            raise ValueError("PNG does not start with its IHDR chunk")
        fmt, size = "PNG", struct.unpack_from(">II", head, 16)
    elif head.startswith(b"BM") and len(head) >= 26:
        if _u32(head, 14, "<") == 12:
            fmt, size = "BMP", (_u16(head, 18, "<"), _u16(head, 20, "<"))
        else:
            width, height = struct.unpack_from("<ii", head, 18)
            fmt, size = "BMP", (width, abs(height))
    elif head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        fmt, size = "GIF", (_u16(head, 6, "<"), _u16(head, 8, "<"))
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8 ":
            size = (_u16(head, 26, "<") & 0x3FFF, _u16(head, 28, "<") & 0x3FFF)
        elif chunk == b"VP8L":
            bits = _u32(head, 21, "<")
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif chunk == b"VP8X":
            size = (1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little"))
        else:
            raise ValueError(f"WebP with an unknown first chunk {chunk!r}")
        fmt = "WebP"
    elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        fmt, size = "TIFF", _tiff_size(f, head)
    elif head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        fmt, size = "JPEG 2000", _jp2_size(f)
    elif head.startswith(b"\xff\x4f\xff\x51") and len(head) >= 24:  # raw J2K codestream, SIZ marker
        xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", head, 8)
        fmt, size = "JPEG 2000", (xsiz - xo, ysiz - yo)
    elif head[:1] == b"P" and head[1:2] in b"1234567" and len(head) > 2 and head[2:3].isspace():
        fmt, size = "PNM", _pnm_size(head)
    elif head[:2] in (b"PF", b"Pf") and head[2:3].isspace():
        fmt, size = "PFM", _pnm_size(head)
    elif head[:4] == b"\x59\xa6\x6a\x95" and len(head) >= 12:
        fmt, size = "Sun raster", struct.unpack_from(">II", head, 4)
    elif head.startswith((b"#?RADIANCE", b"#?RGBE")):
        fmt, size = "Radiance HDR", _hdr_size(head)
    elif head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        fmt, size = "AVIF", _avif_size(f)
    else:
        raise LookupError("unknown format")
    width, height = (int(v) for v in size)
    return ImageHeader(fmt, width, height)


def probe_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                hint: str = LIMIT_HINT) -> ImageHeader:
    """Read only the header of an image file: its format and pixel size, without decoding.

    Raises :class:`ImageError` naming the file when it is missing, not a regular file (a named
    pipe, a device), not one of :data:`KNOWN_FORMATS`, has a malformed header or no pixels, or
    declares more than ``max_pixels`` pixels (``None``: no limit; ``hint``: what the message
    says to do about it)."""
    with open_regular_file(path) as f:
        return _probe_open(os.fspath(path), f, check_max_pixels(max_pixels), hint)


def _probe_open(path: str, f, max_pixels: int | None, hint: str = LIMIT_HINT) -> ImageHeader:
    try:
        header = _parse_header(f)
    except LookupError:
        f.seek(0)
        if not f.read(1):
            raise ImageError(f"{path}: empty file") from None
        raise ImageError(f"{path}: not a readable image (unknown format; {', '.join(KNOWN_FORMATS)} are read)") from None
    except (ValueError, struct.error, OSError, OverflowError, KeyError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) and not isinstance(exc, struct.error) else "header is truncated"
        raise ImageError(f"{path}: not a readable image (corrupt header: {reason})") from None
    if header.width <= 0 or header.height <= 0:
        raise ImageError(f"{path}: {header.format} header declares {header.width}x{header.height} pixels (no pixels)")
    if max_pixels is not None and header.pixels > max_pixels:
        raise _pixel_limit_error(path, header, max_pixels, hint)
    return header


def probe_image_bytes(data: bytes, label: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                      hint: str = LIMIT_HINT) -> ImageHeader:
    """:func:`probe_image` of an image held in memory (a TFRecord's ``image/encoded``);
    ``label`` names it in the one-line :class:`ImageError`."""
    return _probe_open(label, io.BytesIO(data), check_max_pixels(max_pixels), hint)


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               hint: str = LIMIT_HINT) -> np.ndarray:
    """Read any image file as a BGR uint8 ``[H, W, 3]`` array.

    Grayscale is replicated to 3 channels, BGRA drops alpha, 16-bit and float images are scaled
    to 8 bits. The header is checked first (:func:`probe_image`): only regular files are opened,
    and an image of more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`,
    ``None``: no limit) is refused before anything is decoded. Raises :class:`ImageError` naming
    the file when it is missing, unreadable, not an image, too large, or has no pixels. Any file
    name works, including ones that are not valid UTF-8 (OpenCV never sees the name).
    """
    path = os.fspath(path)
    max_pixels = check_max_pixels(max_pixels)
    with open_regular_file(path) as f:
        header = _probe_open(path, f, max_pixels, hint)
        _check_file_size(path, os.fstat(f.fileno()).st_size, max_pixels, hint)
        f.seek(0)
        try:
            data = np.frombuffer(f.read(), dtype=np.uint8)
        except OSError as exc:
            raise ImageError(f"{path}: cannot read: {exc.strerror}") from None
    return _decode(path, data, header, max_pixels)


READ_AHEAD = 4  # images decoded ahead of the detector by read_ahead's threads


def read_ahead(keys: Iterable, read, *, depth: int = READ_AHEAD, workers: int = 2):
    """``(key, read(key))`` in the order of ``keys``, with up to ``depth`` reads running ahead on
    ``workers`` threads (file reads and OpenCV's decoding release the GIL, so they overlap the
    detection of the images before). ``read`` should return its errors rather than raise them.
    Closing the generator cancels the reads not started and waits for the running ones."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retinaface-read")
    pending: collections.deque = collections.deque()
    try:
        it = iter(keys)
        for key in itertools.islice(it, depth):
            pending.append((key, pool.submit(read, key)))
        while pending:
            key, future = pending.popleft()
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append((nxt, pool.submit(read, nxt)))
            yield key, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def decode_image(data: bytes, name: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`read_image` for an image file's bytes already in memory (read from an object store,
    a Parquet column, ...): the same header checks, decoder and conversion, so the same pixels.
    ``name`` is what the one-line :class:`ImageError` names."""
    max_pixels = check_max_pixels(max_pixels)
    header = _probe_open(name, io.BytesIO(data), max_pixels)
    _check_file_size(name, len(data), max_pixels)
    return _decode(name, np.frombuffer(data, dtype=np.uint8), header, max_pixels)


def max_file_bytes(max_pixels: int | None) -> int | None:
    """The largest file any image within ``max_pixels`` needs (larger files are refused unread)."""
    return None if max_pixels is None else 8 * max_pixels + (64 << 20)


def _check_file_size(path: str, size: int, max_pixels: int | None, hint: str = LIMIT_HINT) -> None:
    limit = max_file_bytes(max_pixels)
    if limit is not None and size > limit:
        raise ImageError(f"{path}: {size} bytes, more than any image within the limit of "
                         f"{max_pixels / 1e6:g} megapixels needs ({hint})")


def _decode(path: str, data: np.ndarray, header: ImageHeader, max_pixels: int | None) -> np.ndarray:
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageError(f"{path}: not a readable image ({header.format}: {first_line(exc)})") from None
    except MemoryError:
        raise ImageError(f"{path}: out of memory decoding {header.width}x{header.height} pixels") from None
    if image is None:
        raise ImageError(f"{path}: not a readable image (corrupt or unsupported {header.format})")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:  # the decoder disagreed
        raise _pixel_limit_error(path, ImageHeader(header.format, image.shape[1], image.shape[0]), max_pixels, hint)
    try:
        return to_bgr_uint8(image)
    except ValueError as exc:
        raise ImageError(f"{path}: {exc}") from None


def first_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's message (OpenCV's ``cv2.error`` spans several)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def encode_image(image: np.ndarray, suffix: str) -> bytes:
    """Encode a BGR image as ``suffix`` (``.jpg``, ``.png``, ...) in memory. Write the bytes with
    :func:`write_bytes_atomic`: Python handles the file name (``cv2.imwrite`` crashes on names
    that are not valid UTF-8)."""
    ok, buf = cv2.imencode(suffix, image)
    if not ok:
        raise ImageError(f"cannot encode an image as {suffix}")
    return buf.tobytes()


def to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an ``[H, W]`` / ``[H, W, 1|3|4]`` array of uint8/uint16/float to BGR uint8."""
    if image is None:
        raise ValueError("not an image (got None)")
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.size == 0 or min(image.shape[:2]) == 0:
        raise ValueError(f"zero-sized or malformed image of shape {image.shape}")
    if image.dtype.kind not in "uifb":
        raise ValueError(f"image array of unsupported dtype {image.dtype}")
    if image.dtype == np.uint16:
        image = (image / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype.kind == "f":
        finite_max = float(np.nanmax(image)) if image.size else 0.0
        scale = 255.0 if finite_max <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image) * scale + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 1:
        image = cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.shape[2] != 3:
        raise ValueError(f"unsupported number of channels {image.shape[2]}")
    return np.ascontiguousarray(image)


def expand_image_paths(paths, *, exclude=()) -> list[str]:
    """Expand files and folders (recursively, sorted) into image paths. Files are kept as
    given even with an unknown extension, so a non-image file gets its own clear error later.
    Folders in ``exclude`` (e.g. the command's own output folder inside an input folder) are not
    walked into."""
    skip = {os.path.realpath(os.fspath(e)) for e in exclude}
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in skip)
                found.append((root, sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))))
            for root, files in sorted(found):
                out.extend(os.path.join(root, f) for f in files)
        else:
            out.append(p)
    return out


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, *, suffix: str = ".tmp"):
    """Yield a temporary path in ``target``'s folder (ending in ``suffix``, for writers that
    choose the format by extension: ``.weights.h5``, ``.jpg``); on success it replaces
    ``target`` in one rename, so a reader or a kill never sees a half-written file. On error
    the temporary file is removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; the result is an ordinary file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


# files a model folder may hold beside what a command writes; they are carried into the new folder
COMPANION_FILES = ("README*", "LICENSE*")


def check_output_folder(target: str | os.PathLike, *, owned: Iterable[str],
                        companions: Iterable[str] = COMPANION_FILES) -> None:
    """Refuse, before any work, to replace ``target`` unless it is absent, an empty folder, or a
    folder holding only entries named in ``owned`` (what the command itself writes) and regular
    files matching ``companions`` (a README, a licence: carried over by :func:`atomic_directory`).
    A file, the current folder (or one that contains it) and a folder holding anything else are a
    one-line :class:`OutputError` naming the first foreign entry; nothing is touched."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise OutputError(f"{target}: exists and is not a folder; give a new or empty folder")
    resolved, cwd = target.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"{target}: is the current folder (or contains it); give a new or empty folder")
    owned, companions = set(owned), tuple(companions)
    for item in sorted(target.iterdir()):
        if item.name in owned or is_lock_file(item.name):
            continue
        if item.is_file() and not item.is_symlink() and any(fnmatch.fnmatch(item.name, c) for c in companions):
            continue
        raise OutputError(f"{target}: holds {item.name!r}, which this command did not write; "
                          "give a new or empty folder (nothing was changed)")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, owned: Iterable[str] | None = None,
                     companions: Iterable[str] = COMPANION_FILES):
    """Yield a temporary directory next to ``target``; on success it replaces ``target`` in one
    rename (an existing target is moved aside first and removed after). On error the temporary
    directory is removed and ``target`` is left exactly as it was.

    An existing ``target`` is first checked by :func:`check_output_folder`: with ``owned`` (the
    names the new content may replace) it may hold only those and ``companions`` files, which are
    copied into the new folder before the swap; without ``owned`` it must be empty. So a swap never
    drops anything the command did not write."""
    target = Path(target)
    check_output_folder(target, owned=owned or (), companions=companions if owned is not None else ())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        check_output_folder(target, owned=owned or (), companions=companions if owned is not None else ())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.is_dir():
        for item in target.iterdir():  # only owned names and companion files are left (checked above)
            if item.name not in (owned or ()) and not is_lock_file(item.name) and not (tmp / item.name).exists():
                shutil.copy2(item, tmp / item.name)
    os.chmod(tmp, _file_mode() | 0o111)  # mkdtemp makes 0700; a model folder should be readable like any other
    backup = None
    if target.exists():
        backup = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True) if backup.is_dir() else backup.unlink()


def bundled_model_dir() -> Path:
    """Folder of the bundled default model (converted official mobilenet0.25 weights)."""
    source_tree = Path(__file__).resolve().parents[1] / "saved_models" / "mobilenet025"
    if source_tree.is_dir():  # a checkout (editable install or run from source)
        return source_tree
    return Path(str(files("retinaface_tf.saved_models") / "mobilenet025"))


def bundled_model(name) -> Path | None:
    """The bundled model folder a bare name such as ``mobilenet025`` names (as ``--config
    mobilenet025`` names a bundled config), or ``None`` when ``name`` names none."""
    if not isinstance(name, str) or not name or os.sep in name or "/" in name or name.startswith("."):
        return None
    folder = bundled_model_dir().parent / name
    return folder if (folder / "model.weights.h5").is_file() else None


def bundled_image() -> Path:
    """The reference's MIT-licensed demo photo, bundled for the README's first command."""
    return Path(str(files("retinaface_tf.assets") / "biubug6_test.jpg"))


# ---------------------------------------------------------------------- output locks
LOCK_SUFFIX = ".retinaface-tf.lock"


def is_lock_file(name: str) -> bool:
    """Whether ``name`` (a file name) is an :func:`output_lock` file: folder checks ignore them."""
    return name.startswith(".") and name.endswith(LOCK_SUFFIX)


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of the output ``target`` (a folder or a file): ``.NAME.retinaface-tf.lock``
    beside it, ``NAME`` its real name, so every spelling of one output (``out``, ``./out``, a
    symlink to it) shares one lock, and the lock never lies inside the output it guards."""
    real = Path(os.path.realpath(os.fspath(target)))
    if not real.name:  # the file system root
        return real / LOCK_SUFFIX
    return real.parent / f".{real.name}{LOCK_SUFFIX}"


def _lock_holder(fd: int) -> str:
    """What the lock file open as ``fd`` says of its holder, for a message."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8", "replace"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        host = f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
        return f"pid {int(info['pid'])}{host}, started {started}: {str(info.get('command', ''))[:200]}"
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return "pid unknown: it has not written its name yet"


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, *, flag: str = "--output", command: str | None = None):
    """Hold the lock of the output ``target`` (a folder, or a file such as a ``.tflite``) for the
    block: a second run into the same output, in this or another process, is refused at once with
    a one-line :class:`~retinaface_tf.errors.OutputInUseError` naming the holder (pid, start time,
    command line) instead of both writing the same files.

    Standard library only: ``fcntl.flock`` on the file :func:`lock_path` (beside ``target``,
    created with its parent folders when missing), which holds the holder's pid, start time, host
    and command line as JSON. The kernel releases a flock when its process ends, however it ends
    (a crash, ``kill -9``), so the lock of a dead process is stale by construction and the next
    run takes it over (and rewrites the holder). The lock file is removed when the block ends.
    Where ``flock`` is missing (Windows) or the folder beside ``target`` cannot be written, no lock
    is taken (the latter says so on stderr)."""
    path = lock_path(target)
    if fcntl is None:
        yield None
        return
    created = []  # the parent folders made for the lock: removed at the end when still empty
    folder = path.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    try:
        with _locked(path, target, flag, command) as held:
            yield held
    finally:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def _locked(path: Path, target, flag: str, command: str | None):
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.EEXIST):  # a file where a folder should be: the command says so
                yield None
                return
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                print(f"warning: {flag} {target}: cannot create the lock file {path} ({exc.strerror}); "
                      "a second run into it at the same time would not be stopped", file=sys.stderr)
                yield None
                return
            raise OutputError(f"{flag} {target}: cannot create the lock file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _lock_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputInUseError(f"{flag} {target}: in use by another run ({holder}); wait for it to end or "
                                       f"choose another {flag} (nothing was changed)") from None
            raise OutputError(f"{flag} {target}: cannot lock {path}: {exc.strerror}") from None
        try:  # the holder before us may have removed the file after we opened it: lock the one in place
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        record = {"pid": os.getpid(), "started": time.time(), "host": socket.gethostname(),
                  "command": " ".join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:])
                  if command is None else command}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8", "backslashreplace"))
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still held: a waiting opener sees another inode and retries
        os.close(fd)


@contextlib.contextmanager
def output_locks(targets, **kwargs):
    """:func:`output_lock` on each of ``targets`` (``(target, flag)`` pairs; ``None`` targets and
    repeats of one real path are skipped), in order."""
    with contextlib.ExitStack() as stack:
        seen = set()
        for target, flag in targets:
            if target is None or lock_path(target) in seen:
                continue
            seen.add(lock_path(target))
            stack.enter_context(output_lock(target, flag=flag, **kwargs))
        yield
