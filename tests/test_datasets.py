"""grain pipelines: V8 composition, process slices, resume, eval padding, bad frames, worker processes."""

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from data_pipelines import datasets
from data_pipelines import mixing
from data_pipelines import readers
from efficientvit_jax.configs import v8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def root(synthetic_tiny):
  return str(synthetic_tiny)


@pytest.fixture(scope='module')
def scaled(root, tmp_path_factory):
  """The tiny set with its frames linked many times: 40 NYU frames (32 train) and 160 LILocBench
  frames (128 train, one camera), enough for V8 batches of 16 (NYU : LILocBench = 1 : 4)."""
  out = tmp_path_factory.mktemp('scaled')
  src = os.path.join(root, 'nyu', 'nyu_cache')
  n_tiny = len(os.listdir(os.path.join(src, 'rgb')))
  cache = out / 'nyu' / 'nyu_cache'
  for sub, ext in (('rgb', 'png'), ('depth', 'npy'), ('seg', 'npy')):
    (cache / sub).mkdir(parents=True)
    for i in range(40):
      os.symlink(os.path.join(src, sub, f'{i % n_tiny:05d}.{ext}'), cache / sub / f'{i:05d}.{ext}')
  (cache / 'train_indices.txt').write_text(''.join(f'{i}\n' for i in range(32)))
  (cache / 'val_indices.txt').write_text(''.join(f'{i}\n' for i in range(32, 40)))
  tdir = os.path.join(root, 'nyu', 'teacher')
  teacher = [json.loads(l) for l in open(os.path.join(tdir, 'manifest.jsonl'))]
  (out / 'nyu' / 'teacher').mkdir()
  with open(out / 'nyu' / 'teacher' / 'manifest.jsonl', 'w') as f:
    for i in range(40):
      e = dict(teacher[i % n_tiny], stem=f'{i:05d}')
      for k in ('da3_depth', 'sam2_seg'):
        e[k] = e[k] and os.path.join(tdir, e[k])
      f.write(json.dumps(e) + '\n')
  ldir = os.path.join(root, 'lilocbench')
  lines = [json.loads(l) for l in open(os.path.join(ldir, 'manifest.jsonl'))]
  (out / 'lilocbench').mkdir()
  with open(out / 'lilocbench' / 'manifest.jsonl', 'w') as f:
    for k in range(160):
      e = dict(lines[k % len(lines)], camera='camera_front', timestamp=1000.0 + 0.5 * k)
      for key in ('rgb', 'sensor_depth', 'da3_depth', 'seg'):
        e[key] = os.path.join(ldir, e[key])
      f.write(json.dumps(e) + '\n')
  os.symlink(os.path.join(root, 'corridor'), out / 'corridor')
  return str(out)


@pytest.fixture(scope='module')
def scaled_decoded(scaled, tmp_path_factory):
  """`scaled` written once by `data_pipelines.decoded` at the tests' input size."""
  from data_pipelines import decoded

  out = str(tmp_path_factory.mktemp('decoded') / 'decoded')
  assert decoded.main(['--root', scaled, '--out', out, '--input-size', '48x64', '--threads', '2',
                       '--sets', 'nyu,lilocbench']) == 0
  return out


def config_for(data_root, mode='joint', batch_size=16, steps=8, decoded_dir=''):
  c = v8.get_config()
  c.data.root = data_root
  if decoded_dir:
    c.data.format, c.data.decoded_dir = 'decoded', decoded_dir
  c.data.mode = mode
  c.data.input_size = (48, 64)
  c.data.num_threads = 2
  c.batch_size = batch_size
  c.num_train_steps = steps
  return c


def train_batches(config, *args, **kwargs):
  """The training iterator over the config's `num_train_steps` steps (the loop's plan when given)."""
  return datasets.train_iterator(config, *args, num_steps=config.num_train_steps, **kwargs)


@pytest.mark.parametrize('fmt', ['files', 'decoded'])
def test_v8_joint_halves_nyu_upsampled(scaled, scaled_decoded, fmt):
  it = train_batches(config_for(scaled, steps=6, decoded_dir=scaled_decoded if fmt == 'decoded' else ''))
  assert it.sizes == {'nyu': 32, 'lilocbench': 128} and it.steps_per_epoch == 16
  seen = collections.Counter()
  for step, batch in enumerate(it):
    assert batch['image'].shape == (16, 48, 64, 3)
    assert (batch['domain'] == 0).sum() == 8 and (batch['domain'] == 1).sum() == 8
    domain, _ = mixing.global_batch('joint', it.sizes, 16, step, 0, {'nyu': 0.5, 'lilocbench': 0.5})
    np.testing.assert_array_equal(batch['domain'], domain)
    seen.update(zip(batch['domain'].tolist(), batch['index'].tolist()))
  assert it.step == 6
  assert max(c for (d, _), c in seen.items() if d == 0) > 1  # NYU repeats within the epoch
  assert max(c for (d, _), c in seen.items() if d == 1) == 1  # LILocBench does not


def stack_steps(it, n):
  return [next(it) for _ in range(n)]


def assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_decoded_batches_equal_file_batches(scaled, scaled_decoded):
  """Decode-once data give the files path's training batches bit for bit (host side, before the
  device augmentation), NYU crops at native scale included; and the same validation batches."""
  files = train_batches(config_for(scaled, steps=3))
  dec = train_batches(config_for(scaled, steps=3, decoded_dir=scaled_decoded))
  for a, b in zip(files, dec):
    assert_same(a, b)
  for name in ('nyu', 'lilocbench'):
    a = datasets.eval_iterator(config_for(scaled), name, batch_size=8)
    b = datasets.eval_iterator(config_for(scaled, decoded_dir=scaled_decoded), name, batch_size=8)
    assert len(a) == len(b)
    for x, y in zip(a, b):
      assert_same(x, y)


def test_global_batch_independent_of_processes_and_resume(scaled):
  config = config_for(scaled, steps=5)
  full = stack_steps(train_batches(config), 5)[3:]
  resumed = stack_steps(train_batches(config, start_step=3), 2)
  halves = [stack_steps(train_batches(config, 3, p, 2), 2) for p in range(2)]
  for t in range(2):
    assert_same(full[t], resumed[t])
    joined = {k: np.concatenate([halves[0][t][k], halves[1][t][k]]) for k in full[t]}
    assert halves[0][t]['image'].shape[0] == 8
    assert_same(full[t], joined)
  with pytest.raises(ValueError, match='not divisible'):
    train_batches(config, 0, 0, 3)


@pytest.mark.parametrize('mode', ['nyu', 'lilocbench', 'downsample', 'concat'])
def test_other_modes(scaled, mode):
  it = train_batches(config_for(scaled, mode, batch_size=8, steps=2))
  sizes = it.sizes
  expected = {'nyu': 32 // 8, 'lilocbench': 128 // 8, 'downsample': 32 // 4, 'concat': 160 // 8}
  assert it.steps_per_epoch == expected[mode]
  for step, batch in enumerate(it):
    domain, _ = mixing.global_batch(mode, sizes, 8, step, 0, {'nyu': 0.5, 'lilocbench': 0.5})
    np.testing.assert_array_equal(batch['domain'], domain)
    if mode in ('nyu', 'lilocbench'):
      assert np.all(batch['domain'] == mixing.TRAIN_SETS.index(mode))


def test_eval_iterator_pads_and_shards(scaled):
  config = config_for(scaled)
  single = list(datasets.eval_iterator(config, 'nyu', 'val', batch_size=6))
  assert len(single) == 2 and all(b['image'].shape == (6, 48, 64, 3) for b in single)
  mask = np.concatenate([b['frame_mask'] for b in single])
  index = np.concatenate([b['index'] for b in single])
  assert mask.sum() == 8 and not mask[8:].any() and np.all(index[~mask] == -1)
  assert index[mask].tolist() == list(range(32, 40))
  assert np.all(np.concatenate([b['gt_seg'] for b in single])[~mask] == 255)
  shards = [list(datasets.eval_iterator(config, 'nyu', 'val', 6, p, 2)) for p in range(2)]
  for b, (x, y) in enumerate(zip(*shards)):
    assert_same(single[b], {k: np.concatenate([x[k], y[k]]) for k in x})
  corridor = list(datasets.eval_iterator(config, 'corridor', 'all', batch_size=4))
  assert len(corridor) == 1 and corridor[0]['frame_mask'].sum() == 1
  assert np.all(corridor[0]['domain'] == 2)


def test_resolve_paths():
  c = v8.get_config().data
  c.root = '/r'
  p = datasets.resolve_paths(c)
  assert p['nyu_root'] == '/r/nyu' and p['lilocbench_manifest'] == '/r/lilocbench/manifest.jsonl'
  assert p['corridor_manifest'] == '/r/corridor/manifest.jsonl' and p['tfds_dir'] == '/r/tfds'
  assert p['nyu_teacher_manifest'] is None  # derived and absent
  c.nyu.teacher_manifest = '/t/m.jsonl'
  c.nyu.root = '/n'
  p = datasets.resolve_paths(c)
  assert p['nyu_root'] == '/n' and p['nyu_teacher_manifest'] == '/t/m.jsonl'


def _damaged_lilocbench(scaled, tmp_path, steps=(0,)):
  """A copy of the LILocBench manifest whose first LILocBench frames of the joint batch (16) at
  each of `steps` are bad: at the first step a truncated PNG then a missing depth file, at the
  others a truncated PNG. Returns (its path, the number of bad frames)."""
  manifest = os.path.join(scaled, 'lilocbench', 'manifest.jsonl')
  lines = [json.loads(l) for l in open(manifest)]
  reader = readers.LilocbenchReader(manifest, 'train')
  bad = 0
  for step in steps:
    domain, index = mixing.global_batch('joint', {'nyu': 32, 'lilocbench': len(reader)}, 16, step, 0,
                                        {'nyu': 0.5, 'lilocbench': 0.5})
    frames = [reader.frame_index(int(i)) for i in index[domain == 1][:2 if step == steps[0] else 1]]
    data = open(lines[frames[0]]['rgb'], 'rb').read()
    (tmp_path / f'trunc{step}.png').write_bytes(data[:len(data) // 3])
    lines[frames[0]]['rgb'] = str(tmp_path / f'trunc{step}.png')
    if len(frames) > 1:
      lines[frames[1]]['sensor_depth'] = str(tmp_path / 'missing.npy')
    bad += len(frames)
  (tmp_path / 'lil').mkdir()
  out = tmp_path / 'lil' / 'manifest.jsonl'
  out.write_text(''.join(json.dumps(l) + '\n' for l in lines))
  return str(out), bad


def test_bad_frames_named_from_threads_or_skipped(scaled, tmp_path, capsys):
  """A truncated PNG and a missing depth file among the first batch's LILocBench frames."""
  config = config_for(scaled, steps=2)
  config.data.lilocbench.manifest, _ = _damaged_lilocbench(scaled, tmp_path)
  with pytest.raises(readers.BadFrameError, match=r'(trunc0\.png|missing\.npy).*line \d+'):
    next(train_batches(config))
  config.data.skip_bad_frames = True
  it = train_batches(config)
  batch = next(it)
  assert (batch['domain'] == 1).sum() == 8 and it.skipped.count == 2
  assert any('trunc0.png' in m for m in it.skipped.messages)
  assert any('missing.npy' in m for m in it.skipped.messages)
  it.close()
  warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning: ')]
  assert sum('warning: skipping bad frame: ' in line for line in warnings) == 2  # plain lines, not only the log
  assert 'warning: skipped 2 bad training frames' in warnings
  # Evaluation masks a skipped frame out instead of replacing it.
  ev = datasets.eval_iterator(config, 'lilocbench', 'train', batch_size=16)
  ev_batches = list(ev)
  masks = np.concatenate([b['frame_mask'] for b in ev_batches])
  assert masks.sum() == len(ev.reader) - 2 and ev.skipped.count == 2
  assert batch.keys() == ev_batches[0].keys() - {'frame_mask'}  # the skip counts are taken out


def _spawned_children() -> set[int]:
  """pids of this process's multiprocessing 'spawn' children (grain's workers)."""
  out = set()
  for child in psutil.Process().children(recursive=True):
    try:
      if 'spawn_main' in ' '.join(child.cmdline()):
        out.add(child.pid)
    except psutil.NoSuchProcess:
      pass
  return out


@pytest.mark.e2e
def test_worker_processes_give_the_same_batches_and_skip_counts(scaled, tmp_path):
  """data.num_workers=2 (worker w makes batches w, w + 2, ...) against the threads alone: the same
  batches bit for bit, bad frames of batches made by both workers counted, no worker left after
  the end; without skipping, a bad frame met by the second worker stops the iterator naming it,
  and its workers are gone when the error arrives."""
  config = config_for(scaled, steps=3)
  config.data.lilocbench.manifest, bad = _damaged_lilocbench(scaled, tmp_path, steps=(0, 1))
  config.data.skip_bad_frames = True
  threads = train_batches(config)
  expected = list(threads)
  assert threads.skipped.count == bad == 3
  before = _spawned_children()
  config.data.num_workers = 2
  workers = train_batches(config)
  got = [next(workers)]
  assert len(_spawned_children() - before) == 2
  got += list(workers)  # the end closes the iterator
  assert len(got) == 3 and workers.step == 3
  for a, b in zip(expected, got):
    assert_same(a, b)
  assert workers.skipped.count == bad
  assert not _spawned_children() - before
  config.data.skip_bad_frames = False
  (tmp_path / 'late').mkdir()
  config.data.lilocbench.manifest, _ = _damaged_lilocbench(scaled, tmp_path / 'late', steps=(1,))
  workers = train_batches(config)
  next(workers)
  with pytest.raises(readers.BadFrameError, match=r'(trunc1\.png|missing\.npy).*line \d+'):
    next(workers)
  assert not _spawned_children() - before
  workers.close()


@pytest.mark.e2e
def test_bad_frame_in_a_worker_stops_train_py_cleanly(tmp_path, synthetic_tiny):
  """train.py with data.num_workers=2 and every NYU training image truncated: exit 2 with one
  `error:` line naming an image, no traceback, no hang, and no process of the run left behind."""
  data = tmp_path / 'data'
  shutil.copytree(synthetic_tiny, data)
  cache = data / 'nyu' / 'nyu_cache'
  for i in (cache / 'train_indices.txt').read_text().split():
    png = cache / 'rgb' / f'{int(i):05d}.png'
    png.write_bytes(png.read_bytes()[:200])
  mark = f'{os.getpid()}-{tmp_path.name}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, EVIT_TEST_RUN=mark)
  cmd = [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir', str(tmp_path / 'w'),
         f'--config.data.root={data}', '--config.batch_size=2', '--config.data.input_size=(64,64)',
         '--config.data.eval_sets=()', '--config.data.num_threads=1', '--config.data.num_workers=2',
         '--config.num_train_steps=4']
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'nyu_cache/rgb/' in errors[0] and 'cannot decode image' in errors[0], errors
  left = []
  for p in psutil.process_iter():
    try:
      if p.environ().get('EVIT_TEST_RUN') == mark:
        left.append(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
      pass
  assert not left


def _alive(pid: int) -> bool:
  try:
    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


@pytest.mark.e2e
def test_workers_end_with_a_killed_parent(scaled, tmp_path):
  """A process killed (SIGKILL: no close, no exit handlers) while its grain workers wait on a full
  queue: the workers end within seconds instead of living on as orphans."""
  script = f'''
import os, signal, psutil
from efficientvit_jax.configs import v8
from data_pipelines import datasets
config = v8.get_config()
config.data.root, config.data.input_size, config.data.num_workers = {scaled!r}, (48, 64), 2
config.batch_size, config.num_train_steps = 16, 8
it = datasets.train_iterator(config, num_steps=config.num_train_steps)
next(it)
print('workers:', *(c.pid for c in psutil.Process().children() if 'spawn_main' in ' '.join(c.cmdline())), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
'''
  out = tmp_path / 'out.txt'
  with open(out, 'w') as f:  # a file, not a pipe: orphans holding a pipe would stall the run itself
    proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          stdout=f, stderr=subprocess.STDOUT, timeout=120)
  assert proc.returncode == -signal.SIGKILL, out.read_text()[-3000:]
  line, = (l for l in out.read_text().splitlines() if l.startswith('workers:'))
  pids = [int(p) for p in line.split()[1:]]
  assert len(pids) == 2
  deadline = time.monotonic() + 10
  try:
    while any(_alive(p) for p in pids):
      assert time.monotonic() < deadline, 'grain workers outlived their parent'
      time.sleep(0.2)
  finally:
    for p in pids:
      if _alive(p):
        os.kill(p, signal.SIGKILL)
