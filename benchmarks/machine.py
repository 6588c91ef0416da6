"""The machine a benchmark ran on, for its record: the CPU's name and the vector extensions that
decide which kernels run (ratios against the reference differ between CPUs: see RESULTS.md)."""

from __future__ import annotations

import os
import platform

_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name or platform.processor() or "unknown CPU", flags


def cpu_name() -> str:
    return _cpuinfo()[0]


def describe() -> str:
    """E.g. ``2 cores, AMD EPYC (avx2 fma avx512f avx512_vnni avx512_bf16)``."""
    name, flags = _cpuinfo()
    isa = " ".join(f for f in _ISA if f in flags)
    return f"{os.cpu_count()} cores, {name}" + (f" ({isa})" if isa else "")
