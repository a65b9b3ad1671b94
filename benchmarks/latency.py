"""Deployment latency: JAX predict, onnxruntime on the exported ONNX (fp32, fp16) and the PyTorch twin.

  python benchmarks/latency.py [--checkpoint SRC (default: tests/data/student_random.pt)] [--batch-sizes 1,8]
      [--size HxW] [--steps N] [--warmup N] [--threads T] [--no-fp16] [--release-memory] [--json F]

The model (its backbone) and the default input size come from the checkpoint. All contestants
take the same uint8 [N, H, W, 3] frames and return depth, logits and labels:
- `jax`: `predict.ImagePredictor` (the jitted eval-mode forward, CPU formulations on the CPU, the
  /255 and the argmax on the host), i.e. what `predict.load(...)` gives a robot node;
- `onnxruntime fp32` / `fp16`: `efficientvit_jax.export.onnx_model` with a dynamic batch (and its
  float16 conversion), CPU execution provider, all graph optimisations;
- `torch`: the same wrapped twin that the ONNX file is exported from, eager, `inference_mode`.
Every runtime gets `--threads` threads (default: all schedulable cores; the process is pinned to
them). Calls alternate between runtimes after untimed warm-up calls, so load from elsewhere hits
all alike; median and 90th percentile of `--steps` calls. Prints a table; `--json F` writes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step

from efficientvit_jax import images
from efficientvit_jax import predict

# The reference code's random weights, with realistic BatchNorm statistics. Not a freshly
# initialised model: its activations decay into denormal floats, which slow eager PyTorch on x86
# (batch 1: 101 ms, 56 ms with torch.set_flush_denormal(True); XLA flushes them to zero).
FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests', 'data',
                       'student_random.pt')


def _timed(fn: Callable[[], Any]) -> Callable[[], float]:
  def run() -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
  return run


def runners(loaded, size: tuple[int, int], batch_sizes: list[int], threads: int,
            fp16: bool) -> dict[int, dict[str, Callable[[], float]]]:
  """Per batch size, one timed callable per runtime; `loaded`: a `convert.LoadedModel`."""
  import onnxruntime as ort
  import torch

  from efficientvit_jax import export

  model, ckpt = loaded.model, loaded.ckpt
  onnx_fp32 = export.onnx_model(ckpt, size, dynamic_batch=True)
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  # onnxruntime's workers spin-wait after each call by default, taking the cores from the runtime
  # that runs next in the interleaving; off, as a robot process shares its cores too.
  options.add_session_config_entry('session.intra_op.allow_spinning', '0')
  sessions = {'onnxruntime fp32': ort.InferenceSession(onnx_fp32.SerializeToString(), options,
                                                       providers=['CPUExecutionProvider'])}
  if fp16:
    sessions['onnxruntime fp16'] = ort.InferenceSession(export.float16_model(onnx_fp32).SerializeToString(),
                                                        options, providers=['CPUExecutionProvider'])
  twin = export.torch_deploy_module(ckpt)
  out: dict[int, dict[str, Callable[[], float]]] = {}
  rng = np.random.default_rng(0)
  for b in batch_sizes:
    frames = rng.integers(0, 256, (b, *size, 3), np.uint8)
    frames_torch = torch.from_numpy(frames)
    jax_predictor = predict.ImagePredictor(model, size, batch_size=b)

    def torch_run(x=frames_torch):
      with torch.inference_mode():
        twin(x)

    row = {'jax': _timed(lambda p=jax_predictor, x=frames: p(x))}
    for name, session in sessions.items():
      row[name] = _timed(lambda s=session, x=frames: s.run(None, {export.INPUT_NAME: x}))
    row['torch'] = _timed(torch_run)
    out[b] = row
  return out


TABLE = [('runtime', 'runtime', 's'), ('batch', 'batch_size', 'd'), ('median ms', 'median_ms', '.1f'),
         ('p90 ms', 'p90_ms', '.1f'), ('ms / image', 'ms_per_image', '.1f'),
         ('vs torch', 'speedup_vs_torch', '.2f')]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', default=str(FIXTURE), help='checkpoint source (default: the test fixture)')
  parser.add_argument('--batch-sizes', default='1,8')
  parser.add_argument('--size', default=None, type=images.parse_size,
                      help="input HxW (default: the checkpoint's training size, else 240x320)")
  parser.add_argument('--steps', type=int, default=30, help='timed calls per runtime and batch size')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--threads', type=int, default=0, help='CPU cores for every runtime (0: all schedulable)')
  parser.add_argument('--no-fp16', action='store_true', help='skip the onnxruntime fp16 model')
  parser.add_argument('--release-memory', action='store_true',
                      help="keep glibc's default of returning freed memory (efficientvit_jax.host_memory)")
  parser.add_argument('--json', default='')
  args = parser.parse_args(argv)
  batches = train_step.batch_sizes(parser, '--batch-sizes', args.batch_sizes)
  threads = train_step.setup_process(args.threads, True, args.release_memory)
  from efficientvit_jax import convert

  loaded = convert.load_model(args.checkpoint)
  size = loaded.input_size(args.size)
  rows = []
  for b, contestants in runners(loaded, size, batches, threads, not args.no_fp16).items():
    times, _ = train_step.interleaved(contestants, args.warmup, args.steps)
    torch_median = float(np.median(times['torch']))
    for name, t in times.items():
      median = float(np.median(t))
      rows.append({'runtime': name, 'batch_size': b, 'median_ms': 1e3 * median,
                   'p90_ms': 1e3 * float(np.percentile(t, 90)), 'ms_per_image': 1e3 * median / b,
                   'speedup_vs_torch': torch_median / median, 'threads': threads,
                   'backbone': loaded.backbone, 'size': list(size), 'steps': args.steps})
  print(f'CPU, {threads} threads (every runtime), {loaded.backbone}, {size[0]}x{size[1]} uint8 frames, '
        f'median and p90 of {args.steps} interleaved calls after {args.warmup} warm-up calls')
  train_step.print_table(rows, TABLE)
  if args.json:
    train_step.write_json(args.json, rows)
  return rows


if __name__ == '__main__':
  main()
