"""Read PyTorch ``.pth`` checkpoints without PyTorch, safely, and map them onto the Keras model.

:func:`load_torch_checkpoint` understands both serialisations ``torch.save`` has used: the
legacy one (a magic number, protocol, sys-info and object pickle, then the raw storages: the
official biubug6 files) and the zip one (``archive/data.pkl`` + ``archive/data/<key>``).

A checkpoint is untrusted input, so the reader is defensive end to end:

* The pickle runs on a small pickle machine of its own (not :mod:`pickle`): it resolves only the
  handful of globals a state dict needs (``collections.OrderedDict``,
  ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, the ``torch.*Storage`` types) to
  inert stand-ins; any other global (``os.system``, ``builtins.eval``, a model class, ...) is
  refused before anything is called. It counts what it builds (operations, objects, memo
  entries, nesting depth), refuses self-referencing containers and non-scalar dict keys, and
  never recurses, so a small file cannot make it run long, use much memory or overflow a stack.
* Only regular files are read (no ``/dev/zero``, FIFO or folder), at most :data:`MAX_FILE_BYTES`.
  Zip members are read with the size they declare, only stored or deflated, and all of them
  together inflate to at most :data:`MAX_INFLATION` times the file size (64 MiB at least).
* Every tensor record is checked against its storage before an array is built: a known dtype,
  offset, sizes and strides non-negative, every addressed element inside the storage, no more
  elements than the storage holds, the storage exactly as long as the bytes the file holds for
  it; all tensors together hold at most :data:`MAX_VIEW_RATIO` times their storages' bytes.

Every problem is a one-line :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import collections
import io
import math
import os
import re
import stat
import struct
import zipfile
import zlib

import numpy as np

from retinaface_tf.errors import CheckpointError


# ------------------------------------------------------------------------------------ limits
MAX_FILE_BYTES = 4 << 30          # a RetinaFace checkpoint is 2-110 MB
MAX_INFLATION = 8                 # zip: all members read inflate to <= 8 x the file size ...
MIN_INFLATE_BUDGET = 64 << 20     # ... or 64 MiB, whichever is larger
MAX_VIEW_RATIO = 4                # tensors may hold <= 4 x the bytes of the storages they view
MAX_PICKLE_OPS = 2_000_000        # a mobilenet0.25 state dict pickle is ~11,000 operations
MAX_PICKLE_OBJECTS = 1_000_000
MAX_MEMO = 1_000_000
MAX_DEPTH = 1000
MAX_INT_BYTES = 32                # LONG1/LONG4 integers
MAX_LINE = 4096                   # text opcodes (GLOBAL, PUT/GET, INT)
MAX_DIMS = 32
MAX_ZIP_ENTRIES = 1_000_000

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,100}\Z")


def _plain(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, unprintable ones shown as ``?`` (stays one line)."""
    cut = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cut + ("…" if len(text) > limit else "")


def _short(value, limit: int = 80) -> str:
    """repr of a str/bytes/int key, cut to ``limit`` characters (never repr a container)."""
    if isinstance(value, (str, bytes)):
        text = repr(value[:limit])
        return text + ("…" if len(value) > limit else "")
    if isinstance(value, (int, float, bool, type(None))):
        text = repr(value)
        return text if len(text) <= limit else text[:limit] + "…"
    return _kind(value)


def _kind(value) -> str:
    """What a pickled value is, in a user's words (never the reader's private class names)."""
    return {_TensorRecord: "tensor", _Storage: "storage", _Callable: "function", _StorageType: "storage type",
            _Mark: "mark"}.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------ stand-ins
class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """One storage a pickle refers to: its dtype and declared element count; ``data`` (a buffer
    of exactly ``numel * itemsize`` bytes) is attached once the file's bytes for it are found."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.nbytes = numel * dtype.itemsize
        self.data = None
        self.legacy_span: tuple[int, int] | None = None  # (start, numel in the file's header)


class _TensorRecord:
    """What ``_rebuild_tensor_v2(storage, offset, size, stride, ...)`` asked for; unvalidated."""

    def __init__(self, storage: _Storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Callable:
    def __init__(self, name: str):
        self.name = name


_ORDERED_DICT = _Callable("collections.OrderedDict")
_REBUILD_TENSOR = _Callable("torch._utils._rebuild_tensor")
_REBUILD_TENSOR_V2 = _Callable("torch._utils._rebuild_tensor_v2")
_REBUILD_PARAMETER = _Callable("torch._utils._rebuild_parameter")
_GLOBALS = {
    ("collections", "OrderedDict"): _ORDERED_DICT,
    ("torch._utils", "_rebuild_tensor"): _REBUILD_TENSOR,
    ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_TENSOR_V2,
    ("torch._utils", "_rebuild_parameter"): _REBUILD_PARAMETER,
}
_SCALARS = (str, bytes, int, float, bool, type(None))


class _Mark:
    pass


_MARK = _Mark()


# --------------------------------------------------------------------------- pickle machine
class _PickleMachine:
    """A restricted, bounded, non-recursive pickle interpreter for state dicts.

    Builds only scalars, tuples, lists, dicts, ``OrderedDict``s, (frozen)sets, storages (from
    persistent ids) and tensor records. Containers may not be changed once they are inside
    another one (so no cycles, and each container's nesting depth is exact when it is built).
    The counters span all the pickles of one file.
    """

    def __init__(self, data, path: str, storages: dict[str, _Storage], *, legacy: bool):
        self.data = data
        self.path = path
        self.storages = storages
        self.legacy = legacy
        self.ops = 0
        self.objects = 0
        self._depth: dict[int, int] = {}   # id(container) -> nesting depth
        self._nested: set[int] = set()     # ids of containers already inside another one
        self._alive: list = []             # keeps every tracked container alive (ids stay unique)

    # -- errors and bookkeeping
    def _fail(self, what: str):
        raise CheckpointError(f"{self.path}: corrupt pickle: {what}")

    def _new(self, obj, depth: int = 1):
        self.objects += 1
        if self.objects > MAX_PICKLE_OBJECTS:
            raise CheckpointError(f"{self.path}: the pickle builds more than {MAX_PICKLE_OBJECTS} objects")
        if isinstance(obj, (list, dict, tuple, set, frozenset)):
            self._depth[id(obj)] = depth
            self._alive.append(obj)
        return obj

    def _depth_of(self, obj) -> int:
        return self._depth.get(id(obj), 0)

    def _nest(self, child) -> int:
        """Record that ``child`` goes into a container; returns the container's depth from it."""
        d = self._depth_of(child) + 1
        if d > MAX_DEPTH:
            raise CheckpointError(f"{self.path}: the pickle nests containers more than {MAX_DEPTH} levels deep")
        if isinstance(child, (list, dict, set)):
            self._nested.add(id(child))
        return d

    def _grow(self, container, children):
        """Add ``children`` (already checked) to the depth of mutable ``container``."""
        if id(container) in self._nested:
            self._fail("a container is changed after being placed in another one (self-reference?)")
        d = self._depth_of(container)
        for c in children:
            d = max(d, self._nest(c))
        if id(container) in self._nested:
            self._fail("a container is placed inside itself")
        self._depth[id(container)] = d

    def _key(self, k):
        if not isinstance(k, _SCALARS):
            self._fail(f"dict key or set item of type {_kind(k)} (only strings and numbers)")
        return k

    # -- reading
    def _take(self, n: int):
        if n < 0 or self.pos + n > len(self.data):
            self._fail("unexpected end of data")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def _line(self) -> bytes:
        end = self.data.find(b"\n", self.pos, self.pos + MAX_LINE)
        if end < 0:
            self._fail("unterminated or overlong text field")
        line = self.data[self.pos:end]
        self.pos = end + 1
        return line

    def _u(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self._take(size))[0]

    def _str(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._fail("a string is not valid UTF-8")

    def _long(self, n: int) -> int:
        if n > MAX_INT_BYTES:
            self._fail(f"an integer of {n} bytes (at most {MAX_INT_BYTES})")
        return int.from_bytes(self._take(n), "little", signed=True)

    # -- the stack
    def _pop(self):
        if not self.stack:
            self._fail("stack underflow")
        v = self.stack.pop()
        if v is _MARK:
            self._fail("unexpected mark")
        return v

    def _top(self):
        if not self.stack or self.stack[-1] is _MARK:
            self._fail("stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list:
        if not self.marks:
            self._fail("missing mark")
        start = self.marks.pop()
        if start > len(self.stack):
            self._fail("stack underflow")
        items = self.stack[start:]
        del self.stack[start - 1:]  # the items and the mark itself
        if any(v is _MARK for v in items):
            self._fail("unexpected mark")
        return items

    def _put(self, idx, value):
        if value is _MARK:
            self._fail("memoizing a mark")
        if idx not in self.memo and len(self.memo) >= MAX_MEMO:
            raise CheckpointError(f"{self.path}: the pickle memoizes more than {MAX_MEMO} objects")
        self.memo[idx] = value

    def _get(self, idx):
        try:
            return self.memo[idx]
        except KeyError:
            self._fail(f"memo entry {idx} was never stored")

    def _tuple(self, items):
        d = 1
        for c in items:
            d = max(d, self._nest(c))
        return self._new(tuple(items), d)

    def _append(self, container, items):
        if isinstance(container, list):
            self._grow(container, items)
            container.extend(items)
        else:
            self._fail(f"appending to a value of type {_kind(container)}")

    def _setitems(self, container, items):
        if len(items) % 2:
            self._fail("odd number of items for a dict")
        if not isinstance(container, dict):
            self._fail(f"setting items of a value of type {_kind(container)}")
        keys = [self._key(k) for k in items[0::2]]
        self._grow(container, items[1::2])
        for k, v in zip(keys, items[1::2]):
            container[k] = v

    # -- globals, calls, persistent ids
    def _global(self, module: str, name: str):
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            if _STORAGE_DTYPES.get(name) is None:
                raise CheckpointError(f"{self.path}: unsupported tensor type torch.{_plain(name)}")
            return _StorageType(name)
        raise CheckpointError(
            f"{self.path}: refusing to load: the checkpoint asks to import {_plain(module)}."
            f"{_plain(name)}, which a plain weights file never needs (only tensors and "
            "containers are allowed)")

    def _reduce(self, func, args):
        if not isinstance(args, tuple):
            self._fail("call arguments are not a tuple")
        if func is _ORDERED_DICT:
            if args:
                self._fail("OrderedDict called with arguments")
            return self._new(collections.OrderedDict())
        if func is _REBUILD_TENSOR or func is _REBUILD_TENSOR_V2:
            if not 4 <= len(args) <= 7 or not isinstance(args[0], _Storage):
                self._fail(f"{func.name} called with {len(args)} arguments / no storage")
            self.objects += 1
            return _TensorRecord(*args[:4])
        if func is _REBUILD_PARAMETER:
            if not 1 <= len(args) <= 3:
                self._fail("_rebuild_parameter called with wrong arguments")
            return args[0]
        if isinstance(func, _StorageType):
            self._fail(f"calling torch.{func.name}")
        self._fail(f"calling a value of type {_kind(func)}, which is not a function")

    def _persistent(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            self._fail("unknown persistent id (only tensor storages are allowed)")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _StorageType):
            self._fail("a storage without a tensor type")
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if not isinstance(key, str) or not _STORAGE_KEY.match(key):
            self._fail(f"bad storage key {_short(key)}")
        if type(numel) is not int or numel < 0:
            self._fail(f"storage {key} declares {_short(numel)} elements")
        if self.legacy and len(pid) > 5 and pid[5] is not None:
            raise CheckpointError(f"{self.path}: storage {key} is a view of another storage "
                                  "(pre-1.0 torch format), not supported")
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(key, storage_type.dtype, numel)
            self.objects += 1
        elif st.dtype != storage_type.dtype or st.numel != numel:
            self._fail(f"storage {key} is declared twice, as {st.numel} x {st.dtype} and "
                       f"{numel} x {storage_type.dtype}")
        return st

    # -- the loop
    def load(self, pos: int):
        """Run one pickle starting at ``pos``; returns ``(object, position after STOP)``."""
        self.pos = pos
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict = {}
        data = self.data
        n = len(data)
        stack = self.stack
        while True:
            if self.pos >= n:
                self._fail("unexpected end of data (no STOP)")
            self.ops += 1
            if self.ops > MAX_PICKLE_OPS:
                raise CheckpointError(f"{self.path}: the pickle runs more than {MAX_PICKLE_OPS} operations")
            op = data[self.pos]
            self.pos += 1
            if op == 0x80:                        # PROTO
                if self._take(1)[0] > 5:
                    self._fail("unsupported pickle protocol")
            elif op == 0x95:                      # FRAME (framing is only a hint)
                if self._u("<Q") > n - self.pos:
                    self._fail("frame longer than the data")
            elif op == 0x2E:                      # STOP
                if len(stack) != 1 or self.marks:
                    self._fail("malformed end of pickle")
                return stack[0], self.pos
            elif op == 0x28:                      # MARK
                self.marks.append(len(stack) + 1)
                stack.append(_MARK)
            elif op == 0x30:                      # POP
                if stack and stack[-1] is _MARK:
                    self._pop_mark()
                else:
                    self._pop()
            elif op == 0x31:                      # POP_MARK
                self._pop_mark()
            elif op == 0x32:                      # DUP
                stack.append(self._top())
            elif op == 0x4E:                      # NONE
                stack.append(None)
            elif op == 0x88:                      # NEWTRUE
                stack.append(True)
            elif op == 0x89:                      # NEWFALSE
                stack.append(False)
            elif op == 0x4A:                      # BININT
                stack.append(self._new(self._u("<i")))
            elif op == 0x4B:                      # BININT1
                stack.append(self._take(1)[0])
            elif op == 0x4D:                      # BININT2
                stack.append(self._u("<H"))
            elif op == 0x8A:                      # LONG1
                stack.append(self._new(self._long(self._take(1)[0])))
            elif op == 0x8B:                      # LONG4
                stack.append(self._new(self._long(self._u("<i"))))
            elif op == 0x49 or op == 0x4C:        # INT / LONG (text)
                line = self._line().rstrip(b"L")
                if op == 0x49 and line in (b"00", b"01"):
                    stack.append(line == b"01")
                elif len(line) > 80 or not re.fullmatch(rb"[+-]?\d+", line):
                    self._fail("bad text integer")
                else:
                    stack.append(self._new(int(line)))
            elif op == 0x47:                      # BINFLOAT
                stack.append(self._new(self._u(">d")))
            elif op == 0x46:                      # FLOAT (text)
                line = self._line()
                try:
                    stack.append(self._new(float(line)))
                except ValueError:
                    self._fail("bad text float")
            elif op == 0x58:                      # BINUNICODE
                stack.append(self._new(self._str(self._take(self._u("<I")))))
            elif op == 0x8C:                      # SHORT_BINUNICODE
                stack.append(self._new(self._str(self._take(self._take(1)[0]))))
            elif op == 0x8D:                      # BINUNICODE8
                stack.append(self._new(self._str(self._take(self._u("<Q")))))
            elif op == 0x54:                      # BINSTRING (python 2 str)
                stack.append(self._new(self._str(self._take(self._u("<i")))))
            elif op == 0x55:                      # SHORT_BINSTRING
                stack.append(self._new(self._str(self._take(self._take(1)[0]))))
            elif op == 0x42:                      # BINBYTES
                stack.append(self._new(self._take(self._u("<I"))))
            elif op == 0x43:                      # SHORT_BINBYTES
                stack.append(self._new(self._take(self._take(1)[0])))
            elif op == 0x8E or op == 0x96:        # BINBYTES8 / BYTEARRAY8
                stack.append(self._new(self._take(self._u("<Q"))))
            elif op == 0x5D:                      # EMPTY_LIST
                stack.append(self._new([]))
            elif op == 0x7D:                      # EMPTY_DICT
                stack.append(self._new({}))
            elif op == 0x29:                      # EMPTY_TUPLE
                stack.append(self._new(()))
            elif op == 0x8F:                      # EMPTY_SET
                stack.append(self._new(set()))
            elif op == 0x6C:                      # LIST
                items = self._pop_mark()
                lst = self._new([])
                self._append(lst, items)
                stack.append(lst)
            elif op == 0x64:                      # DICT
                items = self._pop_mark()
                dct = self._new({})
                self._setitems(dct, items)
                stack.append(dct)
            elif op == 0x74:                      # TUPLE
                stack.append(self._tuple(self._pop_mark()))
            elif op in (0x85, 0x86, 0x87):        # TUPLE1/2/3
                k = op - 0x84
                items = [self._pop() for _ in range(k)][::-1]
                stack.append(self._tuple(items))
            elif op == 0x91:                      # FROZENSET
                items = [self._key(v) for v in self._pop_mark()]
                stack.append(self._new(frozenset(items)))
            elif op == 0x61:                      # APPEND
                v = self._pop()
                self._append(self._top(), [v])
            elif op == 0x65:                      # APPENDS
                items = self._pop_mark()
                self._append(self._top(), items)
            elif op == 0x73:                      # SETITEM
                v = self._pop()
                k = self._pop()
                self._setitems(self._top(), [k, v])
            elif op == 0x75:                      # SETITEMS
                items = self._pop_mark()
                self._setitems(self._top(), items)
            elif op == 0x90:                      # ADDITEMS
                items = [self._key(v) for v in self._pop_mark()]
                target = self._top()
                if not isinstance(target, set):
                    self._fail(f"adding items to a value of type {_kind(target)}")
                self._grow(target, [])
                target.update(items)
            elif op == 0x70:                      # PUT
                line = self._line()
                if not line.isdigit() or len(line) > 12:
                    self._fail("bad memo index")
                self._put(int(line), self._top())
            elif op == 0x71:                      # BINPUT
                self._put(self._take(1)[0], self._top())
            elif op == 0x72:                      # LONG_BINPUT
                self._put(self._u("<I"), self._top())
            elif op == 0x94:                      # MEMOIZE
                self._put(len(self.memo), self._top())
            elif op == 0x67:                      # GET
                line = self._line()
                if not line.isdigit() or len(line) > 12:
                    self._fail("bad memo index")
                stack.append(self._get(int(line)))
            elif op == 0x68:                      # BINGET
                stack.append(self._get(self._take(1)[0]))
            elif op == 0x6A:                      # LONG_BINGET
                stack.append(self._get(self._u("<I")))
            elif op == 0x63:                      # GLOBAL
                module = self._str(self._line())
                name = self._str(self._line())
                stack.append(self._global(module, name))
            elif op == 0x93:                      # STACK_GLOBAL
                name = self._pop()
                module = self._pop()
                if not (isinstance(module, str) and isinstance(name, str)):
                    self._fail("STACK_GLOBAL without strings")
                stack.append(self._global(module, name))
            elif op == 0x52:                      # REDUCE
                args = self._pop()
                func = self._pop()
                stack.append(self._reduce(func, args))
            elif op == 0x62:                      # BUILD: object state (OrderedDict._metadata); dropped
                state = self._pop()
                target = self._top()
                if not isinstance(target, collections.OrderedDict):
                    self._fail(f"setting the state of a value of type {_kind(target)}")
                self._grow(target, [state])
            elif op == 0x51:                      # BINPERSID
                stack.append(self._persistent(self._pop()))
            else:
                name = _OPCODE_NAMES.get(op)
                self._fail(f"pickle opcode {name or hex(op)} is not allowed in a weights file"
                           if name else f"unknown pickle opcode {hex(op)}")


_OPCODE_NAMES = {0x50: "PERSID", 0x53: "STRING", 0x56: "UNICODE", 0x69: "INST", 0x6F: "OBJ",
                 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4",
                 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER"}


# -------------------------------------------------------------------------------- reading
def _read_regular_file(path: str) -> bytes:
    """The whole file, if it is a regular file of at most MAX_FILE_BYTES (FIFOs never block)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a character device" if stat.S_ISCHR(st.st_mode)
                    else "a block device" if stat.S_ISBLK(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a plain file")
            raise CheckpointError(f"{path}: is {kind}, not a regular checkpoint file")
        if st.st_size > MAX_FILE_BYTES:
            raise CheckpointError(f"{path}: is {st.st_size} bytes, more than the {MAX_FILE_BYTES} "
                                  f"({MAX_FILE_BYTES / 2**30:g} GiB) a checkpoint may have")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(st.st_size + 1)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) != st.st_size:
        raise CheckpointError(f"{path}: changed size while being read")
    return data


def _zip_entry_count(data: bytes, path: str) -> None:
    """Refuse archives whose directory claims more than MAX_ZIP_ENTRIES entries (before zipfile
    builds an object per entry)."""
    eocd = data.rfind(b"PK\x05\x06", max(0, len(data) - 65557))
    if eocd < 0 or eocd + 22 > len(data):
        raise CheckpointError(f"{path}: corrupt zip archive (no end of central directory)")
    entries = struct.unpack_from("<H", data, eocd + 10)[0]
    if entries == 0xFFFF and eocd >= 20 and data[eocd - 20:eocd - 16] == b"PK\x06\x07":
        rec = struct.unpack_from("<Q", data, eocd - 12)[0]
        if rec + 40 <= len(data) and data[rec:rec + 4] == b"PK\x06\x06":
            entries = struct.unpack_from("<Q", data, rec + 32)[0]
    if entries > MAX_ZIP_ENTRIES:
        raise CheckpointError(f"{path}: zip archive lists {entries} entries (at most {MAX_ZIP_ENTRIES})")


class _ZipReader:
    """Bounded reads of zip members: declared size checked, stored/deflated only, a total budget."""

    def __init__(self, zf: zipfile.ZipFile, path: str, budget: int):
        self.zf, self.path, self.budget = zf, path, budget

    def info(self, name: str) -> zipfile.ZipInfo:
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self.path}: zip member {name} is missing") from None
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{self.path}: zip member {name} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(f"{self.path}: zip member {name} uses compression method "
                                  f"{info.compress_type} (torch writes stored members)")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise CheckpointError(f"{self.path}: zip member {name}: stored with {info.compress_size} "
                                  f"bytes but declares {info.file_size}")
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > 1100 * max(info.compress_size, 1):
            raise CheckpointError(f"{self.path}: zip member {name} declares {info.file_size} bytes from "
                                  f"{info.compress_size} compressed (impossible for deflate)")
        return info

    def read(self, info: zipfile.ZipInfo) -> bytes:
        size = info.file_size
        if size > self.budget:
            raise CheckpointError(
                f"{self.path}: zip member {info.filename} would inflate to {size} bytes, more than the "
                f"archive may hold ({MAX_INFLATION} x its size, at least {MIN_INFLATE_BUDGET >> 20} MiB)")
        self.budget -= size
        with self.zf.open(info) as fh:
            raw = fh.read(size)
            extra = fh.read(1)  # reaching the end also checks the CRC
        if len(raw) != size or extra:
            raise CheckpointError(f"{self.path}: zip member {info.filename} holds a different number of "
                                  f"bytes than the {size} it declares")
        return raw


def _load_legacy(data: bytes, path: str):
    storages: dict[str, _Storage] = {}
    pm = _PickleMachine(data, path, storages, legacy=True)
    magic, pos = pm.load(0)
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    protocol, pos = pm.load(pos)
    if type(protocol) is not int or protocol != 1001:
        raise CheckpointError(f"{path}: unsupported legacy protocol {_short(protocol)}")
    sys_info, pos = pm.load(pos)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise CheckpointError(f"{path}: saved on a big-endian machine, not supported")
    obj, pos = pm.load(pos)
    keys, pos = pm.load(pos)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError(f"{path}: corrupt storage index")
    if len(set(keys)) != len(keys):
        raise CheckpointError(f"{path}: corrupt storage index (a storage is listed twice)")
    for key in keys:
        st = storages.get(key)
        if st is None:
            raise CheckpointError(f"{path}: storage {_short(key)} is listed but never used")
        if pos + 8 > len(data):
            raise CheckpointError(f"{path}: truncated at storage {key}")
        (numel,) = struct.unpack_from("<q", data, pos)
        pos += 8
        if numel != st.numel:
            raise CheckpointError(f"{path}: storage {key} holds {numel} elements but its tensors "
                                  f"declare {st.numel}")
        if pos + st.nbytes > len(data):
            raise CheckpointError(f"{path}: truncated at storage {key} ({st.nbytes} bytes declared, "
                                  f"{len(data) - pos} left in the file)")
        st.data = memoryview(data)[pos:pos + st.nbytes]
        pos += st.nbytes
    return obj, None


def _load_zip(data: bytes, path: str):
    _zip_entry_count(data, path)
    zf = zipfile.ZipFile(io.BytesIO(data))
    reader = _ZipReader(zf, path, max(MIN_INFLATE_BUDGET, MAX_INFLATION * len(data)))
    pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
        raise CheckpointError(f"{path}: zip file without data.pkl: not a PyTorch checkpoint")
    prefix = pkl[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in zf.namelist():
        order = reader.read(reader.info(f"{prefix}byteorder"))
        if order.strip() != b"little":
            raise CheckpointError(f"{path}: byte order {_short(order[:20])} is not supported (only little-endian)")
    storages: dict[str, _Storage] = {}
    obj, _ = _PickleMachine(reader.read(reader.info(pkl[0])), path, storages, legacy=False).load(0)
    return obj, (reader, prefix)


def _select_state_dict(obj):
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return obj[key]
    return obj


def _check_tensor(path: str, name: str, rec: _TensorRecord) -> tuple[tuple, tuple, int]:
    """Validate a tensor record against its storage's declaration. Returns (size, stride, numel)."""
    where = f"{path}: tensor {_short(name)}"
    st = rec.storage
    offset, size, stride = rec.offset, rec.size, rec.stride
    if type(offset) is not int:
        raise CheckpointError(f"{where}: storage offset is of type {_kind(offset)}, not an integer")
    if not (isinstance(size, tuple) and all(type(s) is int for s in size)):
        raise CheckpointError(f"{where}: size is not a tuple of integers")
    if not (isinstance(stride, tuple) and all(type(s) is int for s in stride)):
        raise CheckpointError(f"{where}: stride is not a tuple of integers")
    if len(size) != len(stride):
        raise CheckpointError(f"{where}: {len(size)} sizes but {len(stride)} strides")
    if len(size) > MAX_DIMS:
        raise CheckpointError(f"{where}: {len(size)} dimensions (at most {MAX_DIMS})")
    if offset < 0:
        raise CheckpointError(f"{where}: negative storage offset {offset}")
    for s in size:
        if s < 0:
            raise CheckpointError(f"{where}: negative size {s}")
    for s in stride:
        if s < 0:
            raise CheckpointError(f"{where}: negative stride {s}")
    numel = math.prod(size)
    if numel == 0:
        if offset > st.numel:
            raise CheckpointError(f"{where}: storage offset {offset} beyond its storage of {st.numel} elements")
        return size, stride, 0
    last = offset + sum((s - 1) * t for s, t in zip(size, stride))
    if last >= st.numel:
        raise CheckpointError(f"{where}: addresses element {last} of a storage of {st.numel} elements "
                              "(view beyond its storage)")
    if numel > st.numel:
        raise CheckpointError(f"{where}: {numel} elements from a storage of {st.numel} (overlapping "
                              "zero-stride views are not supported)")
    return size, stride, numel


def _build_array(st: _Storage, offset: int, size: tuple, stride: tuple, numel: int) -> np.ndarray:
    """A contiguous copy of a validated view (plain indexing: numpy bounds-checks it again)."""
    flat = np.frombuffer(st.data, dtype=st.dtype, count=st.numel)
    if numel == 0:
        return np.empty(size, dtype=st.dtype)
    contiguous, expect = True, 1
    for s, t in zip(reversed(size), reversed(stride)):
        if s != 1 and t != expect:
            contiguous = False
            break
        expect *= s
    if contiguous:
        return flat[offset:offset + numel].reshape(size).copy()
    index = np.full((), offset, dtype=np.int64)
    for s, t in zip(size, stride):
        index = index[..., None] + np.arange(s, dtype=np.int64) * t
    return flat[index]


def _materialise(state: dict, path: str, zip_src) -> dict[str, np.ndarray]:
    records = [(k, v) for k, v in state.items() if isinstance(k, str) and isinstance(v, _TensorRecord)]
    checked = []
    view_bytes, storage_bytes, seen = 0, 0, set()
    for name, rec in records:
        size, stride, numel = _check_tensor(path, name, rec)
        st = rec.storage
        if st.key not in seen:
            seen.add(st.key)
            storage_bytes += st.nbytes
            if zip_src is not None:
                reader, prefix = zip_src
                info = reader.info(f"{prefix}data/{st.key}")
                if info.file_size != st.nbytes:
                    raise CheckpointError(
                        f"{path}: tensor {_short(name)}: storage data/{st.key} holds {info.file_size} bytes "
                        f"but is declared as {st.numel} x {st.dtype} ({st.nbytes} bytes)")
            elif st.data is None:
                raise CheckpointError(f"{path}: tensor {_short(name)}: its storage {st.key} is missing from "
                                      "the file (truncated file?)")
        view_bytes += numel * st.dtype.itemsize
        checked.append((name, rec, size, stride, numel))
    if view_bytes > MAX_VIEW_RATIO * storage_bytes + (1 << 20):
        raise CheckpointError(f"{path}: its tensors hold {view_bytes} bytes, more than {MAX_VIEW_RATIO} x the "
                              f"{storage_bytes} bytes of their storages (repeated views)")
    out = collections.OrderedDict()
    for name, rec, size, stride, numel in checked:
        st = rec.storage
        if st.data is None:  # zip: read on first use, bounded by the archive's budget
            reader, prefix = zip_src
            st.data = reader.read(reader.info(f"{prefix}data/{st.key}"))
        out[name] = _build_array(st, rec.offset, size, stride, numel)
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:200] + "…"


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.pth``/``.tar`` checkpoint into ``{name: numpy array}`` (no torch needed).

    Accepts a bare state dict, or a dict holding one under ``state_dict``/``model``; strips the
    ``module.`` prefix DataParallel adds. Raises :class:`CheckpointError` naming the file, with
    bounded time and memory whatever the file holds (see the module docstring for the limits).
    """
    path = os.fspath(path)
    data = _read_regular_file(path)
    try:
        if data[:4] == b"PK\x03\x04":
            obj, zip_src = _load_zip(data, path)
        elif data[:1] == b"\x80":
            obj, zip_src = _load_legacy(data, path)
        else:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither zip nor legacy pickle)")
        state = _select_state_dict(obj)
        if not isinstance(state, dict) or not state:
            raise CheckpointError(f"{path}: no state dict found in checkpoint")
        arrays = _materialise(state, path, zip_src)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error) as exc:
        raise CheckpointError(f"{path}: corrupt zip archive: {_one_line(exc)}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: corrupt checkpoint: nested too deeply") from None
    except MemoryError:
        raise CheckpointError(f"{path}: corrupt checkpoint: out of memory while reading it") from None
    except (ValueError, TypeError, IndexError, KeyError, struct.error, EOFError, OSError, OverflowError,
            NotImplementedError, RuntimeError, AttributeError, UnicodeError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint: {type(exc).__name__}: {_one_line(exc)}") from None
    out = {}
    for k, v in arrays.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    if not out:
        raise CheckpointError(f"{path}: the state dict holds no tensors")
    return out
