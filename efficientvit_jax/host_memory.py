"""Keep freed host memory in the process, so CPU training steps do not page-fault it back in.

XLA:CPU allocates a step's temporaries (gigabytes at batch 16, 240x320) on every execution, from
its worker threads. glibc serves blocks that large from fresh `mmap`s (worker threads use their
own arenas, whose heaps cannot hold them) and returns them to the kernel when freed, so each step
re-faults and re-zeroes every page: about a million page faults per step here, close to half of
the step time on 2 cores. One arena that never trims and never maps large blocks separately keeps
that memory across steps. PyTorch's CPU allocator (malloc as well) gains the same way.

Call `retain_freed_memory()` first thing in a process, before JAX runs anything or torch starts
threads (a thread that already picked its arena keeps it; importing JAX is fine, its CPU thread
pool starts with the backend). It does nothing off Linux/glibc. `train.py` and `eval.py` call
`retain_freed_memory_on_cpu_hosts()`: on accelerator hosts one arena could slow the input
pipeline's decoding threads, and there the step does not run on host memory anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def retain_freed_memory() -> bool:
  """glibc malloc: one arena, no separate mmaps, never trim. True when all three settings took."""
  if not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # musl and other C libraries without mallopt
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  # -1 is SIZE_MAX once glibc widens it to size_t: never give the top of the heap back.
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))


def jax_runs_on_cpu() -> bool:
  """Whether JAX will pick its CPU backend: JAX_PLATFORMS names cpu first, or, unset, no
  accelerator plugin (CUDA, ROCm, TPU) is installed. Decided without starting a backend."""
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  plugins = ('jax_plugins', 'libtpu', 'jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm7_plugin')
  return not any(importlib.util.find_spec(name) for name in plugins)


def retain_freed_memory_on_cpu_hosts() -> bool:
  """`retain_freed_memory()` when JAX will run on the CPU; True when it was applied."""
  return jax_runs_on_cpu() and retain_freed_memory()
