"""Shared pytest setup: a persistent JAX compilation cache and the opt-in `slow` marker.

Tiers: `make test-fast` (`-m 'not e2e'`) < `make test` (everything but `slow`) < `make test-slow`
(`--run-slow`). Mark a test `e2e` when it runs a command line end to end, trains, compiles the whole
training step or runs a benchmark; every module keeps at least one test without the mark.
"""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / 'tests' / 'data'

# Set before JAX initialises its backend in any test module; subprocesses (train.py, eval.py)
# inherit both, so they share the suite's compilation cache.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache'))
# Every program, however small, in this process and the commands it runs (runtime.enable_compilation_cache
# reads it too): the suite compiles hundreds well under a second, a command's start ~120 initialisers.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
# XLA:CPU's LLVM backend at -O0 unless XLA_FLAGS names a level: the suite is mostly compilation, which
# this makes ~1/3 cheaper (a cold 6-step train.py run 58 -> 38 s); its tiny programs run ~2x slower and
# agree with XLA's default level (3) within rounding. `XLA_FLAGS=--xla_backend_optimization_level=3 make test`
# runs the suite as users' programs are compiled.
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a command on `devices` simulated CPU devices, keeping the suite's own flags."""
  return f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"


def mount_namespace() -> list[str] | None:
  """The `unshare` command that runs a command in its own mount namespace here (as root, or in a
  user namespace), where a test can mount a small tmpfs (a full disk) or hide a file from one
  process; None where neither works (such tests skip)."""
  if not shutil.which('unshare'):
    return None
  for flags in (['-m'], ['-r', '-m']):
    if subprocess.run(['unshare', *flags, 'true'], capture_output=True).returncode == 0:
      return ['unshare', *flags]
  return None


def pytest_configure(config):
  import jax

  jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_addoption(parser):
  parser.addoption('--run-slow', action='store_true', default=False, help='also run tests marked slow')


# The longest modules first, so that with several workers (`make test`) none is left running alone at the end.
LONGEST_FIRST = ('test_multiprocess.py', 'test_train.py', 'test_benchmarks.py', 'test_faults.py', 'test_training.py',
                 'test_model.py', 'test_eval.py', 'test_train_loop.py')


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
  if config.getoption('--run-slow'):
    return
  skip = pytest.mark.skip(reason='slow: run with --run-slow (make test-slow)')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope='session')
def reference_io():
  """The fixture's inputs and reference outputs (docs/model.md#reference-fixture)."""
  import numpy as np

  with np.load(DATA / 'student_random_io.npz') as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope='session')
def reference_ckpt():
  """`tests/data/student_random.pt` converted to our Checkpoint."""
  from efficientvit_jax import convert

  return convert.checkpoint_from_torch_file(DATA / 'student_random.pt')


@pytest.fixture(scope='session')
def reference_folder(tmp_path_factory, reference_ckpt):
  """The fixture as a checkpoint folder."""
  from efficientvit_jax import checkpointing

  return checkpointing.write_folder(tmp_path_factory.mktemp('ckpt') / 'student', reference_ckpt)


_BACKBONE_FIXTURES = {}


def backbone_fixture(backbone: str) -> dict:
  """`tests/data/backbones/<backbone>/` (real timm / torchvision and the reference's model code):
  `pt` (the loaded student.pt), `image` [2, 120, 160, 3] float32 in [0, 1] (the PNGs / 255),
  eval-mode `depth` [2, 120, 160] and `seg_logits` [2, 120, 160, 6]. Loaded once per session."""
  if backbone not in _BACKBONE_FIXTURES:
    import numpy as np
    import torch
    from PIL import Image

    folder = DATA / 'backbones' / backbone
    with np.load(folder / 'expected.npz') as z:
      out = {k: z[k] for k in z.files}
    out['image'] = np.stack([np.asarray(Image.open(folder / f'img_{i}.png').convert('RGB')) for i in range(2)]
                            ).astype(np.float32) / 255.0
    out['pt'] = torch.load(folder / 'student.pt', map_location='cpu', weights_only=True)
    out['path'] = folder / 'student.pt'
    _BACKBONE_FIXTURES[backbone] = out
  return _BACKBONE_FIXTURES[backbone]


def backbones(*names: str) -> list:
  """pytest parameters of `names`, the large EfficientViTs (B2, B3: whole-model work of 15-40 M
  parameters, the code paths of B0 and B1 at other widths and depths) marked e2e: in `make test`,
  not in `make test-fast`."""
  return [pytest.param(n, marks=pytest.mark.e2e) if n in ('efficientvit_b2', 'efficientvit_b3') else n
          for n in names]


def random_checkpoint(backbone: str, seed: int = 0, **meta):
  """A freshly initialised `backbone` model's Checkpoint with random BatchNorm statistics (not 0 / 1);
  meta: {'backbone': backbone, **meta}."""
  import numpy as np

  from efficientvit_jax import checkpointing
  from efficientvit_jax import model as model_lib
  from efficientvit_jax import trees

  params, stats = checkpointing.model_trees(model_lib.create(backbone=backbone, seed=seed))
  rng = np.random.default_rng(seed)
  stats = trees.unflatten({k: (rng.uniform(0.5, 2.0, v.shape) if k.endswith('.var') else rng.normal(0, 0.2, v.shape))
                           .astype(np.float32) for k, v in trees.flatten(stats).items()})
  return checkpointing.Checkpoint(params=params, batch_stats=stats, kendall=checkpointing.default_kendall(),
                                  meta={'backbone': backbone, **meta})


@pytest.fixture(scope='session')
def synthetic_tiny(tmp_path_factory):
  """The tiny synthetic data set (`data_pipelines.synthetic`, seed 0), generated once per session."""
  from data_pipelines import synthetic

  path = tmp_path_factory.getbasetemp() / 'synthetic_tiny'
  if not (path / '.complete').exists():
    synthetic.generate(str(path), seed=0, size='tiny')
    (path / '.complete').touch()
  return path


def run_command(args, expect, timeout=300, cwd=None):
  """`python ARGS` in the checkout (JAX on the CPU, the suite's compilation cache): asserts exit code
  `expect` and no traceback; when `expect` is 2, also exactly one line holding 'error:' (argparse's
  usage lines may precede it). Returns (the process, that line or None)."""
  import subprocess
  import sys

  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd or ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if 'error:' in line]
  if expect == 2:
    assert len(errors) == 1, proc.stderr[-3000:]
  return proc, errors[0] if errors else None


@pytest.fixture
def read_only_dir(tmp_path):
  """A folder nothing can be written into, by root too: chmod 0o555, and as root `chattr +i`
  (immutable; skipped where the file system or the container does not allow it)."""
  import shutil
  import subprocess

  path = tmp_path / 'read_only'
  path.mkdir()
  path.chmod(0o555)
  root = os.geteuid() == 0
  if root and (not shutil.which('chattr')
               or subprocess.run(['chattr', '+i', str(path)], capture_output=True).returncode):
    path.chmod(0o755)
    pytest.skip('as root, a read-only folder needs chattr +i, which is not available here')
  yield path
  if root:
    subprocess.run(['chattr', '-i', str(path)], check=True)
  path.chmod(0o755)
