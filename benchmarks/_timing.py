"""Shared timing helpers for the scripts in benchmarks/ (import with `from _timing import ...`).

API (small on purpose):
- `median_time(fn, repeats=7, warmup=2, sync=None) -> float`: median wall seconds of `fn()` over `repeats`
  calls after `warmup` untimed calls; `sync` (e.g. `torch.cuda.synchronize`) runs before each clock read.
- `peak_memory(fn, device="cpu") -> int`: bytes of memory `fn()` needed above what was in use before it.
  On CUDA: `torch.cuda.max_memory_allocated` after a reset. On CPU: the process's resident-set high-water
  mark (VmHWM, reset through /proc/self/clear_refs on Linux) minus the RSS before the call; where that
  is not available, an RSS sampling thread (1 ms). Call `pin_malloc()` once first so glibc returns large
  blocks to the OS on free; otherwise a block freed earlier may be reused and hide part of the peak.
  After `reuse_malloc()` (timings without page-fault noise), each measurement pins and trims around itself.
- `print_table(rows, columns)`: a fixed-width table of dicts to stdout.
- `write_json(path, obj)`: atomic JSON write (attnlab.io); put `attnlab.io.provenance(...)` inside.
- `base_parser(description)`: argparse with `--quick`, `--json PATH` and `--repeats N`.

Medians and same-run ratios are what to read: absolute times move with whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["base_parser", "median_time", "peak_memory", "pin_malloc", "print_table", "reuse_malloc",
           "write_json"]


def median_time(fn: Callable[[], object], repeats: int = 7, warmup: int = 2,
                sync: Callable[[], None] | None = None) -> float:
    """Median seconds of `fn()` over `repeats` timed calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_MALLOC_MODE = "default"


def reuse_malloc() -> bool:
    """Let glibc keep freed blocks for reuse: mmap threshold at its 32 MiB maximum, no trimming (what
    jemalloc / tcmalloc do, which PyTorch's CPU performance guide recommends). Timings then measure compute,
    not the page faults of re-mapping every large buffer, which on this VM cost ~6 us per 4 KiB page.
    `peak_memory` switches to pinned mode around each measurement, so memory figures stay exact."""
    global _MALLOC_MODE
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(-3, 32 * 2**20)) and bool(libc.mallopt(-1, 2**30))  # M_MMAP/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False
    _MALLOC_MODE = "reuse" if ok else _MALLOC_MODE
    return ok


def pin_malloc() -> bool:
    """Fix glibc's mmap threshold at 64 KiB so large buffers are unmapped on free (CPU memory figures then
    measure the call, not the allocator's history). Returns False where this is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 64 * 1024))  # M_MMAP_THRESHOLD; fixing it disables the dynamic one
    except (OSError, AttributeError):
        return False


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> int:
    """Bytes `fn()` needed at its peak above the memory in use before it (see the module docstring)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - before)
    if _MALLOC_MODE == "reuse":
        try:
            pin_malloc()
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back the blocks kept for reuse
            return _rss_peak(fn)
        finally:
            reuse_malloc()
    return _rss_peak(fn)


def _rss_peak(fn: Callable[[], object]) -> int:
    before = _rss_bytes()
    if _reset_hwm():
        fn()
        return max(0, _hwm_bytes() - before)
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(0, max(peak[0], _rss_bytes()) - before)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print `rows` (dicts) as a fixed-width table of `columns`; floats get 3 significant digits."""
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3g}"
        return "" if x is None else str(x)

    table = [list(columns)] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for n, row in enumerate(table):
        print("  ".join(c.rjust(w) if n else c.ljust(w) for c, w in zip(row, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as JSON atomically (attnlab.io: a temporary file in the same folder, then rename)."""
    from attnlab.io import atomic_write_json

    atomic_write_json(path, obj)


def base_parser(description: str) -> argparse.ArgumentParser:
    """argparse with the flags every benchmark shares: --quick, --json PATH, --repeats N."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="short run: fewer sizes and repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON (atomically)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")
    return parser
