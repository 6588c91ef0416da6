"""The machine a benchmark ran on, for its record: the CPU's name and the vector extensions that
decide which kernels run (ratios against the reference differ between CPUs: see RESULTS.md)."""

from __future__ import annotations

import os
import platform

_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str, set[str]]:
    """The first CPU's name (with its family and model numbers, which tell generations apart when
    the name does not, e.g. a bare ``AMD EPYC``) and its flags."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block only
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f", family {fields['cpu family']} model {fields['model']}"
    return name, set(fields.get("flags", "").split())


def cpu_name() -> str:
    return _cpuinfo()[0]


def describe() -> str:
    """E.g. ``2 cores, AMD EPYC, family 25 model 17 (avx2 fma avx512f avx512_vnni avx512_bf16)``."""
    name, flags = _cpuinfo()
    isa = " ".join(f for f in _ISA if f in flags)
    return f"{os.cpu_count()} cores, {name}" + (f" ({isa})" if isa else "")
