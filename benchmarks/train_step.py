"""Training-step speed: our jitted step against the PyTorch twin's, in one run, interleaved.

  python benchmarks/train_step.py [--batch-size B] [--steps N] [--dtype float32|bfloat16] [--torch]
      [--torch-compile] [--torch-amp float16|bfloat16] [--json F] [--sweep 1,4,16,64] [--size HxW]
      [--threads T] [--impl auto|native|cpu] [--profile DIR] [--compare-augment] [--backbone NAME]

Ours: `training.make_train_step` (the device-side augmentation of V8, flip and colour jitter on both
domains; forward, the V5 loss, backward, the real three-group AdamW with clipping) under
`training.jit_train_step`, on a synthetic batch as the host pipeline ships it (uint8 images).
`--compare-augment` adds our step without the augmentation (image conversion only) as a contestant,
to measure what the augmentation costs inside the step.
Theirs (`--torch`): `torch_model.DepthSegNet` with the same loss terms (written below in torch),
AdamW in the same three groups and global-norm clipping; on CUDA with fp16 autocast + GradScaler
(the reference's recipe; `--torch-amp bfloat16`: bf16 autocast, no scaler; `--dtype float32` turns
autocast off), `--torch-compile` adds a `torch.compile`d model as a third contestant (if it fails,
the row records `torch_compile_error` and the others still run). Steps alternate (ours, theirs, ours, theirs, ...)
after `--warmup` untimed steps each, so load from other processes hits both alike; every step is
synchronised (`block_until_ready`, `cuda.synchronize`) and the median is reported.

`--threads T` pins the process to T cores before JAX and torch start (XLA:CPU sizes its thread
pool from the schedulable cores) and sets `torch.set_num_threads(T)`: both use the same cores.
MFU counts the FLOPs of one image's forward at the run's size as XLA's cost analysis of the compiled
eval-mode model gives them (`forward_flop`; 2.19 GFLOP for B1 at 240x320), 3x that per training image
(the backward's two products per forward one), against the peak of the device's compute dtype
(table below; None where unknown, e.g. CPUs).

`--json F` writes `{"images_per_s", "step_s", "compile_s", "batch_size", "dtype", "device",
"torch_images_per_s", "speedup"}` (the last two with `--torch`) plus extras (`mfu`, memory,
`torch_compile_images_per_s`); with `--sweep` the top level is the largest batch's entry and
`"sweep"` lists every batch size's. The file is rewritten (atomically) after every batch size, so
a sweep stopped part-way leaves the finished ones.

Memory: `device_peak_mb` is JAX's peak since the process started (so a sweep should ascend);
`torch_device_peak_mb` / `torch_compile_device_peak_mb` are `torch.cuda.max_memory_allocated`
over one extra step of that twin after the timed ones (both twins' weights included, ~0.2 GB).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRAIN_FACTOR = 3.0  # forward + backward ~ 3x forward

# Dense peak TFLOP/s per chip: (bfloat16/float16 tensor cores, float32). float32 is the non-tensor
# rate (XLA and torch may use TF32 for matmuls and convolutions on Ampere and later, so fp32 MFU
# can exceed what these suggest). Matched as substrings of `device_kind`, first match wins.
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ('H200', 989.0, 67.0),
    ('H100 PCIe', 756.0, 51.0),
    ('H100', 989.0, 67.0),
    ('GH200', 989.0, 67.0),
    ('B200', 2250.0, 80.0),
    ('A100', 312.0, 19.5),
    ('L40S', 362.0, 91.6),
    ('L4', 121.0, 30.3),
    ('A10G', 70.0, 31.2),
    ('A10', 125.0, 31.2),
    ('RTX 4090', 165.0, 82.6),
    ('RTX 3090', 71.0, 35.6),
    ('V100', 125.0, 15.7),
    ('T4', 65.0, 8.1),
    ('TPU v4', 275.0, 275.0),  # TPUs run f32 matmuls as bf16 passes by default
    ('TPU v5 lite', 197.0, 197.0),
    ('TPU v5e', 197.0, 197.0),
    ('TPU v5p', 459.0, 459.0),
    ('TPU v5', 459.0, 459.0),
    ('TPU v6', 918.0, 918.0),
]


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The device's dense peak for `dtype`, or None when unknown (CPUs)."""
  for name, half, single in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return half if dtype == 'bfloat16' else single
  return None


@functools.cache
def forward_flop(backbone: str, size: tuple[int, int]) -> float:
  """FLOPs of one image's eval-mode forward at `size`: XLA's cost analysis of the model compiled for
  the CPU with the native ops (the formulations of `ops.py` compute the same products in other
  ways), whatever the device. Counts every op, elementwise ones included, so it is a few percent
  above FLOP counters that count only convolutions and matrix products (torch's: 2.10 GFLOP for B1)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from efficientvit_jax import model as model_lib
  from efficientvit_jax import ops

  graphdef, state = nnx.split(nnx.eval_shape(lambda: model_lib.create(backbone=backbone)))
  image = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
  with ops.formulation('native'), jax.default_device(jax.devices('cpu')[0]):
    compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False)).lower(state, image).compile()
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])


def train_flop_per_image(backbone: str, size: tuple[int, int]) -> float:
  return TRAIN_FACTOR * forward_flop(backbone, tuple(size))


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_batch(batch_size: int, size: tuple[int, int], seed: int = 0) -> dict[str, Any]:
  """A training batch as the host pipeline ships it (docs/data.md#data-element), numpy."""
  import numpy as np

  from efficientvit_jax import classes

  rng = np.random.default_rng(seed)
  h, w = size
  depth = rng.uniform(0.5, 8.0, (batch_size, h, w)).astype(np.float32)
  valid = rng.uniform(size=(batch_size, h, w)) < 0.8
  seg = rng.integers(0, classes.NUM_CLASSES, (batch_size, h, w)).astype(np.int32)
  seg[rng.uniform(size=seg.shape) < 0.1] = classes.IGNORE_LABEL
  return {
      'image': rng.integers(0, 256, (batch_size, h, w, 3), dtype=np.uint8),
      'depth': np.where(valid, depth, 0.0).astype(np.float32),
      'depth_valid': valid,
      'seg': seg,
      'domain': (np.arange(batch_size) % 2).astype(np.int32),  # NYU and LILocBench, as V8
  }


# ---------------------------------------------------------------------------------------------
# Ours.

class JaxStep:
  """Our jitted train step on one fixed batch; `run()` does one synchronised step."""

  def __init__(self, batch_size: int, size: tuple[int, int], dtype: str, augment: bool = True,
               backbone: str = 'efficientvit_b1'):
    import jax
    import jax.numpy as jnp

    from efficientvit_jax import checkpointing
    from efficientvit_jax import model as model_lib
    from efficientvit_jax import optimizer as optimizer_lib
    from efficientvit_jax import parallel
    from efficientvit_jax import training
    from efficientvit_jax.configs import default

    self._jax = jax
    config = default.get_config()
    config.batch_size = batch_size
    config.freeze_encoder_epochs = 0
    mesh = parallel.make_mesh()
    model = model_lib.create(backbone=backbone, dtype=jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32)
    tx = optimizer_lib.make_optimizer(config, steps_per_epoch=1000, total_steps=100_000)
    graphdef, self.state = training.create_state(model, checkpointing.default_kendall(), tx, mesh)
    self.batch = parallel.global_batch(random_batch(batch_size, size), mesh)
    step = training.make_train_step(graphdef, tx, config.loss, seed=0, color_jitter=(True, True, False),
                                    augment=augment)
    jitted = training.jit_train_step(step, mesh, self.state)
    start = time.perf_counter()
    self.compiled = jitted.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.device = jax.devices()[0]

  def run(self) -> float:
    start = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch)
    self._jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - start

  def memory(self) -> dict[str, float | None]:
    """Device peak (GPU/TPU memory stats) and XLA's own estimate of the step's temporaries."""
    out: dict[str, float | None] = {'device_peak_mb': None, 'xla_temp_mb': None}
    try:
      stats = self.device.memory_stats() or {}
      if 'peak_bytes_in_use' in stats:
        out['device_peak_mb'] = stats['peak_bytes_in_use'] / 2**20
    except Exception:
      pass  # CPU clients have no memory stats
    try:
      out['xla_temp_mb'] = self.compiled.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:
      pass
    return out


# ---------------------------------------------------------------------------------------------
# Theirs: the PyTorch twin with the same loss terms and optimiser.

def torch_loss(depth, seg_logits, batch, log_sigma_d, log_sigma_s, lambda_edge: float = 0.1):
  """The V5 objective in torch (docs/training.md), float32; depth [N, 1, H, W], logits [N, C, H, W]."""
  import torch
  import torch.nn.functional as F

  from efficientvit_jax import classes

  depth, seg_logits = depth[:, 0].float(), seg_logits.float()
  target, valid = batch['depth'], batch['depth_valid'] & (batch['depth'] > 0)
  e = torch.where(valid, (depth - target).abs(), torch.zeros_like(depth))
  c = 0.2 * e.max().detach()
  berhu = torch.where(e <= c, e, (e * e + c * c) / (2 * c + 1e-8))
  l_depth = (berhu * valid).sum() / valid.sum().clamp(min=1)
  l_seg = F.cross_entropy(seg_logits, batch['seg'], ignore_index=classes.IGNORE_LABEL)
  image = batch['image_nchw']
  i_dx = (image[..., :-1] - image[..., 1:]).abs().mean(1)
  i_dy = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1)
  l_edge = ((depth[..., :-1] - depth[..., 1:]).abs() * torch.exp(-i_dx)).mean() + \
      ((depth[..., :-1, :] - depth[..., 1:, :]).abs() * torch.exp(-i_dy)).mean()
  s_d, s_s = log_sigma_d.clamp(-2, 2), log_sigma_s.clamp(-2, 2)
  total = 0.5 * torch.exp(-s_d) * l_depth + 0.5 * s_d + torch.exp(-s_s) * l_seg + 0.5 * s_s
  return (total + lambda_edge * l_edge).sum()


class TorchStep:
  """The twin's train step (AdamW in three groups, clipping 1.0; fp16 AMP on CUDA unless float32)."""

  def __init__(self, batch_size: int, size: tuple[int, int], dtype: str, compile_model: bool = False,
               amp_dtype: str = 'float16', backbone: str = 'efficientvit_b1'):
    import numpy as np
    import torch

    from efficientvit_jax import torch_model

    self._torch = torch
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    self.cuda = self.device.type == 'cuda'
    self.amp = self.cuda and dtype != 'float32'
    self.amp_dtype = getattr(torch, amp_dtype)
    torch.manual_seed(0)
    model = torch_model.DepthSegNet(backbone=backbone).to(self.device).train()
    if self.cuda:
      model = model.to(memory_format=torch.channels_last)
      torch.backends.cudnn.benchmark = True
    self.log_sigma_d = torch.zeros(1, device=self.device, requires_grad=True)
    self.log_sigma_s = torch.zeros(1, device=self.device, requires_grad=True)
    encoder = [p for n, p in model.named_parameters() if n.startswith(('encoder.', 'neck.'))]
    decoder = [p for n, p in model.named_parameters() if not n.startswith(('encoder.', 'neck.'))]
    self.params = encoder + decoder + [self.log_sigma_d, self.log_sigma_s]
    self.optimizer = torch.optim.AdamW([
        {'params': encoder, 'lr': 3e-5},
        {'params': decoder, 'lr': 3e-4},
        {'params': [self.log_sigma_d, self.log_sigma_s], 'lr': 1e-4},
    ], betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
    # bf16 has float32's exponent range: no loss scaling.
    self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp and amp_dtype == 'float16')
    self.model = model
    start = time.perf_counter()
    self.forward = torch.compile(model) if compile_model else model
    batch = random_batch(batch_size, size)
    image = batch['image'].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    image = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
    if self.cuda:
      image = image.contiguous(memory_format=torch.channels_last)
    self.batch = {
        'image_nchw': image,
        'depth': torch.from_numpy(batch['depth']).to(self.device),
        'depth_valid': torch.from_numpy(batch['depth_valid']).to(self.device),
        'seg': torch.from_numpy(batch['seg'].astype(np.int64)).to(self.device),
    }
    self.run()  # the first step compiles under --torch-compile
    self.compile_s = time.perf_counter() - start

  def run(self) -> float:
    torch = self._torch
    start = time.perf_counter()
    self.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
      depth, seg_logits = self.forward(self.batch['image_nchw'])
    loss = torch_loss(depth, seg_logits, self.batch, self.log_sigma_d, self.log_sigma_s)
    self.scaler.scale(loss).backward()
    self.scaler.unscale_(self.optimizer)
    torch.nn.utils.clip_grad_norm_(self.params, 1.0)
    self.scaler.step(self.optimizer)
    self.scaler.update()
    if self.cuda:
      torch.cuda.synchronize()
    return time.perf_counter() - start

  def peak_mb(self) -> float | None:
    """CUDA memory peak over one more step (everything allocated in the process counts)."""
    if not self.cuda:
      return None
    self._torch.cuda.reset_peak_memory_stats()
    self.run()
    return self._torch.cuda.max_memory_allocated() / 2**20


# ---------------------------------------------------------------------------------------------
# Measurement.

def _cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def interleaved(runners: dict[str, Callable[[], float]], warmup: int,
                steps: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
  """`warmup` untimed then `steps` timed calls of each runner, alternating runners every step.

  Returns wall seconds and process CPU seconds (user + system, all threads) per call; on a
  shared machine CPU time moves less with other processes' load than wall time does.
  """
  for _ in range(warmup):
    for run in runners.values():
      run()
  wall: dict[str, list[float]] = {name: [] for name in runners}
  cpu: dict[str, list[float]] = {name: [] for name in runners}
  for _ in range(steps):
    for name, run in runners.items():
      start = _cpu_s()
      wall[name].append(run())
      cpu[name].append(_cpu_s() - start)
  return wall, cpu


def profile_ops(step: JaxStep, steps: int, trace_dir: str, top: int = 15) -> dict[str, Any]:
  """Traces `steps` of our step with jax.profiler and sums the XLA op events per op kind.

  Kind = the HLO name without its number (`dot.118` -> `dot`; `ynn_fusion` = YNNPACK-fused ops,
  `add_slice_fusion` = our shifted-slice depthwise convolutions). Returns the per-step busy time of
  the compute threads (summed over threads), the step's wall time and the `top` kinds. XLA:CPU
  only (on GPUs and TPUs open the trace in xprof/TensorBoard instead): elsewhere the table is empty.
  """
  import collections
  import glob
  import re

  import jax

  jax.profiler.start_trace(trace_dir)
  wall = sum(step.run() for _ in range(steps)) / steps
  jax.profiler.stop_trace()
  traces = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True), key=os.path.getmtime)
  kinds: collections.Counter[str] = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(traces[-1]).planes:
    # XLA:CPU's compute threads; the Python and client threads only wait for them.
    for line in (l for l in plane.lines if plane.name == '/host:CPU' and l.name.startswith('tf_XLAEigen')):
      for event in line.events:
        if not event.name.startswith(('ThunkExecutor', 'Slinky', 'end:')):
          kinds[re.sub(r'\.\d+$', '', event.name)] += event.duration_ns / 1e9 / steps
  busy = sum(kinds.values())
  return {'trace': traces[-1], 'step_s': wall, 'busy_s': busy,
          'kinds': [{'kind': k, 's_per_step': v, 'share': v / busy} for k, v in kinds.most_common(top)]}


def print_profile(prof: dict[str, Any], threads: int) -> None:
  print(f'profile ({prof["trace"]}): op time {prof["busy_s"]:.2f} s per step summed over threads, '
        f'step {prof["step_s"]:.2f} s x {threads} threads = {prof["step_s"] * threads:.2f} thread-s')
  print_table(prof['kinds'], [('op kind', 'kind', 's'), ('s/step', 's_per_step', '.3f'), ('share', 'share', '.1%')])


def _other_steps(batch_size: int, args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
  """The steps timed beside ours, by runner name ('ours_without_augment', 'torch', 'torch_compile'), as
  the flags ask; and torch.compile's error line when it failed (the others are timed anyway)."""
  steps: dict[str, Any] = {}
  compile_error = None
  if args.compare_augment:
    steps['ours_without_augment'] = JaxStep(batch_size, args.size, args.dtype, augment=False, backbone=args.backbone)
  if args.torch:
    steps['torch'] = TorchStep(batch_size, args.size, args.dtype, amp_dtype=args.torch_amp, backbone=args.backbone)
  if args.torch_compile:
    try:
      steps['torch_compile'] = TorchStep(batch_size, args.size, args.dtype, compile_model=True,
                                         amp_dtype=args.torch_amp, backbone=args.backbone)
    except Exception as e:
      # Inductor needs a C++ compiler and (on GPUs) Triton; report, and time the others.
      compile_error = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
      print(f'batch {batch_size}: torch.compile failed: {compile_error}', file=sys.stderr, flush=True)
  return steps, compile_error


def _comparison_fields(others: dict[str, Any], times: dict[str, list[float]], cpu: dict[str, list[float]],
                       step_s: float, batch_size: int, args: argparse.Namespace,
                       mfu: Callable[[float], float | None]) -> dict[str, Any]:
  """The row's fields of the steps timed beside ours (`_other_steps`); step_s: our median step."""
  row: dict[str, Any] = {}
  if 'ours_without_augment' in others:
    plain_s = statistics.median(times['ours_without_augment'])
    row.update(step_s_without_augment=plain_s, augment_overhead=step_s / plain_s - 1,
               cpu_s_per_step_without_augment=statistics.median(cpu['ours_without_augment']))
  if 'torch' in others:
    theirs = others['torch']
    torch_s = statistics.median(times['torch'])
    row.update(torch_images_per_s=batch_size / torch_s, speedup=torch_s / step_s,
               torch_step_s=torch_s, torch_device_peak_mb=theirs.peak_mb(),
               torch_cpu_s_per_step=statistics.median(cpu['torch']),
               torch_amp=args.torch_amp if theirs.amp else None, torch_mfu=mfu(batch_size / torch_s),
               torch_first_step_s=theirs.compile_s)
  if 'torch_compile' in others:
    compiled_s = statistics.median(times['torch_compile'])
    row.update(torch_compile_images_per_s=batch_size / compiled_s,
               speedup_vs_compile=compiled_s / step_s, torch_compile_s=others['torch_compile'].compile_s,
               torch_compile_mfu=mfu(batch_size / compiled_s),
               torch_compile_device_peak_mb=others['torch_compile'].peak_mb())
  return row


def bench_one(batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
  """One batch size: ours (and theirs), interleaved; the `--json` fields of the module docstring."""
  size = args.size
  ours = JaxStep(batch_size, size, args.dtype, backbone=args.backbone)
  rss_after_ours = peak_rss_mb()
  others, compile_error = _other_steps(batch_size, args)
  runners: dict[str, Callable[[], float]] = {'ours': ours.run, **{k: v.run for k, v in others.items()}}
  times, cpu = interleaved(runners, args.warmup, args.steps)
  step_s = statistics.median(times['ours'])
  device = f'{ours.device.platform}:{ours.device.device_kind}'
  peak = peak_tflops(ours.device.device_kind, args.dtype)
  mfu = lambda ips: ips * train_flop_per_image(args.backbone, size) / (peak * 1e12) if peak else None
  row: dict[str, Any] = {
      'backbone': args.backbone,
      'forward_gflop': forward_flop(args.backbone, tuple(size)) / 1e9,
      'images_per_s': batch_size / step_s,
      'step_s': step_s,
      'compile_s': ours.compile_s,
      'batch_size': batch_size,
      'dtype': args.dtype,
      'device': device,
      'size': list(size),
      'threads': args.threads,
      'ops_impl': args.impl,
      'retain_freed_memory': not args.release_memory,
      'steps': args.steps,
      'step_s_min': min(times['ours']),
      'cpu_s_per_step': statistics.median(cpu['ours']),
      'mfu': mfu(batch_size / step_s),
      'host_peak_rss_mb': rss_after_ours,
      **ours.memory(),
  }
  row.update(_comparison_fields(others, times, cpu, step_s, batch_size, args, mfu))
  if compile_error is not None:
    row['torch_compile_error'] = compile_error
  if args.profile:
    row['profile'] = profile_ops(ours, 3, os.path.join(args.profile, f'batch_{batch_size}'))
  return row


TABLE = [('batch', 'batch_size', 'd'), ('step s', 'step_s', '.4f'), ('img/s', 'images_per_s', '.2f'),
         ('step s, no aug', 'step_s_without_augment', '.4f'), ('aug cost', 'augment_overhead', '+.1%'),
         ('compile s', 'compile_s', '.1f'), ('CPU s/step', 'cpu_s_per_step', '.2f'),
         ('CPU s/step, no aug', 'cpu_s_per_step_without_augment', '.2f'),
         ('torch CPU s/step', 'torch_cpu_s_per_step', '.2f'), ('MFU', 'mfu', '.1%'),
         ('torch img/s', 'torch_images_per_s', '.2f'), ('torch MFU', 'torch_mfu', '.1%'),
         ('ours/torch', 'speedup', '.2f'), ('compiled img/s', 'torch_compile_images_per_s', '.2f'),
         ('compiled MFU', 'torch_compile_mfu', '.1%'), ('ours/compiled', 'speedup_vs_compile', '.2f'),
         ('XLA temp MB', 'xla_temp_mb', '.0f'), ('dev peak MB', 'device_peak_mb', '.0f'),
         ('torch peak MB', 'torch_device_peak_mb', '.0f'), ('compiled peak MB', 'torch_compile_device_peak_mb', '.0f')]


def print_table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]] = TABLE) -> None:
  """A markdown table of `rows`: one column per (title, key, format spec) that some row has."""
  cols = [c for c in cols if any(r.get(c[1]) is not None for r in rows)]
  print('| ' + ' | '.join(c[0] for c in cols) + ' |')
  print('|' + '|'.join('---' for _ in cols) + '|')
  for r in rows:
    print('| ' + ' | '.join('-' if r.get(key) is None else format(r[key], spec) for _, key, spec in cols) + ' |')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  from efficientvit_jax import images
  from efficientvit_jax import model as model_lib

  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch-size', type=int, default=16)
  parser.add_argument('--steps', type=int, default=20, help='timed steps (each contestant)')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps after compilation')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='our compute dtype; torch: autocast (--torch-amp) on CUDA unless float32')
  parser.add_argument('--torch', action='store_true', help='also time the PyTorch twin, interleaved')
  parser.add_argument('--torch-compile', action='store_true', help='also time a torch.compile twin')
  parser.add_argument('--compare-augment', action='store_true',
                      help='also time our step without the device-side augmentation')
  parser.add_argument('--torch-amp', default='float16', choices=('float16', 'bfloat16'),
                      help="the twin's autocast dtype on CUDA (float16: with a GradScaler, the reference's)")
  parser.add_argument('--json', default='', help='write the results here')
  parser.add_argument('--sweep', default='', help='comma-separated batch sizes (a table)')
  parser.add_argument('--size', default=(240, 320), type=images.parse_size, help='input HxW')
  parser.add_argument('--threads', type=int, default=0, help='CPU cores for both (0: all schedulable)')
  parser.add_argument('--release-memory', action='store_true',
                      help="keep glibc's default of returning freed memory (efficientvit_jax.host_memory)")
  parser.add_argument('--profile', default='', metavar='DIR',
                      help='also trace 3 of our steps into DIR and print the op time per XLA op kind')
  parser.add_argument('--impl', default='auto', choices=('auto', 'native', 'cpu'),
                      help='ops formulations (efficientvit_jax.ops.formulation); auto: by backend')
  parser.add_argument('--backbone', default=model_lib.DEFAULT_BACKBONE, choices=model_lib.BACKBONES)
  args = parser.parse_args(argv)
  args.batches = batch_sizes(parser, '--sweep', args.sweep) if args.sweep else [args.batch_size]
  return args


def batch_sizes(parser: argparse.ArgumentParser, flag: str, text: str, minimum: int = 1) -> list[int]:
  """'1,16,64' -> [1, 16, 64]; anything else (or a value < `minimum`) is a usage error naming `flag`."""
  try:
    sizes = [int(b) for b in text.split(',')]
  except ValueError:
    sizes = []
  if not sizes or min(sizes) < minimum:
    parser.error(f'bad {flag} {text!r}')
  return sizes


def setup_process(threads: int, with_torch: bool, release_memory: bool = False) -> int:
  """Process-wide settings shared by both contestants; call before JAX or torch start threads.

  Keeps freed memory (`efficientvit_jax.host_memory`, unless `release_memory`), pins the process
  to `threads` cores (0: all schedulable) so that XLA:CPU sizes its pool to them, gives torch the
  same count. Returns the thread count.
  """
  if not release_memory:
    from efficientvit_jax import host_memory

    host_memory.retain_freed_memory()
  cores = sorted(os.sched_getaffinity(0))
  if threads > len(cores):
    raise SystemExit(f'--threads {threads}: only {len(cores)} cores are schedulable')
  if threads:
    os.sched_setaffinity(0, cores[:threads])
  threads = threads or len(cores)
  if with_torch:
    import torch

    torch.set_num_threads(threads)
  return threads


def formulation(impl: str) -> Any:
  """The `--impl` flag (auto | native | cpu) as `ops.formulation`'s context: the ops formulations
  of the models traced inside it."""
  from efficientvit_jax import ops

  return ops.formulation(None if impl == 'auto' else impl)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """The JSON: the largest batch's entry, plus `sweep` (every entry) when there are several."""
  result = dict(max(rows, key=lambda r: r['batch_size']))
  if len(rows) > 1:
    result['sweep'] = rows
  return result


def write_json(path: str, result: Any) -> None:
  """Writes `path` whole or not at all (a run killed mid-write leaves the previous version)."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(result, f, indent=2)
  os.replace(tmp, path)


def release_device_memory(with_torch: bool) -> None:
  """Returns the previous batch size's cached blocks, so the frameworks' caches don't add up."""
  if with_torch:
    import torch

    if torch.cuda.is_available():
      torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  with_torch = args.torch or args.torch_compile
  args.threads = setup_process(args.threads, with_torch, args.release_memory)
  rows = []
  for batch_size in args.batches:
    with formulation(args.impl):
      rows.append(bench_one(batch_size, args))
    release_device_memory(with_torch)
    if args.json:
      write_json(args.json, summary(rows))
    if len(args.batches) > 1:
      print(f'batch {batch_size}: {rows[-1]["images_per_s"]:.2f} img/s', file=sys.stderr, flush=True)
  print(f'device {rows[0]["device"]}, {args.backbone}, {args.threads} threads, {args.size[0]}x{args.size[1]}, '
        f'{args.dtype}, ops {args.impl}, median of {args.steps} interleaved steps')
  print_table(rows)
  for row in rows:
    if 'profile' in row:
      print(f'\nbatch {row["batch_size"]}', end=' ')
      print_profile(row['profile'], args.threads)
  return summary(rows)


if __name__ == '__main__':
  main()
