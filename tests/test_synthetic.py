"""The stated properties of the synthetic data (data_pipelines/synthetic/), on the tiny size."""

import hashlib
import json
import pathlib
import random

import numpy as np
import pytest
from PIL import Image

from data_pipelines import synthetic

# NYU40 -> 6 classes (docs/data.md), written out independently of the generator.
_SIX = np.full(41, 5)
_SIX[0] = 255
for _ids, _c in (((2, 20), 0), ((1, 8, 9, 22), 1), ((31,), 2),
                 ((3, 4, 5, 6, 7, 10, 12, 14, 15, 17, 24, 32, 33, 34, 36, 39), 3), ((19,), 4)):
  _SIX[list(_ids)] = _c


@pytest.fixture(scope='module')
def root(synthetic_tiny) -> pathlib.Path:
  return pathlib.Path(synthetic_tiny)  # generate(seed=0, size='tiny'), shared by the session


def _files(root: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*')) if p.is_file() and p.name != '.complete'}


def _jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.e2e
def test_deterministic_per_seed(root, tmp_path):
  again = tmp_path / 'again'
  synthetic.generate(again, seed=0, size='tiny', workers=2)
  assert _files(root) == _files(again)
  with pytest.raises(FileExistsError):
    synthetic.generate(again, seed=0, size='tiny')
  other = synthetic.plan(1, 'tiny')['cameras']['camera_front']
  assert [b.time_ns for b in other] != [b.time_ns for b in synthetic.plan(0, 'tiny')['cameras']['camera_front']]


def test_layout_and_info(root):
  info = json.loads((root / 'synthetic_info.json').read_text())
  n = info['counts']['nyu']
  cache = root / 'nyu' / 'nyu_cache'
  for sub, ext in (('rgb', 'png'), ('depth', 'npy'), ('seg', 'npy')):
    assert sorted(p.name for p in (cache / sub).iterdir()) == [f'{i:05d}.{ext}' for i in range(n)]
  order = list(range(n))
  random.Random(42).shuffle(order)
  k = int(0.8 * n)
  assert [int(x) for x in (cache / 'train_indices.txt').read_text().split()] == order[:k]
  assert [int(x) for x in (cache / 'val_indices.txt').read_text().split()] == order[k:]
  assert (cache / '.download_complete').is_file()  # the reference's loader uses a cache only with it
  assert info['intrinsics']['nyu'] == {'fx': 518.86, 'fy': 519.47, 'cx': 325.58, 'cy': 253.74}
  for name in ('lilocbench_raw/extraction_truth.json', 'lilocbench/manifest.jsonl', 'corridor/manifest.jsonl',
               'nyu/teacher/manifest.jsonl'):
    assert (root / name).is_file()


def test_nyu_frames(root):
  cache = root / 'nyu' / 'nyu_cache'
  valid = in_range = 0
  classes = set()
  zeros = False
  for p in sorted((cache / 'rgb').iterdir()):
    with Image.open(p) as im:
      assert (im.mode, im.size) == ('RGB', (640, 480))
    depth = np.load(cache / 'depth' / f'{p.stem}.npy')
    seg = np.load(cache / 'seg' / f'{p.stem}.npy')
    assert depth.dtype == np.float32 and depth.shape == (480, 640)
    assert seg.dtype == np.int32 and seg.shape == (480, 640)
    assert seg.min() >= 0 and seg.max() <= 40  # raw NYU40 ids
    zeros |= bool((seg == 0).any())
    v = depth > 0
    assert 0.75 < v.mean() < 0.99  # Kinect-like holes
    valid += v.sum()
    in_range += ((depth >= 1) & (depth <= 4)).sum()
    classes |= set(np.unique(_SIX[seg]).tolist())
  assert in_range / valid >= 0.8
  assert classes >= {0, 1, 2, 3, 4, 5}
  assert zeros


def test_nyu_teacher(root):
  info = json.loads((root / 'synthetic_info.json').read_text())
  teacher = root / 'nyu' / 'teacher'
  lines = _jsonl(teacher / 'manifest.jsonl')
  assert [x['stem'] for x in lines] == [f'{i:05d}' for i in range(info['counts']['nyu'])]
  assert any(x['sam2_seg'] is None for x in lines)
  log_ratio_err, noise = [], []
  for x in lines:
    gt = np.load(root / 'nyu' / 'nyu_cache' / 'depth' / f'{x["stem"]}.npy')
    human = _SIX[np.load(root / 'nyu' / 'nyu_cache' / 'seg' / f'{x["stem"]}.npy')]
    if x['da3_depth']:
      assert x['da3_depth'] == f'da3_depth/{x["stem"]}.npy'
      da3 = np.load(teacher / x['da3_depth'])
      assert da3.dtype == np.float32 and da3.shape == (378, 504)  # 4:3, not the frame's resolution
      up = np.asarray(Image.fromarray(da3).resize((640, 480), Image.NEAREST))
      m = gt > 0
      r = up[m] / gt[m]
      med = np.median(r)
      log_ratio_err.append(np.log(med / info['nyu_da3_scales'][x['stem']]))
      noise.append(1.4826 * np.median(np.abs(r / med - 1)))
    if x['sam2_seg']:
      assert x['sam2_seg'] == f'sam2_seg/{x["stem"]}_sam2_seg.npy'
      sam = np.load(teacher / x['sam2_seg'])
      assert sam.dtype == np.uint8 and sam.shape == (480, 640) and sam.max() <= 5
      changed = (sam != human) & (human != 255)
      assert 0 < changed.mean() < 0.05
      # Every changed pixel has another (or unlabelled) human label within 3 px.
      pad = np.pad(human, 3, mode='edge')
      near_boundary = np.zeros_like(changed)
      for dy in range(7):
        for dx in range(7):
          near_boundary |= pad[dy:dy + 480, dx:dx + 640] != human
      assert not (changed & ~near_boundary).any()
  # Per-frame scale as recorded (within the Kinect noise), pixel noise ~2 %.
  assert np.max(np.abs(log_ratio_err)) < 0.02
  assert 0.012 < np.median(noise) < 0.035


def test_lilocbench_set(root):
  lines = _jsonl(root / 'lilocbench' / 'manifest.jsonl')
  truth = json.loads((root / 'lilocbench_raw' / 'extraction_truth.json').read_text())
  assert len(lines) == len(truth['frames'])
  far, spans = [], []
  for x in lines:
    assert x['source'] == 'lilocbench' and x['sequence'] == 'dynamics_0'
    assert abs(x['intrinsics']['fx'] - 386) < 2 and abs(x['intrinsics']['cx'] - 320) < 3
    depth = np.load(root / 'lilocbench' / x['sensor_depth'])
    da3 = np.load(root / 'lilocbench' / x['da3_depth'])
    seg = np.load(root / 'lilocbench' / x['seg'])
    assert depth.shape == seg.shape == (480, 640) and da3.shape == (378, 504) and seg.dtype == np.uint8
    v = depth[depth > 0]
    assert v.max() <= 15.0 + 1e-5  # D455 range; mm * 0.001 in float32
    far.append(np.percentile(v, 99))
    if x['camera'] in ('camera_front', 'camera_back'):
      wall = (seg == 1) & (depth > 0)
      spans.append(np.percentile(depth[wall], 99) - np.percentile(depth[wall], 1))
  assert max(far) > 10.0  # corridors reach far
  assert min(spans) > 5.0  # long walls along the view


def test_corridor_set(root):
  lines = _jsonl(root / 'corridor' / 'manifest.jsonl')
  assert lines
  for x in lines:
    with Image.open(root / 'corridor' / x['rgb']) as im:
      assert im.size == (1280, 720)
    assert x['sensor_depth'] == x['depth']  # the reference's key and ours
    depth = np.load(root / 'corridor' / x['depth'])
    conf = np.load(root / 'corridor' / x['confidence'])
    assert depth.shape == conf.shape == (720, 1280)
    assert depth.dtype == conf.dtype == np.float32
    assert abs((depth == 0).mean() - 0.78) < 0.02
    assert 0 <= conf.min() and conf.max() <= 1
    assert (conf[depth == 0] < 0.5).mean() > 0.99
    assert ((conf < 0.5) & (depth > 0)).any()  # the confidence rule removes some valid pixels
    assert np.load(root / 'corridor' / x['da3_depth']).shape == (378, 672)  # 16:9
    assert abs(x['intrinsics']['fx'] - 605) < 5


def test_default_ratio_nyu_to_lilocbench():
  c = synthetic.plan(0, 'default')['counts']
  assert 0.2 <= c['nyu_train'] / c['lilocbench_train'] <= 0.3


def test_demo_size_is_default_with_more_rooms():
  """`make demo`'s data: 160 NYU-like training rooms and 40 validation rooms, the rest as default."""
  demo, default = synthetic.plan(0, 'demo')['counts'], synthetic.plan(0, 'default')['counts']
  assert (demo['nyu_train'], demo['nyu_val']) == (160, 40)
  assert {k: v for k, v in demo.items() if not k.startswith('nyu')} == \
      {k: v for k, v in default.items() if not k.startswith('nyu')}


def test_cli_refuses_a_previous_generation(root):
  import subprocess
  import sys

  from conftest import ROOT

  proc = subprocess.run([sys.executable, '-m', 'data_pipelines.synthetic', '--out', str(root), '--size', 'tiny'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith(f'error: {root}: holds a previous generation') and proc.stderr.count('\n') == 1
