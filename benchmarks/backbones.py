"""What each backbone costs: parameters, GFLOP per forward, forward and training-step images/s
against the PyTorch twin, onnxruntime latency at batch 1.

  python benchmarks/backbones.py [--backbones efficientvit_b0,...] [--size HxW] [--forward-batch B]
      [--train-batch B] [--steps N] [--warmup N] [--threads T] [--dtype float32|bfloat16]
      [--no-train] [--no-onnx] [--release-memory] [--json F]

Per backbone (default: all of `efficientvit_jax.model.BACKBONES`), at `--size` (default 240x320):
- parameters of our model (and the twin's, which must agree);
- GFLOP of one image's eval-mode forward: XLA's cost analysis of the compiled model
  (`train_step.forward_flop`, the count the MFU figures use);
- eval-mode forward images/s at `--forward-batch`, ours (`forward.JaxForward`) against the twin
  (`forward.TorchForward`), interleaved;
- training-step images/s at `--train-batch`, ours (`train_step.JaxStep`: augmentation, forward,
  loss, backward, AdamW) against the twin's same step (`train_step.TorchStep`), interleaved, with
  MFU where the device's peak is known;
- onnxruntime latency at batch 1: the exported fp32 ONNX file (`export.onnx_model`) of the
  freshly initialised model, CPU execution provider with `--threads` threads, median of `--steps`.
Both contestants run in one process on the same cores (`train_step.setup_process`); denormal
floats are flushed to zero in torch as XLA does (a fresh model's decaying activations would
otherwise slow eager PyTorch on x86 by up to 2x); with `--dtype bfloat16` the twin runs under bf16
autocast on CUDA. Prints one table; `--json F` writes `{"rows": [...]}`, after each backbone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import forward
import train_step

TABLE = [('backbone', 'backbone', 's'), ('params M', 'params_m', '.2f'), ('GFLOP', 'forward_gflop', '.2f'),
         ('fwd img/s', 'forward_images_per_s', '.1f'), ('torch fwd img/s', 'torch_forward_images_per_s', '.1f'),
         ('fwd ours/torch', 'forward_speedup', '.2f'), ('train img/s', 'train_images_per_s', '.2f'),
         ('torch train img/s', 'torch_train_images_per_s', '.2f'), ('train ours/torch', 'train_speedup', '.2f'),
         ('MFU', 'mfu', '.1%'), ('train compile s', 'train_compile_s', '.0f'),
         ('ONNX ms (batch 1)', 'onnx_ms', '.1f')]


def parameter_counts(backbone: str) -> tuple[int, int]:
  """(ours, the twin's) parameter counts."""
  import jax
  from flax import nnx

  from efficientvit_jax import model as model_lib
  from efficientvit_jax import torch_model

  abstract = nnx.eval_shape(lambda: model_lib.create(backbone=backbone))
  ours = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  return ours, sum(p.numel() for p in torch_model.DepthSegNet(backbone=backbone).parameters())


def onnx_latency_ms(backbone: str, size: tuple[int, int], threads: int, warmup: int, steps: int) -> float:
  """Median onnxruntime call at batch 1 on the fp32 export of a freshly initialised model."""
  import numpy as np
  import onnxruntime as ort

  from efficientvit_jax import checkpointing
  from efficientvit_jax import export
  from efficientvit_jax import model as model_lib

  params, batch_stats = checkpointing.model_trees(model_lib.create(backbone=backbone))
  ckpt = checkpointing.Checkpoint(params=params, batch_stats=batch_stats, kendall=checkpointing.default_kendall(),
                                  meta={'backbone': backbone})
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  options.add_session_config_entry('session.intra_op.allow_spinning', '0')  # as benchmarks/latency.py
  session = ort.InferenceSession(export.onnx_model(ckpt, size).SerializeToString(), options,
                                 providers=['CPUExecutionProvider'])
  frame = np.random.default_rng(0).integers(0, 256, (1, *size, 3), np.uint8)
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    session.run(None, {export.INPUT_NAME: frame})
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def bench_backbone(backbone: str, args: argparse.Namespace) -> dict[str, Any]:
  """One row of the table (see the module docstring)."""
  ours, twin = parameter_counts(backbone)
  if ours != twin:
    raise AssertionError(f'{backbone}: {ours} parameters here, {twin} in the twin')
  row: dict[str, Any] = {'backbone': backbone, 'params': ours, 'params_m': ours / 1e6,
                         'forward_gflop': train_step.forward_flop(backbone, tuple(args.size)) / 1e9,
                         'size': list(args.size), 'dtype': args.dtype, 'threads': args.threads, 'steps': args.steps}
  fwd = forward.JaxForward(args.forward_batch, args.size, args.dtype, backbone)
  theirs = forward.TorchForward(args.forward_batch, args.size, args.dtype, backbone)
  times, _ = train_step.interleaved({'ours': fwd.run, 'torch': theirs.run}, args.warmup, args.steps)
  ours_s, torch_s = statistics.median(times['ours']), statistics.median(times['torch'])
  row.update(forward_batch=args.forward_batch, forward_images_per_s=args.forward_batch / ours_s,
             torch_forward_images_per_s=args.forward_batch / torch_s, forward_speedup=torch_s / ours_s,
             forward_compile_s=fwd.compile_s, device=f'{fwd.device.platform}:{fwd.device.device_kind}')
  del fwd, theirs
  if not args.no_train:
    step = train_step.JaxStep(args.train_batch, args.size, args.dtype, backbone=backbone)
    theirs = train_step.TorchStep(args.train_batch, args.size, args.dtype, backbone=backbone,
                                  amp_dtype='bfloat16' if args.dtype == 'bfloat16' else 'float16')
    times, _ = train_step.interleaved({'ours': step.run, 'torch': theirs.run}, args.warmup, args.steps)
    ours_s, torch_s = statistics.median(times['ours']), statistics.median(times['torch'])
    peak = train_step.peak_tflops(step.device.device_kind, args.dtype)
    flop = train_step.train_flop_per_image(backbone, tuple(args.size))
    row.update(train_batch=args.train_batch, train_images_per_s=args.train_batch / ours_s,
               torch_train_images_per_s=args.train_batch / torch_s, train_speedup=torch_s / ours_s,
               train_compile_s=step.compile_s,
               mfu=args.train_batch / ours_s * flop / (peak * 1e12) if peak else None)
    del step, theirs
  if not args.no_onnx:
    row['onnx_ms'] = onnx_latency_ms(backbone, tuple(args.size), args.threads, args.warmup, args.steps)
  return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  from efficientvit_jax import images
  from efficientvit_jax import model as model_lib

  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--backbones', default=','.join(model_lib.BACKBONES), help='comma-separated')
  parser.add_argument('--size', default=(240, 320), type=images.parse_size, help='input HxW')
  parser.add_argument('--forward-batch', type=int, default=8)
  parser.add_argument('--train-batch', type=int, default=8)
  parser.add_argument('--steps', type=int, default=10, help='timed calls of each contestant')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--threads', type=int, default=0, help='CPU cores for every contestant (0: all schedulable)')
  parser.add_argument('--impl', default='auto', choices=('auto', 'native', 'cpu'))
  parser.add_argument('--no-train', action='store_true', help='skip the training steps')
  parser.add_argument('--no-onnx', action='store_true', help='skip the onnxruntime latency')
  parser.add_argument('--release-memory', action='store_true',
                      help="keep glibc's default of returning freed memory (efficientvit_jax.host_memory)")
  parser.add_argument('--json', default='')
  args = parser.parse_args(argv)
  backbones = [b for b in args.backbones.split(',') if b]
  unknown = [b for b in backbones if b not in model_lib.BACKBONES]
  if unknown or not backbones:
    parser.error(f'--backbones: unknown {unknown[0] if unknown else "(none given)"}; choose from '
                 f'{", ".join(model_lib.BACKBONES)}')
  for flag in ('forward_batch', 'train_batch', 'steps'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag.replace("_", "-")} must be >= 1')
  args.threads = train_step.setup_process(args.threads, True, args.release_memory)
  import torch

  torch.set_flush_denormal(True)
  rows = []
  for backbone in backbones:
    with train_step.formulation(args.impl):
      rows.append(bench_backbone(backbone, args))
    print(f'{backbone}: done', file=sys.stderr, flush=True)
    if args.json:
      train_step.write_json(args.json, {'rows': rows})
  print(f'device {rows[0]["device"]}, {args.threads} threads, {args.size[0]}x{args.size[1]}, {args.dtype}, '
        f'forward batch {args.forward_batch}, training batch {args.train_batch}, median of {args.steps} '
        'interleaved calls')
  train_step.print_table(rows, TABLE)
  return rows


if __name__ == '__main__':
  main()
