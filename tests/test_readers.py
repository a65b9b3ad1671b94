"""Readers of the data layouts (docs/data.md): label mappings, teacher maps, split rules, bad input."""

import json
import os
import random

import numpy as np
import pytest
import scipy.io
from PIL import Image

from data_pipelines import readers
from efficientvit_jax import domains
from efficientvit_jax import images


@pytest.fixture(scope='module')
def root(synthetic_tiny):
  return str(synthetic_tiny)


def paths(root):
  return {'nyu_root': os.path.join(root, 'nyu'),
          'nyu_teacher_manifest': os.path.join(root, 'nyu', 'teacher', 'manifest.jsonl'),
          'lilocbench_manifest': os.path.join(root, 'lilocbench', 'manifest.jsonl'),
          'corridor_manifest': os.path.join(root, 'corridor', 'manifest.jsonl')}


def write_nyu_cache(root, labels, h=48, w=64, ids=(0,)):
  """A NYU cache of len(ids) frames under root/nyu_cache."""
  cache = os.path.join(root, 'nyu_cache')
  for d in ('rgb', 'depth', 'seg'):
    os.makedirs(os.path.join(cache, d), exist_ok=True)
  rng = np.random.default_rng(0)
  for i in ids:
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(f'{cache}/rgb/{i:05d}.png')
    np.save(f'{cache}/depth/{i:05d}.npy', np.linspace(0, 12, h * w, dtype=np.float32).reshape(h, w))
    np.save(f'{cache}/seg/{i:05d}.npy', labels.astype(np.int32))
  return cache


def test_nyu40_to_6_table():
  lut = readers.NYU40_TO_6
  assert lut[0] == 255
  for ids, cls in (((2, 20), 0), ((1, 8, 9, 22), 1), ((31,), 2), ((19,), 4),
                   ((3, 4, 5, 6, 7, 10, 12, 14, 15, 17, 24, 32, 33, 34, 36, 39), 3),
                   ((11, 13, 16, 18, 21, 23, 25, 30, 35, 37, 38, 40), 5)):
    assert all(lut[i] == cls for i in ids), cls


def test_894_to_40_table_from_mat(tmp_path):
  table = (np.arange(894) % 40 + 1).astype(np.float64)[None]  # [1, 894] as in classMapping40.mat
  mat = str(tmp_path / 'classMapping40.mat')
  scipy.io.savemat(mat, {'mapClass': table})
  labels = np.array([[0, 1, 2, 40], [41, 100, 894, 31]])
  got = readers.NyuLabels(mat)(labels, 'x.npy')
  want40 = np.where(labels == 0, 0, (labels - 1) % 40 + 1)
  np.testing.assert_array_equal(got, readers.NYU40_TO_6[want40])
  # NYU40 frames (max <= 40) are mapped directly, table or not.
  np.testing.assert_array_equal(readers.NyuLabels(None)(labels[:1], 'x'), readers.NYU40_TO_6[labels[:1]])
  # A reader over 894-class labels without the table names the config key.
  write_nyu_cache(str(tmp_path / 'nyu'), np.full((48, 64), 300))
  reader = readers.NyuReader(str(tmp_path / 'nyu'), 'all')
  with pytest.raises(ValueError, match='data.nyu.class_mapping'):
    reader.read(0)
  frame = readers.NyuReader(str(tmp_path / 'nyu'), 'all', class_mapping=mat).read(0)
  assert np.all(frame['gt_seg'] == readers.NYU40_TO_6[(300 - 1) % 40 + 1])


def test_nyu_split_rules(tmp_path):
  cache = tmp_path / 'nyu_cache'
  (cache / 'rgb').mkdir(parents=True)
  for i in range(1449):
    (cache / 'rgb' / f'{i:05d}.png').touch()
  order = list(range(1449))
  random.Random(42).shuffle(order)
  train, val = readers.nyu_split_ids(str(cache), 'train'), readers.nyu_split_ids(str(cache), 'val')
  assert (len(train), len(val)) == (1159, 290)
  assert train == order[:1159] and val == order[1159:]
  (cache / 'train_indices.txt').write_text('5\n3\n9\n')
  (cache / 'val_indices.txt').write_text('1\n')
  assert readers.nyu_split_ids(str(cache), 'train') == [5, 3, 9]
  assert readers.nyu_split_ids(str(cache), 'all') == [5, 3, 9, 1]


def test_nyu_reader_on_synthetic(root):
  p = paths(root)
  train = readers.make_file_reader('nyu', 'train', p)
  val = readers.make_file_reader('nyu', 'val', p)
  ids = [train.frame_index(i) for i in range(len(train))] + [val.frame_index(i) for i in range(len(val))]
  assert len(set(ids)) == len(ids) == len(train) + len(val) > 0
  teacher, _ = readers.read_teacher_manifest(p['nyu_teacher_manifest'])
  no_teacher = readers.NyuReader(p['nyu_root'], 'train')
  for i in range(min(3, len(train))):
    f, g = train.read(i), no_teacher.read(i)
    h, w = f['rgb'].shape[:2]
    assert f['rgb'].dtype == np.uint8 and f['domain'] == 0
    for k, dt in (('depth', np.float32), ('depth_valid', bool), ('gt_depth', np.float32),
                  ('seg', np.int32), ('gt_seg', np.int32)):
      assert f[k].shape == (h, w) and f[k].dtype == dt, k
    np.testing.assert_array_equal(f['gt_seg'], g['gt_seg'])
    np.testing.assert_array_equal(f['gt_depth'], g['gt_depth'])
    assert np.all((f['gt_depth'] == 0) | ((f['gt_depth'] >= 0.1) & (f['gt_depth'] <= 10)))
    files = teacher.get(str(f['index']), {})
    # Targets: the teacher where it exists, else the human label / sensor depth.
    assert np.array_equal(f['seg'], g['seg']) != ('teacher_seg' in files)
    assert np.array_equal(f['depth'], g['depth']) != ('teacher_depth' in files)
    np.testing.assert_array_equal(g['seg'], g['gt_seg'])


def test_teacher_manifest_relative_paths_and_resize(tmp_path):
  labels = np.tile(np.array([2, 1, 31, 19]), (48, 16))
  write_nyu_cache(str(tmp_path / 'nyu'), labels, ids=(0, 1, 2))
  tdir = tmp_path / 'elsewhere' / 'teacher'
  (tdir / 'd').mkdir(parents=True)
  da3 = np.full((24, 32), 2.0, np.float32)
  da3[4:20, 4:28] = 0  # a large hole
  da3[0, 0] = 3.0
  np.save(tdir / 'd' / 'a.npy', da3)
  np.save(tdir / 'd' / 's.npy', np.tile(np.array([[0, 5], [3, 4]], np.uint8), (12, 16)))
  np.save(tdir / 'd' / 'bad.npy', np.ones((30, 30), np.float32))
  lines = [{'stem': '00000', 'da3_depth': 'd/a.npy', 'sam2_seg': 'd/s.npy', 'rgb': 'ignored', 'extra': 1},
           {'stem': '00001', 'da3_depth': None, 'sam2_seg': None},
           {'stem': '00002', 'da3_depth': 'd/bad.npy'}]
  (tdir / 'manifest.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
  reader = readers.NyuReader(str(tmp_path / 'nyu'), 'all', str(tdir / 'manifest.jsonl'))
  by_index = {reader.frame_index(i): i for i in range(len(reader))}
  f = reader.read(by_index[0])
  assert f['depth'].shape == (48, 64)
  hole = f['depth'][16:32, 16:48]
  assert np.all(hole == 0) and not f['depth_valid'][16:32, 16:48].any()
  ring = f['depth'][:4, 8:56]
  np.testing.assert_allclose(ring[ring > 0], 2.0)  # bilinear over valid pixels: no zeros mixed in
  assert f['depth'][0, 0] == 3.0
  np.testing.assert_array_equal(f['seg'], images.resize_nearest(np.load(tdir / 'd' / 's.npy'), (48, 64)))
  np.testing.assert_array_equal(f['gt_seg'], readers.NYU40_TO_6[labels])
  g = reader.read(by_index[1])  # null teacher entries: sensor depth, human labels
  np.testing.assert_array_equal(g['seg'], g['gt_seg'])
  np.testing.assert_array_equal(g['depth'], g['gt_depth'])
  with pytest.raises(readers.BadFrameError, match='bad.npy.*aspect'):
    reader.read(by_index[2])


def test_lilocbench_split_is_last_fifth_of_each_camera_span():
  entries = [{'sequence': 's', 'camera': c, 'timestamp': t}
             for c, ts in (('a', range(0, 100, 10)), ('b', [1000.0, 1001.0, 1009.0, 1010.0]))
             for t in ts]
  got = readers.lilocbench_split(entries)
  want = ['val' if (e['camera'] == 'a' and e['timestamp'] > 72) or
          (e['camera'] == 'b' and e['timestamp'] > 1008) else 'train' for e in entries]
  assert got == want
  assert readers.lilocbench_split(entries[::-1]) == want[::-1]  # order-free


def test_lilocbench_reader_on_synthetic(root):
  p = paths(root)
  lines = [json.loads(l) for l in open(p['lilocbench_manifest']) if l.strip()]
  train = readers.make_file_reader('lilocbench', 'train', p)
  val = readers.make_file_reader('lilocbench', 'val', p)
  assert len(train) + len(val) == len(lines) and len(val) > 0
  for cam in {l['camera'] for l in lines}:
    tt = [lines[train.frame_index(i)]['timestamp'] for i in range(len(train))
          if lines[train.frame_index(i)]['camera'] == cam]
    tv = [lines[val.frame_index(i)]['timestamp'] for i in range(len(val))
          if lines[val.frame_index(i)]['camera'] == cam]
    assert tt and (not tv or max(tt) < min(tv))
  f = val.read(0)
  line = lines[f['index']]
  assert f['domain'] == 1 and np.all(f['gt_seg'] == 255)
  assert np.all((f['gt_depth'] == 0) | ((f['gt_depth'] >= 0.1) & (f['gt_depth'] <= 15)))
  if line.get('da3_depth'):
    sensor = np.load(os.path.join(root, 'lilocbench', line['sensor_depth']))
    assert not np.array_equal(f['depth'], sensor)


def test_corridor_reader_window_and_confidence(root):
  p = paths(root)
  reader = readers.make_file_reader('corridor', 'all', p)
  lines = [json.loads(l) for l in open(p['corridor_manifest']) if l.strip()]
  assert len(reader) == len(lines)
  f = reader.read(0)
  base = os.path.join(root, 'corridor')
  depth = np.load(os.path.join(base, lines[0].get('depth') or lines[0]['sensor_depth']))
  usable = (depth >= 0.1) & (depth <= 5.0)
  if lines[0].get('confidence'):
    usable &= np.load(os.path.join(base, lines[0]['confidence'])) >= 0.5
  np.testing.assert_array_equal(f['gt_depth'], np.where(usable, depth, 0))
  assert f['domain'] == 2 and f['rgb'].shape[:2] == depth.shape
  with pytest.raises(ValueError, match='evaluation-only'):
    readers.make_file_reader('corridor', 'train', p)


def test_corridor_manifest_keys(root, tmp_path):
  """Our manifests carry the sensor depth under `sensor_depth` (the reference's key) and `depth`;
  a manifest with either one alone reads the same frames."""
  base = os.path.join(root, 'corridor')
  lines = [json.loads(l) for l in open(os.path.join(base, 'manifest.jsonl')) if l.strip()]
  assert lines and all(l['sensor_depth'] == l['depth'] for l in lines)
  frames = []
  for key in ('sensor_depth', 'depth'):
    alone = tmp_path / f'{key}.jsonl'
    alone.write_text(''.join(json.dumps({'rgb': os.path.join(base, l['rgb']), key: os.path.join(base, l[key])}) + '\n'
                             for l in lines))
    frames.append(readers.CorridorReader(str(alone)).read(0))
  for k in ('sensor_depth', 'gt_depth', 'rgb'):
    np.testing.assert_array_equal(frames[0][k], frames[1][k])
  assert frames[0]['sensor_depth'].any()


def test_bad_input_named(tmp_path):
  d = tmp_path / 'c'
  d.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(d / 'ok.png')
  data = (d / 'ok.png').read_bytes()
  (d / 'trunc.png').write_bytes(data[:len(data) // 2])
  (d / 'junk.png').write_bytes(b'not an image at all')
  np.save(d / 'depth.npy', np.ones((24, 32), np.float32))
  np.save(d / 'small.npy', np.ones((12, 32), np.float32))
  np.save(d / 'int.npy', np.ones((24, 32), np.uint16))
  (d / 'cut.npy').write_bytes((d / 'depth.npy').read_bytes()[:200])
  cases = [('trunc.png', 'depth.npy', 'trunc.png'), ('junk.png', 'depth.npy', 'junk.png'),
           ('missing.png', 'depth.npy', 'missing.png'), ('ok.png', 'small.npy', 'small.npy.*shape'),
           ('ok.png', 'int.npy', 'int.npy.*dtype'), ('ok.png', 'cut.npy', 'cut.npy')]
  lines = [{'rgb': r, 'depth': dp} for r, dp, _ in cases] + [{'rgb': 'ok.png', 'depth': 'depth.npy'}]
  (d / 'manifest.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
  reader = readers.CorridorReader(str(d / 'manifest.jsonl'))
  for i, (_, _, pattern) in enumerate(cases):
    with pytest.raises(readers.BadFrameError, match=pattern) as e:
      reader.read(i)
    assert f'manifest.jsonl line {i + 1}' in str(e.value)
  assert reader.read(len(cases))['rgb'].shape == (24, 32, 3)
  # A line without a required key: an error naming the line, or skipped and counted.
  (d / 'manifest.jsonl').write_text(json.dumps({'rgb': 'ok.png'}) + '\n' + json.dumps(lines[-1]) + '\n')
  with pytest.raises(readers.BadFrameError, match=r'manifest.jsonl line 1: missing .*depth'):
    readers.CorridorReader(str(d / 'manifest.jsonl'))
  skipping = readers.CorridorReader(str(d / 'manifest.jsonl'), skip_bad_frames=True)
  assert len(skipping) == 1 and len(skipping.skipped) == 1 and skipping.frame_index(0) == 1


def test_seg_labelled_sets_are_the_sets_whose_frames_carry_labels(root):
  """domains.has_seg_labels (what evaluation computes segmentation metrics for) against the frames."""
  p = paths(root)
  for set_name, split in (('nyu', 'val'), ('lilocbench', 'val'), ('corridor', 'all')):
    reader = readers.make_file_reader(set_name, split, p)
    labelled = any(np.any(reader.read(i)['gt_seg'] != 255) for i in range(len(reader)))
    assert domains.has_seg_labels(set_name) == labelled, set_name
  with pytest.raises(ValueError, match='unknown data set'):
    domains.has_seg_labels('kitti')
