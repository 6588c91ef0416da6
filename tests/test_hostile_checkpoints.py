"""Crafted (hostile) checkpoints: each one ends as a one-line CheckpointError naming the file,
within seconds and bounded memory; nothing outside the file's bytes is ever read.

No torch here: the pickles are written opcode by opcode, the archives with ``zipfile``.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from retinaface_tf.convert import torch_weights as tw
from retinaface_tf.convert.torch_weights import CheckpointError, load_torch_checkpoint

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
NAME = "body.stage1.0.0.weight"


# ------------------------------------------------------------------ pickle opcodes by hand
def p_int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def p_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def p_tuple(parts) -> bytes:
    return b"(" + b"".join(parts) + b"t"


def p_value(v) -> bytes:
    if isinstance(v, bytes):
        return v  # raw opcodes
    if isinstance(v, int):
        return p_int(v)
    if isinstance(v, str):
        return p_str(v)
    if isinstance(v, tuple):
        return p_tuple([p_value(x) for x in v])
    raise TypeError(v)


def p_tensor(key="0", offset=0, size=(8, 3, 3, 3), stride=None, numel=None, *,
             storage_type="FloatStorage", legacy=False) -> bytes:
    """What torch.save writes for one tensor: _rebuild_tensor_v2(persistent storage, offset, size,
    stride, requires_grad, OrderedDict())."""
    if stride is None:
        stride = tuple(int(np.prod(size[i + 1:])) for i in range(len(size)))
    if numel is None:
        numel = int(np.prod(size))
    pid = [p_str("storage"), b"ctorch\n" + storage_type.encode() + b"\n", p_str(key), p_str("cpu"),
           p_int(numel)] + ([b"N"] if legacy else [])
    args = [p_tuple(pid) + b"Q", p_value(offset), p_value(size), p_value(stride), b"\x89",
            b"ccollections\nOrderedDict\n)R"]
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + p_tuple(args) + b"R"


def p_state(entries: dict) -> bytes:
    """An OrderedDict state dict pickle; values are raw opcodes (e.g. from p_tensor)."""
    body = b"".join(p_str(k) + v for k, v in entries.items())
    return b"\x80\x02ccollections\nOrderedDict\n)R(" + body + b"u."


def floats(n: int) -> bytes:
    return np.arange(n, dtype=np.float32).tobytes()


def write_zip(path, pkl: bytes, storages: dict, *, compress=zipfile.ZIP_STORED, byteorder="little"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        if byteorder is not None:
            zf.writestr("archive/byteorder", byteorder)
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw, compress_type=compress)
    return path


def write_legacy(path, pkl: bytes, storages: dict, *, keys=None):
    """storages: key -> bytes (header numel = len / 4) or (header numel, bytes)."""
    out = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
           pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2), pkl,
           pickle.dumps(list(storages) if keys is None else keys, protocol=2)]
    for raw in storages.values():
        numel, raw = raw if isinstance(raw, tuple) else (len(raw) // 4, raw)
        out += [struct.pack("<q", numel), raw]
    Path(path).write_bytes(b"".join(out))
    return path


def write_both(tmp_path, entries_for, storages):
    """The same content as a zip and as a legacy checkpoint; ``entries_for(legacy)`` -> state."""
    z = write_zip(tmp_path / "x.pth", p_state(entries_for(False)), storages)
    lg = write_legacy(tmp_path / "x.tar", p_state(entries_for(True)), storages)
    return [z, lg]


def refused(path, pattern: str, *, within: float = 5.0) -> str:
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match=pattern) as err:
        load_torch_checkpoint(path)
    elapsed = time.perf_counter() - t
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    assert elapsed < within, f"{elapsed:.1f} s for {path}"
    return msg


# ------------------------------------------------------------------ legit views still load
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_legit_views_load(tmp_path, fmt):
    storages = {"0": floats(12), "1": floats(3)}

    def entries(legacy):
        return {
            "plain": p_tensor("0", 0, (3, 4), legacy=legacy),
            "offset": p_tensor("0", 4, (2, 4), numel=12, legacy=legacy),
            "transposed": p_tensor("0", 0, (4, 3), (1, 4), legacy=legacy),
            "tied": p_tensor("0", 0, (3, 4), legacy=legacy),       # a second view of the same storage
            "scalar": p_tensor("1", 2, (), (), 3, legacy=legacy),
            "empty": p_tensor("1", 3, (0, 5), (5, 1), 3, legacy=legacy),
            "broadcast": p_tensor("1", 0, (3,), (0,), 3, legacy=legacy),  # zero stride, within storage
            "module.prefixed": p_tensor("1", 0, (3,), numel=3, legacy=legacy),
        }

    path = write_both(tmp_path, entries, storages)[0 if fmt == "zip" else 1]
    sd = load_torch_checkpoint(path)
    a = np.arange(12, dtype=np.float32)
    np.testing.assert_array_equal(sd["plain"], a.reshape(3, 4))
    np.testing.assert_array_equal(sd["offset"], a[4:].reshape(2, 4))
    np.testing.assert_array_equal(sd["transposed"], a.reshape(3, 4).T)
    np.testing.assert_array_equal(sd["scalar"], np.float32(2))
    assert sd["empty"].shape == (0, 5)
    np.testing.assert_array_equal(sd["broadcast"], [0, 0, 0])
    np.testing.assert_array_equal(sd["prefixed"], [0, 1, 2])
    assert all(v.flags.writeable and v.flags.c_contiguous for v in sd.values())
    assert sd["plain"] is not sd["tied"]


# ------------------------------------------------------------------ tensor records vs storage
TENSOR_CASES = {
    "negative stride": (dict(stride=(27, 9, 3, -1)), rf"tensor '{NAME}': negative stride -1$"),
    "negative offset": (dict(offset=-1000), rf"tensor '{NAME}': negative storage offset -1000$"),
    "offset beyond storage": (dict(offset=100),
                              rf"tensor '{NAME}': addresses element 315 of a storage of 216 elements"),
    "size beyond storage": (dict(size=(9, 3, 3, 3), numel=216),
                            rf"tensor '{NAME}': addresses element 242 of a storage of 216 elements"),
    "stride beyond storage": (dict(stride=(27, 9, 3, 100), numel=216), r"addresses element 413 of a storage of 216"),
    "negative size": (dict(size=(-8, 3, 3, 3), stride=(27, 9, 3, 1), numel=216), r"negative size -8$"),
    "zero-stride huge tensor": (dict(size=(16384, 16384), stride=(0, 0), numel=1),
                                rf"tensor '{NAME}': 268435456 elements from a storage of 1 \(overlapping"),
    "sizes vs strides": (dict(size=(8, 27), stride=(27,), numel=216), r"2 sizes but 1 strides$"),
    "offset not an int": (dict(offset="0"), r"storage offset is of type str, not an integer$"),
    "huge offset": (dict(offset=2**200), r"addresses element \d{60,} of a storage of 216"),
    "too many dims": (dict(size=(1,) * 40, stride=(1,) * 40, numel=1), r"40 dimensions \(at most 32\)$"),
}


@pytest.mark.parametrize("case", list(TENSOR_CASES))
def test_tensor_record_checked_against_storage(tmp_path, case):
    kwargs, pattern = TENSOR_CASES[case]
    kwargs = dict(kwargs)
    numel = kwargs.pop("numel", 216)
    for path in write_both(tmp_path, lambda legacy: {NAME: p_tensor("0", numel=numel, legacy=legacy, **kwargs)},
                           {"0": floats(numel)}):
        refused(path, pattern)


@pytest.mark.parametrize("storage_type", ["ComplexFloatStorage", "BFloat16Storage"])
def test_unknown_dtype(tmp_path, storage_type):
    for path in write_both(tmp_path, lambda legacy: {NAME: p_tensor(storage_type=storage_type, legacy=legacy)},
                           {"0": floats(216)}):
        refused(path, rf"unsupported tensor type torch\.{storage_type}$")


def test_storage_bytes_must_match_the_declaration(tmp_path):
    # zip: the member is shorter / longer than numel x itemsize
    z = write_zip(tmp_path / "short.pth", p_state({NAME: p_tensor(size=(3,))}), {"0": floats(2)})
    refused(z, rf"tensor '{NAME}': storage data/0 holds 8 bytes but is declared as 3 x float32 \(12 bytes\)$")
    z = write_zip(tmp_path / "long.pth", p_state({NAME: p_tensor(size=(3,))}), {"0": floats(4)})
    refused(z, r"storage data/0 holds 16 bytes but is declared as 3 x float32")
    z = write_zip(tmp_path / "huge.pth", p_state({NAME: p_tensor(size=(3,), numel=2**40)}), {"0": floats(3)})
    refused(z, r"holds 12 bytes but is declared as 1099511627776 x float32")
    # legacy: the file ends inside the storage, or the header disagrees with the pickle
    pkl = p_state({NAME: p_tensor(size=(3,), legacy=True)})
    refused(write_legacy(tmp_path / "cut.tar", pkl, {"0": (3, floats(2))}),
            r"truncated at storage 0 \(12 bytes declared, 8 left in the file\)$")
    refused(write_legacy(tmp_path / "hdr.tar", pkl, {"0": (2, floats(3))}),
            r"storage 0 holds 2 elements but its tensors declare 3$")
    big = p_state({NAME: p_tensor(size=(3,), numel=2**40, legacy=True)})
    refused(write_legacy(tmp_path / "big.tar", big, {"0": (2**40, floats(3))}),
            r"truncated at storage 0 \(4398046511104 bytes declared, 12 left")
    refused(write_legacy(tmp_path / "nokeys.tar", pkl, {}), rf"tensor '{NAME}': its storage 0 is missing")
    z = write_zip(tmp_path / "nomember.pth", p_state({NAME: p_tensor(size=(3,))}), {})
    refused(z, r"zip member archive/data/0 is missing$")


def test_storage_declared_twice_differently(tmp_path):
    entries = {"a": p_tensor("0", size=(3,)), "b": p_tensor("0", size=(2,), numel=2)}
    refused(write_zip(tmp_path / "x.pth", p_state(entries), {"0": floats(3)}),
            r"storage 0 is declared twice, as 3 x float32 and 2 x float32")


def test_repeated_views_of_one_storage_are_capped(tmp_path):
    n = 1 << 18  # a 1 MiB storage
    entries = {f"w{i}": p_tensor("0", size=(n,)) for i in range(10)}
    refused(write_zip(tmp_path / "x.pth", p_state(entries), {"0": floats(n)}),
            r"its tensors hold 10485760 bytes, more than 4 x the 1048576 bytes of their storages")


# ------------------------------------------------------------------ pickle bombs
def laughs(levels=30, fanout=10) -> bytes:
    """Nested list references: level i is a list of ``fanout`` references to level i-1, so the
    last one stands for fanout**levels leaves (10**30) in a few hundred bytes."""
    out = [b"]q\x000"]
    for i in range(1, levels + 1):
        out.append(b"(" + (b"h" + bytes([i - 1])) * fanout + b"lq" + bytes([i]) + b"0")
    return b"".join(out) + b"h" + bytes([levels])


def test_billion_laughs(tmp_path):
    pkl = p_state({"w": laughs()})
    assert len(pkl) < 800
    for path in (write_zip(tmp_path / "x.pth", pkl, {}), write_legacy(tmp_path / "x.tar", pkl, {})):
        refused(path, r"the state dict holds no tensors$", within=2)
    # the same structure where a tensor's size should be
    as_size = p_state({NAME: p_tensor(size=(1,), stride=(1,), numel=1).replace(b"(K\x01t(K\x01t", laughs() + b"\x85(K\x01t", 1)})
    refused(write_zip(tmp_path / "size.pth", as_size, {"0": floats(1)}),
            rf"tensor '{NAME}': size is not a tuple of integers$", within=2)


@pytest.mark.parametrize("shape, nest", [
    ("tuples", b")" + b"\x85" * 100_000),
    ("lists", b"(" * 100_000 + b"l" * 100_000),
    ("dicts", b"}q\x00" + b"".join(b"}(K\x01h\x00uq\x000" for _ in range(100_000))),
])
def test_deep_nesting(tmp_path, shape, nest):
    path = write_zip(tmp_path / "x.pth", p_state({"w": nest}), {})
    refused(path, r"the pickle nests containers more than 1000 levels deep$", within=3)


def test_self_reference(tmp_path):
    refused(write_zip(tmp_path / "a.pth", p_state({"w": b"]q\x00h\x00a"}), {}),
            r"a container is placed inside itself$")
    refused(write_zip(tmp_path / "b.pth", p_state({"w": b"]q\x00]q\x01h\x00aa"}), {}),
            r"a container is changed after being placed in another one")


def test_pickle_counters(tmp_path, monkeypatch):
    monkeypatch.setattr(tw, "MAX_PICKLE_OPS", 5000)
    refused(write_zip(tmp_path / "ops.pth", p_state({"w": b"(" + b"N0" * 3000 + b"l"}), {}),
            r"the pickle runs more than 5000 operations$")
    monkeypatch.setattr(tw, "MAX_PICKLE_OBJECTS", 1000)
    refused(write_zip(tmp_path / "obj.pth", p_state({"w": b"(" + b"]" * 1200 + b"l"}), {}),
            r"the pickle builds more than 1000 objects$")
    monkeypatch.setattr(tw, "MAX_MEMO", 1000)
    puts = b"".join(b"Nr" + struct.pack("<I", i) + b"0" for i in range(1200))
    refused(write_zip(tmp_path / "memo.pth", p_state({"w": puts + b"N"}), {}),
            r"the pickle memoizes more than 1000 objects$")


@pytest.mark.parametrize("ops, pattern", [
    (b"\x8b" + struct.pack("<i", 1_000_000) + b"\xff" * 1_000_000, r"an integer of 1000000 bytes \(at most 32\)$"),
    (b"X" + struct.pack("<I", 2**32 - 1) + b"abc", r"corrupt pickle: unexpected end of data$"),
    (b"\x8e" + struct.pack("<Q", 2**63), r"corrupt pickle: unexpected end of data$"),
    (b"h\x07", r"memo entry 7 was never stored$"),
    (b"cbuiltins\neval\n", r"refusing to load: the checkpoint asks to import builtins\.eval"),
    (p_str("os") + p_str("system") + b"\x93", r"refusing to load: the checkpoint asks to import os\.system"),
    (b"(ctorch.nn\nModule\no", r"refusing to load: the checkpoint asks to import torch\.nn\.Module"),
    (b"ccollections\nOrderedDict\n)\x81", r"pickle opcode NEWOBJ is not allowed"),
    (b"(i__main__\nX\n", r"pickle opcode INST is not allowed"),
    (b"\xff", r"unknown pickle opcode 0xff$"),
    (b"K\x01)R", r"calling a value of type int, which is not a function$"),
    (b"ctorch\nFloatStorage\n)R", r"calling torch\.FloatStorage$"),
    (b"ctorch._utils\n_rebuild_tensor_v2\n(K\x01K\x02K\x03K\x04tR", r"_rebuild_tensor_v2 called with 4 arguments / no storage"),
    (p_tuple([p_str("storage"), p_str("x"), p_str("0"), p_str("cpu"), p_int(1)]) + b"Q",
     r"a storage without a tensor type$"),
    (p_tuple([p_str("storage"), b"ctorch\nFloatStorage\n", p_str("../../etc"), p_str("cpu"), p_int(1)]) + b"Q",
     r"bad storage key '\.\./\.\./etc'$"),
    (p_tuple([p_str("storage"), b"ctorch\nFloatStorage\n", p_str("0"), p_str("cpu"), p_int(-5)]) + b"Q",
     r"storage 0 declares -5 elements$"),
    (b"(]K\x01d", r"dict key or set item of type list \(only strings and numbers\)$"),
    (b"K\x01K\x02R", r"call arguments are not a tuple$"),
    (b"ctorch._utils\n_rebuild_tensor_v2\n]a", r"appending to a value of type function$"),
    (b"\x80\x02a.", r"stack underflow$"),                  # whole pickles from here on
    (b"\x80\x02(a.", r"unexpected mark$"),
    (b"\x80\x02u.", r"missing mark$"),
    (b"\x80\x02N", r"unexpected end of data \(no STOP\)$"),
    (b"\x80\x02NN.", r"malformed end of pickle$"),
    (b"\x80\x09N.", r"unsupported pickle protocol$"),
    (b"\x80\x02\x95" + struct.pack("<Q", 2**40) + b"N.", r"frame longer than the data$"),
    (b"\x80\x02c" + b"x" * 10_000, r"unterminated or overlong text field$"),
    (b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", r"a string is not valid UTF-8$"),
])
def test_malformed_pickles(tmp_path, ops, pattern):
    pkl = ops if ops.startswith(b"\x80") else p_state({"w": ops})
    refused(write_zip(tmp_path / "x.pth", pkl, {}), pattern)


def test_legacy_preamble(tmp_path):
    cut = tmp_path / "cut.tar"
    cut.write_bytes(pickle.dumps(LEGACY_MAGIC, protocol=2)[:-3])
    refused(cut, r"corrupt pickle: unexpected end of data")
    be = tmp_path / "be.tar"
    be.write_bytes(pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
                   + pickle.dumps({"little_endian": False}, protocol=2))
    refused(be, r"saved on a big-endian machine, not supported$")
    proto = tmp_path / "proto.tar"
    proto.write_bytes(pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps([1] * 5, protocol=2))
    refused(proto, r"unsupported legacy protocol list$")
    dup = write_legacy(tmp_path / "dup.tar", p_state({NAME: p_tensor(size=(3,), legacy=True)}),
                       {"0": floats(3)}, keys=["0", "0"])
    refused(dup, r"corrupt storage index \(a storage is listed twice\)$")
    extra = write_legacy(tmp_path / "extra.tar", p_state({NAME: p_tensor(size=(3,), legacy=True)}),
                         {"0": floats(3), "1": floats(3)})
    refused(extra, r"storage '1' is listed but never used$")


# ------------------------------------------------------------------ archives
def _stream_zeros(zf: zipfile.ZipFile, name: str, nbytes: int):
    with zf.open(name, "w", force_zip64=True) as f:
        chunk = bytes(1 << 20)
        for _ in range(nbytes >> 20):
            f.write(chunk)


def test_zip_bomb_member(hostile_files):
    path = hostile_files["zip-bomb"]  # 256 MiB of zeros deflated to ~250 KB
    assert path.stat().st_size < 1 << 20
    refused(path, r"zip member archive/data/0 would inflate to 268435456 bytes, more than the archive "
                  r"may hold \(8 x its size, at least 64 MiB\)$")


def test_zip_members_inflating_together(tmp_path):
    n = 16 << 20  # six 16 MiB members: each fits, the 4th (with data.pkl) exceeds the 64 MiB budget
    path = tmp_path / "bombs.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", p_state({f"w{i}": p_tensor(str(i), size=(n // 4,)) for i in range(6)}))
        for i in range(6):
            _stream_zeros(zf, f"archive/data/{i}", n)
    refused(path, r"zip member archive/data/3 would inflate to 16777216 bytes, more than the archive may hold")


def _patch_central_directory(path: Path, member: str, **fields):
    """Overwrite fields of ``member``'s central directory record (and its local header)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    cd = data.find(b"PK\x01\x02")
    while cd >= 0:
        name_len = struct.unpack_from("<H", data, cd + 28)[0]
        if data[cd + 46:cd + 46 + name_len] == member.encode():
            break
        cd = data.find(b"PK\x01\x02", cd + 4)
    local = info.header_offset
    if "file_size" in fields:
        struct.pack_into("<I", data, cd + 24, fields["file_size"])
        struct.pack_into("<I", data, local + 22, fields["file_size"])
    if "flag_bits" in fields:
        struct.pack_into("<H", data, cd + 8, fields["flag_bits"])
        struct.pack_into("<H", data, local + 6, fields["flag_bits"])
    path.write_bytes(bytes(data))


def test_zip_member_sizes_and_methods(tmp_path):
    pkl = p_state({NAME: p_tensor(size=(1000,))})
    deflated = write_zip(tmp_path / "ratio.pth", pkl, {"0": bytes(4000)}, compress=zipfile.ZIP_DEFLATED)
    _patch_central_directory(deflated, "archive/data/0", file_size=4_000_000_000)
    refused(deflated, r"zip member archive/data/0 declares 4000000000 bytes from \d+ compressed "
                      r"\(impossible for deflate\)$")
    stored = write_zip(tmp_path / "stored.pth", pkl, {"0": floats(1000)})
    _patch_central_directory(stored, "archive/data/0", file_size=8000)
    refused(stored, r"zip member archive/data/0: stored with 4000 bytes but declares 8000$")
    enc = write_zip(tmp_path / "enc.pth", pkl, {"0": floats(1000)})
    _patch_central_directory(enc, "archive/data/0", flag_bits=1)
    refused(enc, r"zip member archive/data/0 is encrypted$")
    bz = write_zip(tmp_path / "bz.pth", pkl, {"0": floats(1000)}, compress=zipfile.ZIP_BZIP2)
    refused(bz, r"zip member archive/data/0 uses compression method 12 \(torch writes stored members\)$")
    crc = write_zip(tmp_path / "crc.pth", pkl, {"0": floats(1000)})
    data = bytearray(crc.read_bytes())
    data[data.find(floats(1000)) + 100] ^= 0x40
    crc.write_bytes(bytes(data))
    refused(crc, r"corrupt zip archive: Bad CRC-32 for file 'archive/data/0'$")
    big_endian = write_zip(tmp_path / "be.pth", pkl, {"0": floats(1000)}, byteorder="big")
    refused(big_endian, r"byte order b'big' is not supported \(only little-endian\)$")


def test_zip_entry_count(tmp_path, monkeypatch):
    monkeypatch.setattr(tw, "MAX_ZIP_ENTRIES", 3)
    path = write_zip(tmp_path / "x.pth", p_state({NAME: p_tensor(size=(3,))}), {"0": floats(3), "1": b"", "2": b""})
    refused(path, r"zip archive lists 5 entries \(at most 3\)$")
    path.write_bytes(path.read_bytes()[:-22])  # no end of central directory
    refused(path, r"corrupt zip archive \(no end of central directory\)$")


# ------------------------------------------------------------------ what is read at all
def test_only_regular_files_are_read(tmp_path):
    refused(tmp_path, r"is a folder, not a regular checkpoint file$")
    if os.path.exists("/dev/zero"):
        with pytest.raises(CheckpointError, match=r"^/dev/zero: is a character device, not a regular checkpoint file$"):
            load_torch_checkpoint("/dev/zero")
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)  # nobody writes: opening it for reading must not wait for a writer
    refused(fifo, r"is a FIFO, not a regular checkpoint file$", within=2)
    refused(tmp_path / "absent.pth", r"cannot read: No such file or directory$")


def test_file_size_limit(tmp_path):
    sparse = tmp_path / "sparse.pth"
    with open(sparse, "wb") as f:
        f.truncate(5 << 30)  # a sparse 5 GiB file: refused by its size, never read
    refused(sparse, r"is 5368709120 bytes, more than the 4294967296 \(4 GiB\) a checkpoint may have$")


# ------------------------------------------------------------------ bounded memory, and the CLI
_LIMITED_DRIVER = r"""
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
from retinaface_tf.convert.torch_weights import CheckpointError, load_torch_checkpoint
for path in sys.argv[2:]:
    t = time.perf_counter()
    try:
        load_torch_checkpoint(path)
        result = "OK"
    except CheckpointError as exc:
        result = "ERR " + str(exc)
    print(f"{time.perf_counter() - t:.2f} {result}", flush=True)
"""


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    files = {
        "zero-stride": write_legacy(d / "zs.tar", p_state({NAME: p_tensor(
            size=(16384, 16384), stride=(0, 0), numel=1, legacy=True)}), {"0": floats(1)}),
        "laughs": write_zip(d / "laughs.pth", p_state({"w": laughs(levels=40)}), {}),
        "deep": write_zip(d / "deep.pth", p_state({"w": b"(" * 200_000 + b"l" * 200_000}), {}),
        "ops": write_zip(d / "ops.pth", p_state({"w": b"(" + b"N" * 2_100_000 + b"l"}), {}),
        "neg-stride": write_legacy(d / "ns.tar", p_state({NAME: p_tensor(
            stride=(27, 9, 3, -1), legacy=True)}), {"0": floats(216)}),
        "neg-offset": write_legacy(d / "no.tar", p_state({NAME: p_tensor(
            offset=-(1 << 40), legacy=True)}), {"0": floats(216)}),
    }
    bomb = d / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", p_state({NAME: p_tensor(size=(1 << 26,))}))
        _stream_zeros(zf, "archive/data/0", 1 << 28)
    files["zip-bomb"] = bomb
    return files


def test_bounded_memory_and_time_in_a_limited_process(hostile_files):
    """All the bombs in one process limited to 2 GiB of address space: each is refused in seconds."""
    files = hostile_files
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _LIMITED_DRIVER, str(2 << 30), *map(str, files.values())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(files), proc.stdout
    expected = {
        "zero-stride": "268435456 elements from a storage of 1",
        "laughs": "the state dict holds no tensors",
        "deep": "nests containers more than 1000 levels deep",
        "ops": "the pickle runs more than 2000000 operations",
        "neg-stride": "negative stride -1",
        "neg-offset": "negative storage offset -1099511627776",
        "zip-bomb": "would inflate to 268435456 bytes",
    }
    for (case, path), line in zip(files.items(), lines):
        seconds, result = line.split(" ", 1)
        assert result.startswith(f"ERR {path}: ") and expected[case] in result, (case, line)
        assert float(seconds) < 15, (case, line)
    print(f"\n{len(files)} hostile checkpoints refused under RLIMIT_AS=2 GiB in {time.perf_counter() - t:.1f} s")


def test_cli_one_line_exit_2_output_untouched(tmp_path, hostile_files):
    """`retinaface-tf convert` in a subprocess: exit 2, one line naming the file, no traceback,
    the --output folder neither created nor changed."""
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    existing = tmp_path / "existing"  # a folder convert may replace: must stay as it is
    existing.mkdir()
    (existing / "model.weights.h5").write_bytes(b"old weights")
    (existing / "config.yaml").write_text("old: config\n")
    cases = {"neg-stride": (hostile_files["neg-stride"], existing), "fifo": (fifo, tmp_path / "out-fifo")}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = {}
    for case, (path, out) in cases.items():
        cmd = [sys.executable, "-m", "retinaface_tf.cli", "convert", str(path), "--output", str(out)]
        procs[case] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for case, proc in procs.items():
        try:
            _, stderr = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{case}: convert hangs")
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (case, proc.returncode, stderr[-2000:])
        assert len(lines) == 1 and "Traceback" not in stderr, (case, stderr[-2000:])
        assert lines[0].startswith(f"retinaface-tf convert: error: {cases[case][0]}: "), (case, lines[0])
    assert sorted(p.name for p in existing.iterdir()) == ["config.yaml", "model.weights.h5"]
    assert (existing / "model.weights.h5").read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "pipe.pth"]  # no out-*, no temp folders


def test_cli_in_process(hostile_files, tmp_path, capsys):
    from retinaface_tf.cli import main

    for case in ("laughs", "neg-offset", "zero-stride", "deep", "zip-bomb"):
        out = tmp_path / f"out-{case}"
        assert main(["convert", str(hostile_files[case]), "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"retinaface-tf convert: error: {hostile_files[case]}: ") and err.count("\n") == 1
        assert not out.exists()
