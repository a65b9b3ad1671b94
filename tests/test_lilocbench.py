"""LILocBench extraction (data_pipelines/lilocbench.py) against the generator's ground truth."""

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from data_pipelines import lilocbench


@pytest.fixture(scope='module')
def raw(synthetic_tiny) -> pathlib.Path:
  return pathlib.Path(synthetic_tiny) / 'lilocbench_raw'  # generate(seed=0, size='tiny')


def _truth(raw: pathlib.Path) -> dict:
  return json.loads((raw / 'extraction_truth.json').read_text())


def test_matches_generator_truth(raw, tmp_path):
  truth = _truth(raw)
  s = lilocbench.extract(raw / 'dynamics_0', tmp_path / 'out')
  assert sorted(s['cameras']) == sorted(truth['cameras'])
  forms = set()
  for name, t in truth['cameras'].items():
    c = s['cameras'][name]
    for key in ('kept', 'dropped', 'intrinsics', 'intrinsics_form', 'color_dir', 'depth_dir',
                'num_color', 'num_depth'):
      assert c[key] == t[key], (name, key)
    assert c['num_skipped'] == len(t['skipped'])
    forms.add(c['intrinsics_form'])
  assert forms == {'K', 'camera_matrix', 'fx_fy_cx_cy', 'default'}
  kinds = {k for t in truth['cameras'].values() for k in t['burst_kinds']}
  assert kinds == {'normal', 'drop', 'edge', 'exact', 'lost'}

  lines = [json.loads(x) for x in (tmp_path / 'out' / 'manifest.jsonl').read_text().splitlines()]
  assert len(lines) == len(truth['frames']) == s['num_frames']
  seq = raw / 'dynamics_0'
  for line, f in zip(lines, truth['frames']):
    stem = f'{f["index"]:06d}'
    cam = truth['cameras'][f['camera']]
    assert line == {'stem': stem, 'rgb': f'rgb/{stem}.png', 'sensor_depth': f'depth/{stem}.npy',
                    'source': 'lilocbench', 'sequence': 'dynamics_0', 'camera': f['camera'],
                    'timestamp': line['timestamp'], 'timestamp_ns': lilocbench.parse_stamp(f['color']),
                    'intrinsics': cam['intrinsics']}
    assert abs(line['timestamp'] - float(f['color'])) < 1e-6
    src = seq / f['camera'] / cam['color_dir'] / f'{f["color"]}.png'
    assert (tmp_path / 'out' / line['rgb']).read_bytes() == src.read_bytes()
    depth = np.load(tmp_path / 'out' / line['sensor_depth'])
    mm = np.asarray(Image.open(seq / f['camera'] / cam['depth_dir'] / f'{f["depth"]}.png'))
    assert depth.dtype == np.float32
    np.testing.assert_array_equal(depth, mm.astype(np.float32) * np.float32(0.001))
  leftovers = [p.name for p in tmp_path.iterdir() if p.name != 'out']
  assert leftovers == []


def test_camera_filter_and_cli(raw, tmp_path):
  truth = _truth(raw)
  rc = lilocbench.main(['extract', '--input', str(raw / 'dynamics_0'), '--output', str(tmp_path / 'o'),
                        '--cameras', 'left,camera_front'])
  assert rc == 0
  lines = [json.loads(x) for x in (tmp_path / 'o' / 'manifest.jsonl').read_text().splitlines()]
  want = [(c, k[0]) for c in ('camera_front', 'camera_left') for k in truth['cameras'][c]['kept']]
  assert [(x['camera'], lilocbench.format_stamp(x['timestamp_ns'])) for x in lines] == want
  assert [x['stem'] for x in lines] == [f'{i:06d}' for i in range(len(want))]
  with pytest.raises(ValueError, match='camera_nope'):
    lilocbench.extract(raw / 'dynamics_0', tmp_path / 'p', cameras=['nope'])
  # A lower target rate keeps a subset.
  s = lilocbench.extract(raw / 'dynamics_0', tmp_path / 'q', target_fps=0.5)
  assert s['num_frames'] < len(truth['frames'])


def test_stamps_are_exact():
  assert lilocbench.parse_stamp('1733375656.696981258') == 1733375656696981258
  assert lilocbench.parse_stamp('1733375656.5') == 1733375656500000000
  assert lilocbench.parse_stamp('1733375656') == 1733375656000000000
  assert lilocbench.format_stamp(1733375656000000001) == '1733375656.000000001'
  with pytest.raises(ValueError, match='timestamp'):
    lilocbench.parse_stamp('frame_0001')
  t = 1733375656696981258
  m = lilocbench.match_camera(
    [t, t + 100_000_000, t + 599_999_999, t + 600_000_000],
    [t + 50_000_000, t + 149_999_999, t + 600_000_001], target_fps=2.0)
  assert m['dropped'] == [(t, t + 50_000_000)]  # exactly 50 ms: dropped
  assert m['kept'] == [(t + 100_000_000, t + 149_999_999), (t + 600_000_000, t + 600_000_001)]
  assert m['skipped'] == [(t + 599_999_999, t + 600_000_001)]  # 1 ns short of 0.5 s


def _camera(root: pathlib.Path, colour: str = 'rgb/images', depth: str = 'depth',
            depth_dtype=np.uint16) -> pathlib.Path:
  cam = root / 'seq' / 'camera_a'
  (cam / colour).mkdir(parents=True)
  (cam / depth).mkdir(parents=True)
  for k in range(3):
    t = lilocbench.format_stamp(1733375656_000_000_000 + k * 500_000_000)
    Image.fromarray(np.full((4, 6, 3), 40 * k, np.uint8)).save(cam / colour / f'{t}.png')
    Image.fromarray(np.full((4, 6), 1000 + k).astype(depth_dtype)).save(cam / depth / f'{t}.png')
  return cam


def test_small_layout_and_default_intrinsics(tmp_path, capsys):
  _camera(tmp_path)
  assert lilocbench.main(['extract', '--input', str(tmp_path / 'seq'), '--output', str(tmp_path / 'o')]) == 0
  assert 'D455 default' in capsys.readouterr().out
  line = json.loads((tmp_path / 'o' / 'manifest.jsonl').read_text().splitlines()[2])
  assert line['intrinsics'] == {'fx': 386.0, 'fy': 386.0, 'cx': 320.0, 'cy': 240.0}
  assert np.load(tmp_path / 'o' / 'depth' / '000002.npy')[0, 0] == np.float32(1002) * np.float32(0.001)


@pytest.mark.parametrize('case, message', [
  ('no_cameras', 'no camera_'),
  ('no_colour', 'color/images, color_images, color, rgb/images, rgb'),
  ('bad_yaml', 'intrinsics.yaml: unreadable YAML'),
  ('no_intrinsics', 'intrinsics.yaml: no intrinsics found'),
  ('depth_8bit', 'must be single-channel uint16'),
  ('bad_name', 'not a timestamp'),
  ('output_exists', 'output exists'),
])
def test_errors_name_the_culprit(tmp_path, case, message):
  seq = tmp_path / 'seq'
  if case == 'no_cameras':
    (seq / 'other').mkdir(parents=True)
  else:
    cam = _camera(tmp_path, depth_dtype=np.uint8 if case == 'depth_8bit' else np.uint16)
    if case == 'no_colour':
      shutil.rmtree(cam / 'rgb')
    elif case == 'bad_yaml':
      (cam / 'intrinsics.yaml').write_text('K: [1, 2\n  - : :')
    elif case == 'no_intrinsics':
      (cam / 'intrinsics.yaml').write_text('focal: 386\n')
    elif case == 'bad_name':
      Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(cam / 'rgb' / 'images' / 'frame_1.png')
    elif case == 'output_exists':
      (tmp_path / 'o').mkdir()
      (tmp_path / 'o' / 'x').write_text('')
  with pytest.raises((ValueError, OSError), match=message) as e:
    lilocbench.extract(seq, tmp_path / 'o')
  if case not in ('no_cameras', 'output_exists'):
    assert 'camera_a' in str(e.value)  # the message names the folder or file
  if case != 'output_exists':
    assert sorted(p.name for p in tmp_path.iterdir()) == ['seq']  # nothing half-written
