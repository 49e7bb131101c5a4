"""Freed CPU memory stays in the process during training: no page faults on every large tensor.

A training iteration allocates and frees the same tensors each time: activations of a few MB per
layer, attention gradients, and the ``(V, d)`` gradients of a tied embedding (113 MB for
SmolLM2-135M). glibc's ``malloc`` serves blocks above its mmap threshold (128 KiB, rising to at
most 32 MiB) with ``mmap`` and returns them with ``munmap``, and trims the top of its heap, so the
next tensor of that size is fresh memory the kernel page-faults in 4 KiB at a time (no huge pages
on our VMs). Measured with ``getrusage`` around the embedded model's PPO update (16 rows of
``benchmarks/update_flops.py``): by default 0.9 million minor faults and 4 s of system time in the
first update, then up to 0.36 million and 1.3 s in each later one; with `keep_freed_memory`, none
once the heap has grown to the peak (from the third or fourth update on).

`keep_freed_memory` asks glibc to serve every block from its heap (``M_MMAP_MAX = 0``) and never
trim it (``M_TRIM_THRESHOLD``), as PyTorch's CUDA caching allocator keeps freed GPU memory: the
process then holds its peak memory until exit (peak RSS itself is unchanged). The agents call it
when `learn` starts on a CPU; ``LM_KEEP_FREED_MEMORY=0`` opts out. Off glibc it does nothing.

Imports only the standard library.
"""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory mapped for reuse (process-wide, idempotent).

    :return: whether it is in effect: ``False`` off Linux/glibc, when ``mallopt`` refuses, or
        when the environment variable ``LM_KEEP_FREED_MEMORY`` is ``0``.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("LM_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. The trim threshold is an int: its largest value (2 GiB − 1)
    # is far above what one free at the heap's top can release during a training step.
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
