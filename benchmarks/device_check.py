"""One-command accelerator check: parity, training-step sweep against PyTorch, a train.py run, eval.

  python benchmarks/device_check.py --out DIR [--cpu] [--budget-s S] [--parts p1,p2] [--work W]

Runs each part in its own process (its own process group) under its own time limit, so a part that
fails, hangs or runs out of memory is reported and the others still run; the whole run stays
inside `--budget-s` (later parts get what is left, a part with under 10 s left is skipped). Parts:

- `env`: device, versions (jax, jaxlib, its CUDA plugin, flax, torch, CUDA, cuDNN, driver); every
  third-party import of the code the check runs, and each requirement of pyproject.toml (and of the
  wheels `make wheels` carried) that the versions found do not meet (`benchmarks/device_image.py`).
- `data` (in the background while `env` and `parity` run): synthetic data
  (`data_pipelines.synthetic`), then the decode-once copy (`data_pipelines.decoded`).
- `parity`: the reference fixture (`tests/data/student_random.pt` and its outputs) on the device:
  max |error| of depth and logits in eval and train mode, float32 (and float32 at 'highest'
  matmul precision, i.e. no TF32) and bfloat16 compute, against the test suite's tolerances; and
  the other backbones' fixtures (`tests/data/backbones/`: EfficientViT-B0, MobileNetV3-Small, made
  with real timm / torchvision) in eval mode, float32.
- `step_bfloat16`, `step_float32`: `benchmarks/train_step.py` sweeps against the PyTorch twin in
  eager mode (bf16 autocast for bfloat16, plain float32 for float32) and under `torch.compile`:
  images/s, MFU, peak memory, compile time.
- `train`: `train.py` (the preset `quickstart`) on the decode-once synthetic data at the check's
  input size; SIGTERM after `train_s` (train.py then saves and exits); images/s and the
  input-wait fraction from its `metrics.jsonl`, leaving out the first log interval (compilation).
  Without `data_pipelines.decoded` it trains from the files layout and reports the part failed.
- `eval`: steady-state evaluation frames/s (the grain eval pipeline from files, our eval step,
  the metric accumulator; the compiling first pass is timed separately) and the device-only
  forward images/s (`benchmarks/forward.py`) at the same batch.
- `backbones`: `benchmarks/backbones.py` for every backbone: parameters, GFLOP, forward and
  training-step images/s against the twin (bf16), MFU. The CPU mode runs B0 and MobileNetV3-Small,
  forward only, at 64x96.

Writes DIR/device_check.json (everything, with date, device, versions, the command),
DIR/device_check.md (the tables) and DIR/device_check.log (each part's output, last lines).
Bulky files (data, the training run) go to `--work` (default: a temporary folder, removed).
`--cpu`: the reduced mode for this project's CPU machines and the test suite (tiny data, batch 2,
64x96, a few steps, no torch.compile); about two minutes on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / 'benchmarks'
FIXTURE = ROOT / 'tests' / 'data'
PACKAGES = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax', 'optax', 'orbax-checkpoint',
            'grain', 'array-record', 'ml-collections', 'numpy', 'torch', 'triton', 'protobuf')
# The test suite's tolerances (tests/test_model.py): max |error| against the fixture, eval / train
# mode for float32; mean |error| / mean |reference| of depth for bfloat16.
TOLERANCE = {'eval': 1e-4, 'train': 1e-3, 'bf16_rel': 0.05}


@dataclasses.dataclass(frozen=True)
class Mode:
  """What one mode runs: sizes, steps and each part's time limit (seconds)."""
  size: tuple[int, int]
  batches: tuple[int, ...]
  steps: int
  warmup: int
  torch_compile: bool
  synthetic: str
  train_batch: int
  train_steps: int
  train_s: float
  log_every: int
  eval_batch: int
  eval_sets: tuple[str, ...]
  eval_min_s: float
  budget_s: float
  limits: dict[str, float]


MODES = {
    # A device lease: 10 minutes for the parts, so they come in order of importance and the last one
    # gets what is left (`--parts` reruns what a first run could not finish).
    'gpu': Mode(size=(240, 320), batches=(16, 64, 256), steps=10, warmup=3, torch_compile=True,
                synthetic='default', train_batch=16, train_steps=10**7, train_s=120, log_every=50,
                eval_batch=16, eval_sets=('nyu', 'lilocbench'), eval_min_s=5.0, budget_s=600,
                limits={'env': 60, 'data': 150, 'parity': 90, 'step_bfloat16': 200, 'train': 165,
                        'eval': 75, 'backbones': 200, 'step_float32': 200}),
    # Compiling the training step takes XLA:CPU about a minute of CPU time per program, so here
    # the limits only guard against hangs on a loaded machine.
    'cpu': Mode(size=(64, 96), batches=(2,), steps=2, warmup=1, torch_compile=False,
                synthetic='tiny', train_batch=2, train_steps=4, train_s=400, log_every=2,
                eval_batch=2, eval_sets=('nyu',), eval_min_s=0.0, budget_s=1800,
                limits={'env': 120, 'data': 300, 'parity': 300, 'step_bfloat16': 400, 'train': 420,
                        'eval': 300, 'backbones': 600, 'step_float32': 400}),
}
# Run order; `data` starts first in the background and is joined before the first timed part.
PARTS = ('env', 'parity', 'step_bfloat16', 'train', 'eval', 'backbones', 'step_float32')
MIN_PART_S = 10.0
KILL_GRACE_S = 10.0  # SIGTERM, then SIGKILL this much later


def has_decoded() -> bool:
  """Whether this checkout has the decode-once command (not one an editable install elsewhere has)."""
  spec = importlib.util.find_spec('data_pipelines.decoded')
  return spec is not None and spec.origin is not None and pathlib.Path(spec.origin).resolve().is_relative_to(ROOT)


def mode_of(args: argparse.Namespace) -> Mode:
  return MODES['cpu' if args.cpu else 'gpu']


def size_arg(size: tuple[int, int]) -> str:
  return f'{size[0]}x{size[1]}'


def write_json(path: pathlib.Path, obj: Any) -> None:
  """Whole or not at all: a part killed mid-write leaves the previous version."""
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(obj, indent=2, default=str) + '\n')
  os.replace(tmp, path)


def run_logged(argv: list[str], log: pathlib.Path, **kwargs: Any) -> None:
  """Runs `argv` to the end with its output appended to `log`; raises on a non-zero exit."""
  with open(log, 'a') as f:
    f.write(f'$ {shlex.join(argv)}\n')
    f.flush()
    code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, check=False, **kwargs).returncode
  if code:
    raise RuntimeError(f'{shlex.join(argv[:4])} ... exited {code} (log: {log})')


# ---------------------------------------------------------------------------------------------
# Parts that run inside this script (`--part NAME`), each in a fresh process.

def part_env(args: argparse.Namespace, result: dict[str, Any]) -> None:
  import jax

  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  device = jax.devices()[0]
  result.update(python=platform.python_version(), versions=versions, jax_backend=jax.default_backend(),
                jax_devices=[f'{d.platform}:{d.device_kind}' for d in jax.devices()],
                device_kind=device.device_kind)
  try:
    import torch

    result['torch_cuda'] = torch.version.cuda
    if torch.cuda.is_available():
      result.update(torch_device=torch.cuda.get_device_name(0), cudnn=torch.backends.cudnn.version())
  except ImportError:
    result['torch_cuda'] = None
  if shutil.which('nvidia-smi'):
    query = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                            '--format=csv,noheader'], capture_output=True, text=True, timeout=30, check=False)
    result['nvidia_smi'] = query.stdout.strip() or query.stderr.strip()
  # Every third-party import of the code this check runs, and every requirement of pyproject.toml
  # (and of the carried wheels) against the versions found here: a missing wheel or a clash with
  # the image shows here, each difference named.
  sys.path.insert(0, str(BENCH))
  import device_image

  found = device_image.check()
  result.update(carried=found['carried'], requirements=found['differences'], import_failures=found['import_failures'])
  problems = [f'cannot {m} ({e})' for m, e in found['import_failures'].items()]
  if not args.cpu and result['jax_backend'] == 'cpu':
    problems.append('JAX sees no accelerator (its backend is cpu)')
  if problems:
    result['error'] = '; '.join(problems)


def part_data(args: argparse.Namespace, result: dict[str, Any]) -> None:
  """Synthetic data in the files layout, then its decode-once copy (when the command exists)."""
  mode = mode_of(args)
  root = pathlib.Path(args.work) / 'data'
  log = pathlib.Path(args.work) / 'data.log'
  start = time.perf_counter()
  run_logged([sys.executable, '-m', 'data_pipelines.synthetic', '--out', str(root), '--size', mode.synthetic,
              '--overwrite'], log, cwd=ROOT)
  result.update(root=str(root), synthetic=mode.synthetic, synthetic_s=time.perf_counter() - start)
  if not has_decoded():
    result['error'] = 'data_pipelines.decoded is missing: no decode-once data (train runs from files)'
    return
  start = time.perf_counter()
  run_logged([sys.executable, '-m', 'data_pipelines.decoded', '--root', str(root), '--input-size',
              size_arg(mode.size)], log, cwd=ROOT)
  result.update(decoded=str(root / 'decoded'), decode_s=time.perf_counter() - start)


def _max_errors(out: dict[str, Any], ref: dict[str, Any], suffix: str) -> dict[str, float]:
  import numpy as np

  depth, logits = np.asarray(out['depth'], np.float64), np.asarray(out['seg_logits'], np.float64)
  ref_depth = ref['depth' + suffix]
  return {'depth_max_err': float(np.abs(depth - ref_depth).max()),
          'seg_logits_max_err': float(np.abs(logits - ref['seg_logits' + suffix]).max()),
          'depth_rel_err': float(np.abs(depth - ref_depth).mean() / np.abs(ref_depth).mean())}


def part_parity(args: argparse.Namespace, result: dict[str, Any]) -> None:
  """The fixture's forward (eval and train mode) per compute dtype and matmul precision."""
  import contextlib

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from efficientvit_jax import checkpointing
  from efficientvit_jax import convert
  from efficientvit_jax import model as model_lib

  ckpt = convert.checkpoint_from_torch_file(FIXTURE / 'student_random.pt')
  with np.load(FIXTURE / 'student_random_io.npz') as z:
    ref = {k: z[k] for k in z.files}
  variants = [('float32', jnp.float32, None), ('bfloat16', jnp.bfloat16, None)]
  if jax.default_backend() != 'cpu':  # TF32 (the GPU default for float32 matmuls) against none
    variants.insert(1, ('float32_highest', jnp.float32, 'highest'))
  rows = result.setdefault('rows', [])
  for name, dtype, precision in variants:
    model = model_lib.create(dtype=dtype)
    checkpointing.load_into_model(model, ckpt.params, ckpt.batch_stats)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x, train, g=graphdef: nnx.merge(g, s)(x, train=train), static_argnums=2)
    row: dict[str, Any] = {'variant': name, 'precision': precision or 'default'}
    with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
      for train, suffix in ((False, ''), (True, '_train_mode')):
        out = jax.device_get(forward(state, jnp.asarray(ref['image']), train))
        errors = _max_errors(out, ref, suffix)
        row.update({f'{"train" if train else "eval"}_{k}': v for k, v in errors.items()})
    if name == 'bfloat16':
      row['within_tolerance'] = row['eval_depth_rel_err'] < TOLERANCE['bf16_rel']
    else:
      row['within_tolerance'] = (max(row['eval_depth_max_err'], row['eval_seg_logits_max_err']) <= TOLERANCE['eval']
                                 and max(row['train_depth_max_err'], row['train_seg_logits_max_err'])
                                 <= TOLERANCE['train'])
    rows.append(row)
    save_result(args, result)
  for backbone in ('efficientvit_b0', 'mobilenet_v3_small'):
    folder = FIXTURE / 'backbones' / backbone
    loaded = convert.load_model(folder / 'student.pt')
    with np.load(folder / 'expected.npz') as z:
      expected = {k: z[k] for k in z.files}
    from PIL import Image

    image = np.stack([np.asarray(Image.open(folder / f'img_{i}.png').convert('RGB')) for i in range(2)]) / 255.0
    graphdef, state = nnx.split(loaded.model)
    out = jax.device_get(jax.jit(lambda s, x, g=graphdef: nnx.merge(g, s)(x, train=False))(
        state, jnp.asarray(image, jnp.float32)))
    errors = _max_errors(out, expected, '')
    result.setdefault('backbones', []).append(
        {'backbone': backbone, **errors,
         'within_tolerance': max(errors['depth_max_err'], errors['seg_logits_max_err']) <= TOLERANCE['eval']})
    save_result(args, result)
  result['device'] = f'{jax.devices()[0].platform}:{jax.devices()[0].device_kind}'


def _train_metrics(path: pathlib.Path) -> dict[str, Any]:
  """images/s and input-wait fraction over the log intervals after the first (the warm-up; no interval
  counts compilation, validation or saving: docs/training.md#throughput)."""
  lines = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
  lines = [l for l in lines if 'train/images_per_s' in l]
  out: dict[str, Any] = {'log_lines': len(lines), 'last_step': lines[-1]['step'] if lines else 0}
  steady = lines[1:]
  if steady:
    ips = [l['train/images_per_s'] for l in steady]
    # Intervals hold equal step counts, so their times are proportional to 1 / images/s.
    out['images_per_s'] = len(ips) / sum(1 / v for v in ips)
    out['images_per_s_max'] = max(ips)
    waits = [(l['train/input_wait'], 1 / l['train/images_per_s']) for l in steady if 'train/input_wait' in l]
    if waits:
      out['input_wait'] = sum(w * t for w, t in waits) / sum(t for _, t in waits)
    out['loss_first'], out['loss_last'] = lines[0].get('train/loss'), lines[-1].get('train/loss')
  if lines:
    out['first_interval_images_per_s'] = lines[0]['train/images_per_s']
  return out


def _data(args: argparse.Namespace) -> dict[str, Any]:
  """The `data` part's result; raises if it made no synthetic data."""
  path = pathlib.Path(args.work) / 'data.json'
  data = json.loads(path.read_text()) if path.exists() else {}
  if 'root' not in data:
    raise RuntimeError(f'the data part made no data ({data.get("error", "it did not finish")})')
  return data


def part_train(args: argparse.Namespace, result: dict[str, Any]) -> None:
  """train.py for `train_s` seconds (or `train_steps`), then its metrics."""
  mode = mode_of(args)
  data = _data(args)
  decoded = 'decoded' in data
  workdir = pathlib.Path(args.work) / 'train_run'
  shutil.rmtree(workdir, ignore_errors=True)
  h, w = mode.size
  argv = [sys.executable, 'train.py', '--config', 'quickstart', f'--workdir={workdir}',
          f'--config.data.root={data["root"]}', f'--config.data.input_size=({h},{w})',
          f'--config.batch_size={mode.train_batch}', f'--config.num_train_steps={mode.train_steps}',
          f'--config.log_every_steps={mode.log_every}', '--config.eval_every_steps=0',
          f'--config.checkpoint_every_steps={10**9}', '--config.data.eval_sets=()']
  if decoded:
    argv.append('--config.data.format=decoded')
  result.update(format='decoded' if decoded else 'files', batch_size=mode.train_batch, size=list(mode.size),
                command=shlex.join(argv[1:]))
  log = pathlib.Path(args.work) / 'train.log'
  # Leave train.py time to save and exit inside this part's limit (the budget may have cut it).
  train_s = min(mode.train_s, float(os.environ.get('DEVICE_CHECK_PART_LIMIT_S', 'inf')) - 40)
  start = time.perf_counter()
  with open(log, 'w') as f:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    try:
      code = proc.wait(timeout=max(train_s, 1))
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGTERM)  # train.py saves the step and exits 0
      result['stopped_after_s'] = train_s
      code = proc.wait()
  result['train_wall_s'] = time.perf_counter() - start
  result.update(_train_metrics(workdir / 'metrics.jsonl'))
  tail = log.read_text().strip().splitlines()[-3:]
  if code:
    raise RuntimeError(f'train.py exited {code}: {" / ".join(tail)}')
  if not decoded:
    result['error'] = data.get('error', 'no decode-once data')
  elif 'input_wait' not in result:
    result['error'] = 'metrics.jsonl has no train/input_wait'


def _eval_pass(paths: dict[str, Any], mesh: Any, mode: Mode, params: Any, batch_stats: Any, name: str,
               step: Callable, keys: tuple[str, ...]) -> int:
  """What `evaluation.evaluate` does over set `name`, with the step compiled once; returns the frames seen."""
  from data_pipelines import datasets
  from efficientvit_jax import domains
  from efficientvit_jax import metrics as metrics_lib
  from efficientvit_jax import parallel

  accumulator = metrics_lib.MetricAccumulator(bins=metrics_lib.depth_bins(domains.DEPTH_WINDOWS[name]))
  batches = datasets.eval_iterator(paths, name, 'all', batch_size=mode.eval_batch, input_size=mode.size)
  frames = 0
  try:
    for local in batches:
      stats, _, _ = step(params, batch_stats, parallel.global_batch(local, mesh, keys))
      accumulator.update(stats)
      frames += int(local['frame_mask'].sum())
  finally:
    batches.close()
  accumulator.result()
  return frames


def part_eval(args: argparse.Namespace, result: dict[str, Any]) -> None:
  """Steady-state evaluation frames/s per set, and the device-only forward at the same batch."""
  import jax
  from flax import nnx

  from data_pipelines import datasets
  from efficientvit_jax import checkpointing
  from efficientvit_jax import convert
  from efficientvit_jax import domains
  from efficientvit_jax import evaluation
  from efficientvit_jax import model as model_lib
  from efficientvit_jax import parallel
  from efficientvit_jax.configs import default

  sys.path.insert(0, str(BENCH))
  import forward

  mode = mode_of(args)
  data = _data(args)
  config = default.get_config()
  config.data.root = data['root']
  paths = datasets.resolve_paths(config.data)
  mesh = parallel.make_mesh()
  model = model_lib.create()
  ckpt = convert.checkpoint_from_torch_file(FIXTURE / 'student_random.pt')
  checkpointing.load_into_model(model, ckpt.params, ckpt.batch_stats)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, batch_stats = parallel.put_replicated((params, batch_stats), mesh)
  result.update(batch_size=mode.eval_batch, size=list(mode.size), split='all', sets={})
  one_pass = functools.partial(_eval_pass, paths, mesh, mode, params, batch_stats)
  for name in mode.eval_sets:
    with_seg = domains.has_seg_labels(name)
    keys = ('image', 'gt_depth', 'frame_mask') + (('gt_seg',) if with_seg else ())
    step = jax.jit(evaluation.make_eval_step(graphdef, set_name=name, with_seg=with_seg))
    start = time.perf_counter()
    frames = one_pass(name, step, keys)
    cold_s = time.perf_counter() - start
    seen, passes, start = 0, 0, time.perf_counter()
    while passes == 0 or time.perf_counter() - start < mode.eval_min_s:
      seen += one_pass(name, step, keys)
      passes += 1
    warm_s = time.perf_counter() - start
    result['sets'][name] = {'frames': frames, 'cold_s': cold_s, 'passes': passes,
                            'frames_per_s': seen / warm_s}
    save_result(args, result)
  fwd = forward.JaxForward(mode.eval_batch, mode.size, 'float32')
  times = [fwd.run() for _ in range(mode.warmup + max(mode.steps, 5))][mode.warmup:]
  result.update(forward_images_per_s=mode.eval_batch / statistics.median(times), forward_compile_s=fwd.compile_s)


INTERNAL: dict[str, Callable[[argparse.Namespace, dict[str, Any]], None]] = {
    'env': part_env, 'data': part_data, 'parity': part_parity, 'train': part_train, 'eval': part_eval}


def save_result(args: argparse.Namespace, result: dict[str, Any]) -> None:
  write_json(pathlib.Path(args.result), result)


def run_part(args: argparse.Namespace) -> int:
  """`--part NAME`: runs one internal part, saving its result as it goes; exit 1 on an exception."""
  result: dict[str, Any] = {}
  code = 0
  try:
    INTERNAL[args.part](args, result)
  except Exception as e:
    import traceback

    traceback.print_exc()
    result['error'] = f'{type(e).__name__}: {e}'.strip()[:500]
    code = 1
  save_result(args, result)
  return code


# ---------------------------------------------------------------------------------------------
# The driver.

def part_command(name: str, args: argparse.Namespace, result: pathlib.Path) -> list[str]:
  """The process that runs part `name` and leaves its JSON at `result`."""
  mode = mode_of(args)
  if name == 'backbones':
    argv = [sys.executable, str(BENCH / 'backbones.py'), '--steps', str(mode.steps), '--warmup', str(mode.warmup),
            '--no-onnx', '--json', str(result)]
    if args.cpu:  # one backbone of each kind, forward only: training steps take XLA:CPU minutes to compile
      return argv + ['--backbones', 'efficientvit_b0,mobilenet_v3_small', '--size', size_arg(mode.size),
                     '--forward-batch', '2', '--no-train', '--impl', 'native', '--threads', '1']
    return argv + ['--size', size_arg(mode.size), '--dtype', 'bfloat16', '--forward-batch', '64', '--train-batch', '64']
  if name.startswith('step_'):
    dtype = name.split('_', 1)[1]
    argv = [sys.executable, str(BENCH / 'train_step.py'), '--dtype', dtype, '--torch', '--steps', str(mode.steps),
            '--warmup', str(mode.warmup), '--size', size_arg(mode.size),
            '--sweep', ','.join(map(str, mode.batches)), '--json', str(result)]
    if dtype == 'bfloat16':
      argv += ['--torch-amp', 'bfloat16']
    if mode.torch_compile:
      argv.append('--torch-compile')
    if args.cpu:
      # The GPU's formulations (ops.py), which compile faster than the CPU ones; one thread, since
      # torch's thread pool slows down tenfold on a busy two-core machine.
      argv += ['--impl', 'native', '--threads', '1']
    return argv
  argv = [sys.executable, str(pathlib.Path(__file__).resolve()), '--part', name, '--work', args.work,
          '--result', str(result), '--out', args.out]
  return argv + (['--cpu'] if args.cpu else [])


def part_env_vars(args: argparse.Namespace) -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env['PYTHONPATH'] = os.pathsep.join(p for p in (str(ROOT), env.get('PYTHONPATH', '')) if p)
  # JAX and torch share the GPU in the sweeps: JAX allocates what it needs instead of 75 % up front.
  env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
  if args.cpu:
    env.update(JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='')
    # Reruns (the test suite) load the compiled programs instead of compiling them again. Not on
    # accelerators: there the compile times are part of what the check measures.
    env.setdefault('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache'))
    env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
  return env


class Runner:
  """Starts parts as process groups, kills them at their limit, collects their JSON."""

  def __init__(self, args: argparse.Namespace):
    self.args = args
    self.work = pathlib.Path(args.work)
    (self.work / 'logs').mkdir(parents=True, exist_ok=True)
    self.deadline = time.monotonic() + args.budget_s
    self.results: dict[str, dict[str, Any]] = {}
    self.running: dict[str, tuple[subprocess.Popen, float, float, Any]] = {}

  def start(self, name: str) -> None:
    own = mode_of(self.args).limits[name]
    limit = min(own, self.deadline - time.monotonic())
    if limit < min(MIN_PART_S, own):
      self.results[name] = {'status': 'skipped', 'wall_s': 0.0, 'limit_s': round(max(limit, 0), 1),
                            'error': 'no time left in --budget-s'}
      return
    result = self.work / f'{name}.json'
    result.unlink(missing_ok=True)
    log = open(self.work / 'logs' / f'{name}.log', 'w')
    argv = part_command(name, self.args, result)
    log.write(f'$ {shlex.join(argv)}\n')
    log.flush()
    env = dict(part_env_vars(self.args), DEVICE_CHECK_PART_LIMIT_S=str(limit))
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    self.running[name] = (proc, time.monotonic(), limit, log)
    print(f'[{self.elapsed():5.0f} s] {name}: started (limit {limit:.0f} s)', flush=True)

  def elapsed(self) -> float:
    return time.monotonic() - (self.deadline - self.args.budget_s)

  def wait(self, name: str) -> dict[str, Any]:
    if name in self.results:
      return self.results[name]
    proc, started, limit, log = self.running.pop(name)
    status = 'ok'
    try:
      code = proc.wait(timeout=max(0.0, started + limit - time.monotonic()))
    except subprocess.TimeoutExpired:
      status, code = 'timeout', None
      self.kill(proc)
    log.close()
    wall = time.monotonic() - started
    path = self.work / f'{name}.json'
    try:
      result = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
      result = {}
    if status == 'ok' and (code or 'error' in result):
      status = 'failed'
    if status != 'ok' and 'error' not in result:
      result['error'] = (f'stopped at its {limit:.0f} s limit' if status == 'timeout'
                         else f'exit code {code}: {last_lines(self.work / "logs" / f"{name}.log", 1)}')
    result.update(status=status, wall_s=round(wall, 1), limit_s=round(limit, 1))
    self.results[name] = result
    print(f'[{self.elapsed():5.0f} s] {name}: {status} in {wall:.0f} s'
          + (f' ({result["error"]})' if status != 'ok' else ''), flush=True)
    return result

  @staticmethod
  def kill(proc: subprocess.Popen) -> None:
    """SIGTERM to the part's whole process group, SIGKILL `KILL_GRACE_S` later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
      try:
        os.killpg(proc.pid, sig)
      except ProcessLookupError:
        return
      try:
        proc.wait(timeout=KILL_GRACE_S)
        return
      except subprocess.TimeoutExpired:
        continue

  def close(self) -> None:
    for name in list(self.running):
      self.kill(self.running[name][0])
      self.wait(name)


def last_lines(path: pathlib.Path, n: int) -> str:
  """The last `n` non-empty lines of a part's log (not its first line, the command)."""
  lines = [l for l in path.read_text(errors='replace').splitlines()[1:] if l.strip()] if path.exists() else []
  return ' / '.join(lines[-n:])[-400:] or '(no output)'


# ---------------------------------------------------------------------------------------------
# Report.

def fmt(value: Any, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def _md_versions(env: dict[str, Any]) -> list[str]:
  """Versions against pyproject.toml's ranges, when the env part checked them."""
  lines: list[str] = []
  if 'requirements' in env:
    lines += ['', "## Versions against pyproject.toml's ranges", '',
              f'Carried (`make wheels`): {", ".join(f"{k} {v}" for k, v in env.get("carried", {}).items()) or "none"}.',
              '']
    if env['requirements']:
      lines += ['| requirement | required by | found |', '|---|---|---|']
      lines += [f'| `{d["requirement"]}` | {d["required_by"]} | {d["found"] or "missing"} |'
                for d in env['requirements']]
    else:
      lines.append('Every requirement is met by the versions found.')
  return lines


def _md_parity(report: dict[str, Any]) -> list[str]:
  """The parity table, per compute dtype and matmul precision, then per backbone."""
  lines: list[str] = []
  parity = report['parts'].get('parity', {}).get('rows', [])
  if parity:
    lines += ['', '## Parity with the reference fixture (240x320, max |error|)', '',
              '| compute | matmul precision | depth (eval) | logits (eval) | depth (train) | logits (train) '
              '| depth mean rel. | within test tolerance |',
              '|---|---|---|---|---|---|---|---|']
    for r in parity:
      lines.append(f'| {r["variant"].split("_")[0]} | {r["precision"]} | {r["eval_depth_max_err"]:.2e} | '
                   f'{r["eval_seg_logits_max_err"]:.2e} | {r["train_depth_max_err"]:.2e} | '
                   f'{r["train_seg_logits_max_err"]:.2e} | {r["eval_depth_rel_err"]:.2e} | '
                   f'{"yes" if r["within_tolerance"] else "NO"} |')
    for r in report['parts'].get('parity', {}).get('backbones', []):
      lines.append(f'| float32 ({r["backbone"]}, 120x160) | default | {r["depth_max_err"]:.2e} | '
                   f'{r["seg_logits_max_err"]:.2e} | - | - | {r["depth_rel_err"]:.2e} | '
                   f'{"yes" if r["within_tolerance"] else "NO"} |')
    lines.append(f'\nTolerances (tests/test_model.py): float32 {TOLERANCE["eval"]:g} eval / {TOLERANCE["train"]:g} '
                 f'train mode; bfloat16: mean relative depth error < {TOLERANCE["bf16_rel"]:g}.')
  return lines


def _md_steps(report: dict[str, Any]) -> list[str]:
  """The training-step table (ours, the PyTorch twin eager and compiled) with the MFU note."""
  lines: list[str] = []
  steps = [row for name in ('step_bfloat16', 'step_float32')
           for row in report['parts'].get(name, {}).get('sweep', [report['parts'].get(name)])
           if row and 'images_per_s' in row]
  if steps:
    lines += ['', f'## Training step ({"x".join(map(str, steps[0]["size"]))}; the PyTorch twin eager '
              '(bf16 autocast for bfloat16 on CUDA) and under torch.compile)', '',
              '| dtype | batch | img/s | MFU | compile s | peak MB | torch img/s | MFU | peak MB | ours/torch '
              '| compiled img/s | MFU | compile s | peak MB | ours/compiled |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in steps:
      lines.append(' | '.join([
          f'| {r["dtype"]}', str(r['batch_size']), fmt(r['images_per_s'], '.1f'), fmt(r.get('mfu'), '.1%'),
          fmt(r['compile_s'], '.1f'), fmt(r.get('device_peak_mb'), '.0f'), fmt(r.get('torch_images_per_s'), '.1f'),
          fmt(r.get('torch_mfu'), '.1%'), fmt(r.get('torch_device_peak_mb'), '.0f'), fmt(r.get('speedup'), '.2f'),
          fmt(r.get('torch_compile_images_per_s'), '.1f'), fmt(r.get('torch_compile_mfu'), '.1%'),
          fmt(r.get('torch_compile_s'), '.1f'), fmt(r.get('torch_compile_device_peak_mb'), '.0f'),
          fmt(r.get('speedup_vs_compile'), '.2f')]) + ' |')
    gflop = (f'; {steps[0]["backbone"]} at {"x".join(map(str, steps[0]["size"]))}: {steps[0]["forward_gflop"]:.2f}'
             if {'backbone', 'forward_gflop'} <= steps[0].keys() else '')
    lines.append(f'\nMFU: 3x the forward GFLOP (XLA cost analysis{gflop}) per trained image against '
                 'the dense peak of the compute dtype; ours: JAX peak since the process started; torch: '
                 '`max_memory_allocated` over one step.')
  return lines


def _md_train(report: dict[str, Any]) -> list[str]:
  """The train.py run's row."""
  lines: list[str] = []
  train = report['parts'].get('train', {})
  if 'last_step' in train:
    lines += ['', '## train.py run', '',
              '| data | batch | size | steps | wall s | img/s | input wait | loss first -> last |',
              '|---|---|---|---|---|---|---|---|',
              f'| {train["format"]} | {train["batch_size"]} | {"x".join(map(str, train["size"]))} | '
              f'{train["last_step"]} | {train["train_wall_s"]:.0f} | {fmt(train.get("images_per_s"), ".1f")} | '
              f'{fmt(train.get("input_wait"), ".1%")} | '
              f'{fmt(train.get("loss_first"), ".3f")} -> {fmt(train.get("loss_last"), ".3f")} |',
              '', f'`python {train["command"]}`; img/s and input wait leave out the first log interval (compilation).']
  return lines


def _md_backbones(report: dict[str, Any]) -> list[str]:
  """The every-backbone table."""
  lines: list[str] = []
  backbones = report['parts'].get('backbones', {})
  rows = backbones.get('rows') or []
  if rows:
    lines += ['', f'## Every backbone ({"x".join(map(str, rows[0]["size"]))}, {rows[0]["dtype"]}, '
              '`benchmarks/backbones.py`)', '',
              '| backbone | params M | GFLOP | fwd img/s | torch fwd img/s | train img/s | torch train img/s '
              '| ours/torch | MFU |',
              '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
      lines.append(f'| {r["backbone"]} | {r["params_m"]:.2f} | {r["forward_gflop"]:.2f} | '
                   f'{fmt(r.get("forward_images_per_s"), ".1f")} | {fmt(r.get("torch_forward_images_per_s"), ".1f")} | '
                   f'{fmt(r.get("train_images_per_s"), ".1f")} | {fmt(r.get("torch_train_images_per_s"), ".1f")} | '
                   f'{fmt(r.get("train_speedup"), ".2f")} | {fmt(r.get("mfu"), ".1%")} |')
  return lines


def _md_eval(report: dict[str, Any]) -> list[str]:
  """The evaluation table, per set."""
  lines: list[str] = []
  ev = report['parts'].get('eval', {})
  if ev.get('sets'):
    lines += ['', f'## Evaluation (batch {ev["batch_size"]}, {"x".join(map(str, ev["size"]))}, float32)', '',
              '| set | frames | first pass s (compiles) | frames/s | device-only forward img/s |',
              '|---|---|---|---|---|']
    for name, s in ev['sets'].items():
      lines.append(f'| {name} | {s["frames"]} | {s["cold_s"]:.1f} | {s["frames_per_s"]:.1f} | '
                   f'{fmt(ev.get("forward_images_per_s"), ".1f")} |')
  return lines


def markdown(report: dict[str, Any]) -> str:
  """The report (device_check.json's content) as the markdown page."""
  env = report['parts'].get('env', {})
  v = env.get('versions', {})
  lines = ['# Device check', '',
           f'- date: {report["date"]}',
           f'- device: {env.get("torch_device") or env.get("device_kind", "?")} '
           f'(JAX: {", ".join(env.get("jax_devices", [])) or "?"})',
           f'- driver / CUDA: {env.get("nvidia_smi", "-")}; torch CUDA {env.get("torch_cuda") or "-"}, '
           f'cuDNN {env.get("cudnn") or "-"}',
           '- versions: Python ' + env.get('python', '?') + ', ' + ', '.join(f'{k} {v[k]}' for k in PACKAGES if k in v),
           '- command: ' + (f'`{report["invoked_as"]}`, which ran ' if report.get('invoked_as') else '')
           + f'`{report["command"]}` ({report["mode"]} mode, {report["wall_s"]:.0f} s of a '
           f'{report["budget_s"]:.0f} s budget)',
           '', '| part | status | wall s | limit s | note |', '|---|---|---|---|---|']
  for name, r in report['parts'].items():
    lines.append(f'| {name} | {r.get("status")} | {fmt(r.get("wall_s"), ".0f")} | {fmt(r.get("limit_s"), ".0f")} | '
                 f'{(r.get("error") or "").replace("|", "/")} |')
  lines += _md_versions(env) + _md_parity(report) + _md_steps(report) + _md_train(report)
  lines += _md_backbones(report) + _md_eval(report)
  return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='folder for device_check.{json,md,log}')
  parser.add_argument('--cpu', action='store_true', help='reduced mode for CPU machines (the test suite)')
  parser.add_argument('--budget-s', type=float, default=None, help='wall-time budget for all parts')
  parser.add_argument('--parts', default=','.join(PARTS), help=f'comma-separated subset of {",".join(PARTS)}')
  parser.add_argument('--work', default='', help='folder for data and runs (default: a temporary one, removed)')
  parser.add_argument('--part', default='', choices=('',) + tuple(INTERNAL), help=argparse.SUPPRESS)
  parser.add_argument('--result', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.part:
    return run_part(args)
  parts = [p for p in args.parts.split(',') if p]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    print(f'error: --parts: unknown part(s) {", ".join(unknown)} (choose from {", ".join(PARTS)})', file=sys.stderr)
    return 2
  mode = mode_of(args)
  args.budget_s = args.budget_s or mode.budget_s
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  temporary = not args.work
  args.work = args.work or tempfile.mkdtemp(prefix='device_check_')
  command = shlex.join(['python', 'benchmarks/device_check.py', *(sys.argv[1:] if argv is None else argv)])
  report: dict[str, Any] = {'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
                            'command': command, 'invoked_as': os.environ.get('DEVICE_CHECK_COMMAND'),
                            'mode': 'cpu' if args.cpu else 'gpu', 'budget_s': args.budget_s,
                            'host': {'cpus': os.cpu_count(), 'platform': platform.platform()}, 'parts': {}}
  start = time.monotonic()
  runner = Runner(args)
  try:
    if any(p in parts for p in ('train', 'eval')):
      runner.start('data')
    for name in parts:
      if name not in ('env', 'parity') and 'data' in runner.running:
        runner.wait('data')  # the data's CPU load must not overlap a timed part
      runner.start(name)
      runner.wait(name)
    if 'data' in runner.running:
      runner.wait('data')
  finally:
    runner.close()
    report['parts'] = {name: runner.results[name] for name in ['data', *parts] if name in runner.results}
    report['wall_s'] = time.monotonic() - start
    write_json(out / 'device_check.json', report)
    (out / 'device_check.md').write_text(markdown(report))
    with open(out / 'device_check.log', 'w') as f:
      for name in report['parts']:
        path = pathlib.Path(args.work) / 'logs' / f'{name}.log'
        text = path.read_text(errors='replace').splitlines() if path.exists() else []
        f.write(f'==== {name} ({len(text)} lines, last 150)\n' + '\n'.join(text[-150:]) + '\n')
        for extra in ('data.log', 'train.log'):
          if name == extra.split('.')[0] and (pathlib.Path(args.work) / extra).exists():
            lines = (pathlib.Path(args.work) / extra).read_text(errors='replace').splitlines()
            f.write(f'---- {extra} (last 60)\n' + '\n'.join(lines[-60:]) + '\n')
    if temporary:
      shutil.rmtree(args.work, ignore_errors=True)
  print((out / 'device_check.md').read_text())
  print(f'wrote {out}/device_check.json, device_check.md, device_check.log')
  return 0 if all(r.get('status') == 'ok' for r in report['parts'].values()) else 1


if __name__ == '__main__':
  sys.exit(main())
