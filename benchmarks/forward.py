"""Inference speed: images/s of the eval-mode jitted forward at several batch sizes, and compile time.

  python benchmarks/forward.py [--batch-sizes 1,16,64] [--steps N] [--dtype float32|bfloat16]
      [--size HxW] [--threads T] [--impl auto|native|cpu] [--torch] [--backbone NAME] [--json F]

Ours: `nnx.split` once, a jitted pure function of (params, batch statistics, image) returning depth
and logits (what `predict.py` runs). `--torch` times the PyTorch twin in eval mode under
`torch.inference_mode` (fp16 autocast on CUDA unless `--dtype float32`), interleaved with ours.
Prints a table; `--json F` writes one entry per batch size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step

from efficientvit_jax import images


class JaxForward:
  """Our eval-mode forward, compiled for one batch shape."""

  def __init__(self, batch_size: int, size: tuple[int, int], dtype: str, backbone: str = 'efficientvit_b1'):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from efficientvit_jax import model as model_lib

    self._jax = jax
    model = model_lib.create(backbone=backbone, dtype=jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32)
    graphdef, self.state = nnx.split(model)

    def forward(state, image):
      return nnx.merge(graphdef, state)(image, train=False)

    image = np.random.default_rng(0).uniform(size=(batch_size, *size, 3)).astype(np.float32)
    self.image = jax.device_put(image)
    start = time.perf_counter()
    self.compiled = jax.jit(forward).lower(self.state, self.image).compile()
    self.compile_s = time.perf_counter() - start
    self.device = jax.devices()[0]

  def run(self) -> float:
    start = time.perf_counter()
    self._jax.block_until_ready(self.compiled(self.state, self.image))
    return time.perf_counter() - start


class TorchForward:
  """The twin's eval-mode forward (inference mode; fp16 autocast on CUDA unless float32)."""

  def __init__(self, batch_size: int, size: tuple[int, int], dtype: str, backbone: str = 'efficientvit_b1'):
    import torch

    from efficientvit_jax import torch_model

    self._torch = torch
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    self.cuda = self.device.type == 'cuda'
    self.amp = self.cuda and dtype != 'float32'
    self.model = torch_model.DepthSegNet(backbone=backbone).to(self.device).eval()
    self.image = torch.rand(batch_size, 3, *size, device=self.device)
    if self.cuda:
      self.model = self.model.to(memory_format=torch.channels_last)
      self.image = self.image.contiguous(memory_format=torch.channels_last)

  def run(self) -> float:
    torch = self._torch
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
      self.model(self.image)
    if self.cuda:
      torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_one(batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
  ours = JaxForward(batch_size, args.size, args.dtype, args.backbone)
  runners: dict[str, Callable[[], float]] = {'ours': ours.run}
  if args.torch:
    runners['torch'] = TorchForward(batch_size, args.size, args.dtype, args.backbone).run
  times, _ = train_step.interleaved(runners, args.warmup, args.steps)
  step_s = statistics.median(times['ours'])
  row: dict[str, Any] = {
      'backbone': args.backbone,
      'batch_size': batch_size,
      'images_per_s': batch_size / step_s,
      'step_s': step_s,
      'ms_per_batch': 1e3 * step_s,
      'compile_s': ours.compile_s,
      'dtype': args.dtype,
      'device': f'{ours.device.platform}:{ours.device.device_kind}',
      'size': list(args.size),
      'threads': args.threads,
      'ops_impl': args.impl,
  }
  if args.torch:
    torch_s = statistics.median(times['torch'])
    row.update(torch_images_per_s=batch_size / torch_s, speedup=torch_s / step_s)
  return row


TABLE = [('batch', 'batch_size', 'd'), ('ms/batch', 'ms_per_batch', '.1f'), ('img/s', 'images_per_s', '.1f'),
         ('compile s', 'compile_s', '.1f'), ('torch img/s', 'torch_images_per_s', '.1f'),
         ('ours/torch', 'speedup', '.2f')]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  from efficientvit_jax import model as model_lib

  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch-sizes', default='1,16,64')
  parser.add_argument('--steps', type=int, default=20, help='timed forwards per batch size')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--size', default=(240, 320), type=images.parse_size, help='input HxW')
  parser.add_argument('--threads', type=int, default=0, help='CPU cores (0: all schedulable)')
  parser.add_argument('--impl', default='auto', choices=('auto', 'native', 'cpu'))
  parser.add_argument('--torch', action='store_true', help='also time the PyTorch twin, interleaved')
  parser.add_argument('--backbone', default=model_lib.DEFAULT_BACKBONE, choices=model_lib.BACKBONES)
  parser.add_argument('--release-memory', action='store_true',
                      help="keep glibc's default of returning freed memory (efficientvit_jax.host_memory)")
  parser.add_argument('--json', default='')
  args = parser.parse_args(argv)
  batches = train_step.batch_sizes(parser, '--batch-sizes', args.batch_sizes)
  args.threads = train_step.setup_process(args.threads, args.torch, args.release_memory)
  with train_step.formulation(args.impl):
    rows = [bench_one(b, args) for b in batches]
  print(f'device {rows[0]["device"]}, {args.backbone}, {args.threads} threads, {args.size[0]}x{args.size[1]}, '
        f'{args.dtype}, ops {args.impl}, eval-mode forward, median of {args.steps}')
  train_step.print_table(rows, TABLE)
  if args.json:
    train_step.write_json(args.json, rows)
  return rows


if __name__ == '__main__':
  main()
