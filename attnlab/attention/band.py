"""Sliding-window attention on a small compiled CPU kernel (csrc/band.cpp), with a sink key by identity.

The stock CPU flash kernel never skips masked tiles inside its 512-key tile, so windows on it run as many
small calls over overlapping key blocks (fused.py); that capped Window(512) at seq 8192 near 5x causal SDPA.
band.cpp multiplies each block of query rows against only the keys its window reaches, keeps the block's
scores in cache, and adds key gradients in place.

The kernel is built on first use with the system C++ compiler (`c++`, or $CXX) into a per-user cache
(no build step at install, no link against torch: BLAS comes from the copy torch loaded, as a function
pointer). Without a compiler, or with ATTNLAB_BAND=0, `available()` is False and the fused backend keeps
its block path; both are tested against the reference backend.

Contract of one pass (as kernels.fused_pass): output and row log-sum-exp forward; the backward is handed
the output and a total log-sum-exp, which may include a virtual sink key of value 0 (kernels.py explains
why that is exact), so softmax, softmax1, Sinks and scalable softmax all run through it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from attnlab.attention.kernels import Backward, attend_with_sink

BLOCK = 64  # query rows per block: a block pays for BLOCK - 1 keys beyond its window
SOURCE = Path(__file__).with_name("csrc") / "band.cpp"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno",
         "-fno-trapping-math", "-ffinite-math-only", "-fno-signed-zeros", "-fassociative-math")

_state: dict[str, object] = {}


def cache_dir() -> Path:
    root = os.environ.get("ATTNLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "attnlab")
    return Path(root) / "kernels"


def _cpu_id() -> str:
    """-march=native code is only valid on CPUs with the same features: they are part of the cache key."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


def _build() -> Path:
    """Compile band.cpp once per source, flags and compiler; the .so lands atomically in the cache."""
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (c++ / g++ / $CXX) on PATH")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()
                         + _cpu_id().encode()).hexdigest()[:16]
    target = cache_dir() / f"band-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _blas() -> tuple[int, int, int | None]:
    """Addresses of sgemm_ / dgemm_ (and MKL's per-thread thread count) in the BLAS torch loaded."""
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    handle = ctypes.CDLL(str(lib))
    addr = [ctypes.cast(getattr(handle, name), ctypes.c_void_p).value for name in ("sgemm_", "dgemm_")]
    local = getattr(handle, "MKL_Set_Num_Threads_Local", None)
    return addr[0], addr[1], None if local is None else ctypes.cast(local, ctypes.c_void_p).value


def _load() -> tuple[ctypes.CDLL, tuple[int, int, int | None]] | None:
    if "lib" not in _state:
        try:
            if os.environ.get("ATTNLAB_BAND", "1") == "0":
                raise RuntimeError("disabled by ATTNLAB_BAND=0")
            lib = ctypes.CDLL(str(_build()))
            i64, ptr = ctypes.c_int64, ctypes.c_void_p
            tail = [i64] * 8 + [ctypes.c_double, ctypes.c_int, ptr, ptr]  # dims, scale, threads, BLAS
            for kind, tensors in (("forward", 5), ("backward", 9)):
                for dtype in ("f32", "f64"):
                    getattr(lib, f"band_{kind}_{dtype}").argtypes = [ptr] * tensors + tail
            _state["lib"] = (lib, _blas())
        except (OSError, RuntimeError, AttributeError) as err:
            _state["lib"] = None
            _state["why"] = str(err)
            if os.environ.get("ATTNLAB_BAND", "1") != "0":
                warnings.warn(f"attnlab: the compiled window kernel is unavailable ({str(err)[:200]}); "
                              "windows use the slower block path", stacklevel=3)
    return _state["lib"]  # type: ignore[return-value]


def available() -> bool:
    """True if the compiled kernel can run here (it is built on the first call)."""
    return _load() is not None


def why_unavailable() -> str | None:
    _load()
    return _state.get("why")  # type: ignore[return-value]


def serves(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Shapes, dtypes and devices the kernel takes: CPU float32/float64, one head size, Lq <= Lk."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64)
            and q.shape[-1] == v.shape[-1] and q.shape[2] <= k.shape[2] and available())


def _call(name: str, tensors: list[Tensor], dims: list[int], scale: float) -> None:
    lib, (sgemm, dgemm, local) = _load()  # type: ignore[misc]
    f64 = tensors[0].dtype == torch.float64
    fn = getattr(lib, f"{name}_{'f64' if f64 else 'f32'}")
    fn(*[t.data_ptr() for t in tensors], *dims, scale, torch.get_num_threads(), dgemm if f64 else sgemm,
       local)


def band_pass(q: Tensor, k: Tensor, v: Tensor, window: int, scale: float) -> tuple[Tensor, Tensor, Backward]:
    """One kernel pass with `kernels.fused_pass`'s contract: output (B, H, Lq, D), row log-sum-exp (B, H, Lq)
    and `backward(grad_out, out, lse) -> (dq, dk, dv)`."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    dims = [q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], window, BLOCK]
    out, lse = torch.empty_like(q), q.new_empty(q.shape[:-1])
    _call("band_forward", [q, k, v, out, lse], dims, scale)

    def backward(grad: Tensor, y: Tensor, total: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        _call("band_backward", [grad.contiguous(), q, k, v, y.contiguous(), total.contiguous(), dq, dk, dv],
              dims, scale)
        return dq, dk, dv

    return out, lse, backward


def band_attention(q: Tensor, k: Tensor, v: Tensor, window: int, scale: float,
                   sink: Tensor | float | None = None) -> Tensor:
    """Softmax attention of q (B, H, Lq, D) over keys p - window < j <= p (p = Lk - Lq + i), optionally
    with a virtual key of logit `sink` (per head (H,), or one float) and value 0. Differentiable in q, k, v
    and sink."""
    return attend_with_sink(q, k, v, float("-inf") if sink is None else sink,
                            lambda q, k, v: band_pass(q, k, v, window, scale))


if __name__ == "__main__":  # python -m attnlab.attention.band: build and report
    print("available" if available() else f"unavailable: {why_unavailable()}", file=sys.stderr)
