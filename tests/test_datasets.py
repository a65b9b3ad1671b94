"""grain pipelines: V8 composition, process slices, resume, eval padding, bad frames."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import v8
from data_pipelines import datasets, mixing, readers

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


@pytest.mark.parametrize('fmt', ['files', 'decoded'])
def test_v8_joint_halves_nyu_upsampled(scaled, scaled_decoded, fmt):
  it = datasets.train_iterator(config_for(scaled, steps=6, decoded_dir=scaled_decoded if fmt == 'decoded' else ''))
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
  files = datasets.train_iterator(config_for(scaled, steps=3))
  dec = datasets.train_iterator(config_for(scaled, steps=3, decoded_dir=scaled_decoded))
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
  full = stack_steps(datasets.train_iterator(config), 5)[3:]
  resumed = stack_steps(datasets.train_iterator(config, start_step=3), 2)
  halves = [stack_steps(datasets.train_iterator(config, 3, p, 2), 2) for p in range(2)]
  for t in range(2):
    assert_same(full[t], resumed[t])
    joined = {k: np.concatenate([halves[0][t][k], halves[1][t][k]]) for k in full[t]}
    assert halves[0][t]['image'].shape[0] == 8
    assert_same(full[t], joined)
  with pytest.raises(ValueError, match='not divisible'):
    datasets.train_iterator(config, 0, 0, 3)


@pytest.mark.parametrize('mode', ['nyu', 'lilocbench', 'downsample', 'concat'])
def test_other_modes(scaled, mode):
  it = datasets.train_iterator(config_for(scaled, mode, batch_size=8, steps=2))
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


def test_bad_frames_named_from_threads_or_skipped(scaled, tmp_path, capsys):
  """A truncated PNG and a missing depth file among the first batch's LILocBench frames."""
  config = config_for(scaled, steps=2)
  manifest = os.path.join(scaled, 'lilocbench', 'manifest.jsonl')
  lines = [json.loads(l) for l in open(manifest)]
  reader = readers.LilocbenchReader(manifest, 'train')
  domain, index = mixing.global_batch('joint', {'nyu': 32, 'lilocbench': len(reader)}, 16, 0, 0,
                                      {'nyu': 0.5, 'lilocbench': 0.5})
  first = [reader.frame_index(int(i)) for i in index[domain == 1][:2]]
  data = open(lines[first[0]]['rgb'], 'rb').read()
  (tmp_path / 'trunc.png').write_bytes(data[:len(data) // 3])
  lines[first[0]]['rgb'] = str(tmp_path / 'trunc.png')
  lines[first[1]]['sensor_depth'] = str(tmp_path / 'missing.npy')
  (tmp_path / 'lil').mkdir()
  bad = tmp_path / 'lil' / 'manifest.jsonl'
  bad.write_text(''.join(json.dumps(l) + '\n' for l in lines))
  config.data.lilocbench.manifest = str(bad)
  with pytest.raises(readers.BadFrameError, match=r'(trunc\.png|missing\.npy).*line \d+'):
    next(datasets.train_iterator(config))
  config.data.skip_bad_frames = True
  it = datasets.train_iterator(config)
  batch = next(it)
  assert (batch['domain'] == 1).sum() == 8 and it.skipped.count == 2
  assert any('trunc.png' in m for m in it.skipped.messages)
  assert any('missing.npy' in m for m in it.skipped.messages)
  it.close()
  warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning: ')]
  assert sum('warning: skipping bad frame: ' in line for line in warnings) == 2  # plain lines, not only the log
  assert 'warning: skipped 2 bad training frames' in warnings
  # Evaluation masks a skipped frame out instead of replacing it.
  ev = datasets.eval_iterator(config, 'lilocbench', 'train', batch_size=16)
  masks = np.concatenate([b['frame_mask'] for b in ev])
  assert masks.sum() == len(reader) - 2 and ev.skipped.count == 2


@pytest.mark.slow
def test_multiprocessing_workers_give_the_same_batches(scaled):
  script = f'''
import numpy as np
from absl import app
from configs import v8
from data_pipelines import datasets
def main(_):
  c = v8.get_config()
  c.data.root, c.data.input_size, c.batch_size, c.num_train_steps = {scaled!r}, (48, 64), 8, 3
  ref = list(datasets.train_iterator(c))
  c.data.num_workers = 2
  it = datasets.train_iterator(c)
  got = list(it)
  it.close()
  assert len(got) == 3
  for a, b in zip(ref, got):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
app.run(main)
'''
  res = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
