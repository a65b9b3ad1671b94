"""Decode-once data: elements equal the files path's, and a folder that is stale, truncated, from
another format version or for another input size is refused with one line naming it."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import datasets
from data_pipelines import decoded
from data_pipelines import transforms
from efficientvit_jax.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (48, 64)


@pytest.fixture(scope='module')
def data(synthetic_tiny, tmp_path_factory):
  """A private copy of the tiny synthetic set (the tests change its files) and its decoded folder."""
  root = str(tmp_path_factory.mktemp('dec') / 'data')
  shutil.copytree(synthetic_tiny, root)
  assert decoded.main(['--root', root, '--input-size', '48x64', '--threads', '2']) == 0
  return root


def paths_for(root, fmt='decoded'):
  c = default.get_config().data
  c.root, c.format, c.input_size = root, fmt, SIZE
  return datasets.resolve_paths(c)


@pytest.mark.parametrize('set_name,split', [('nyu', 'train'), ('nyu', 'val'), ('lilocbench', 'train'),
                                            ('lilocbench', 'val'), ('corridor', 'all')])
def test_elements_equal_the_files_path(data, set_name, split):
  files = datasets.make_reader(paths_for(data, 'files'), set_name, split)
  dec = datasets.make_reader(paths_for(data), set_name, split)
  assert len(files) == len(dec) > 0
  for i in range(len(files)):
    a, b = files.read(i), dec.read(i)
    assert a['index'] == b['index'] and a['domain'] == b['domain']
    pairs = [(transforms.eval_transform(a, SIZE), transforms.eval_transform(b, SIZE))]
    if split == 'train':
      pairs.append((transforms.train_transform(a, transforms.frame_rng(0, i, 1), SIZE),
                    transforms.train_transform(b, transforms.frame_rng(0, i, 1), SIZE)))
    for el_a, el_b in pairs:
      for k in el_a:
        assert el_a[k].dtype == el_b[k].dtype, k
        np.testing.assert_array_equal(el_a[k], el_b[k], err_msg=f'{set_name} {split} frame {i} {k}')
  if (set_name, split) == ('nyu', 'train'):
    assert dec.read(0)['rgb'].shape[:2] == files.read(0)['rgb'].shape[:2]  # native: crops there
  else:
    assert dec.read(0)['rgb'].shape[:2] == SIZE


def test_refusals_name_the_folder(data, tmp_path):
  folder = os.path.join(data, 'decoded')
  with pytest.raises(decoded.StaleError, match='48x64.*96x128'):
    decoded.DecodedReader(folder, 'nyu', 'val', (96, 128))
  with pytest.raises(FileNotFoundError, match='no decoded data'):
    decoded.DecodedReader(str(tmp_path / 'nothing'), 'nyu', 'val', SIZE)

  other = str(tmp_path / 'copy')
  shutil.copytree(folder, other)
  info_path = os.path.join(other, decoded.INFO)
  info = json.load(open(info_path))
  json.dump(dict(info, format_version=0), open(info_path, 'w'))
  with pytest.raises(decoded.StaleError, match=f'{other} was written in decoded format 0'):
    decoded.DecodedReader(other, 'nyu', 'val', SIZE)
  json.dump(info, open(info_path, 'w'))

  rgb = os.path.join(other, 'lilocbench_val', 'rgb.npy')
  with open(rgb, 'r+b') as f:
    f.truncate(os.path.getsize(rgb) - 100)
  with pytest.raises(decoded.StaleError, match='lilocbench_val/rgb.npy.*truncated'):
    decoded.DecodedReader(other, 'lilocbench', 'val', SIZE)

  os.remove(info_path)
  with pytest.raises(decoded.StaleError, match=f'{other} holds no decoded.json'):
    decoded.DecodedReader(other, 'nyu', 'val', SIZE)


def test_changed_sources_make_it_stale_absent_sources_do_not(data, tmp_path):
  root = str(tmp_path / 'data')
  shutil.copytree(data, root, symlinks=True)
  paths = paths_for(root)
  datasets.make_reader(paths, 'lilocbench', 'val')  # fresh: accepted
  manifest = os.path.join(root, 'lilocbench', 'manifest.jsonl')
  entry = json.loads(open(manifest).readline())
  depth = os.path.join(root, 'lilocbench', entry['sensor_depth'])
  arr = np.load(depth)
  np.save(depth, arr * 0.5)  # another depth map: the decoded training data are stale
  with pytest.raises(decoded.StaleError, match=f'{root}/decoded is stale: the lilocbench train'):
    datasets.make_reader(paths, 'lilocbench', 'train')
  # Only the decoded folder on a training host: used as written.
  shutil.rmtree(os.path.join(root, 'lilocbench'))
  assert len(datasets.make_reader(paths, 'lilocbench', 'train')) > 0


@pytest.mark.e2e
def test_cli_refuses_to_overwrite_and_verify_finds_damage(data, tmp_path):
  run = lambda *a: subprocess.run([sys.executable, '-m', 'data_pipelines.decoded', *a], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
  res = run('--root', data, '--input-size', '48x64')
  assert res.returncode == 2 and res.stderr.strip().count('\n') == 0
  assert 'decoded exists; pass --overwrite' in res.stderr
  res = run('--root', data, '--input-size', '16x64')
  assert res.returncode == 2 and 'at least 32x32' in res.stderr
  other = str(tmp_path / 'copy')
  shutil.copytree(os.path.join(data, 'decoded'), other)
  assert run('--verify', other).returncode == 0
  seg = os.path.join(other, 'nyu_val', 'seg.npy')
  with open(seg, 'r+b') as f:
    f.seek(-1, 2)
    f.write(b'\x07')
  res = run('--verify', other)
  assert res.returncode == 2 and 'nyu_val/seg.npy: contents changed' in res.stderr


def test_train_dry_run_names_a_stale_folder(data, tmp_path):
  res = subprocess.run(
      [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir', str(tmp_path / 'w'),
       f'--config.data.root={data}', '--config.data.format=decoded', '--config.data.input_size=(96,128)',
       '--dry_run'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 2, res.stderr
  lines = [l for l in res.stderr.splitlines() if l.startswith('error')]
  assert len(lines) == 1 and f'{data}/decoded was written for input size 48x64' in lines[0]
