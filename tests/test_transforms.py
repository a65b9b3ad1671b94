"""Host transforms: determinism, one geometry for every map, validation unaugmented (the flip and
the colour jitter run on the device: tests/test_augment.py)."""

import numpy as np
import pytest
from conftest import DATA

from data_pipelines import transforms


def make_frame(h=480, w=640, domain=0, seed=0):
  """A raw frame whose maps all encode the pixel position, so misalignment is visible."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  code = (yy // 8) * 1000 + xx // 8  # 8x8 blocks, unique ids
  rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  depth = code.astype(np.float32) * np.float32(0.001) + np.float32(0.2)
  return {'rgb': rgb, 'depth': depth, 'depth_valid': code % 3 > 0, 'gt_depth': depth.copy(),
          'seg': (code % 6).astype(np.int32), 'gt_seg': (code % 7).astype(np.int32),
          'domain': domain, 'index': 7}


def check_element(el, size):
  h, w = size
  assert el['image'].shape == (h, w, 3) and el['image'].dtype == np.uint8
  for k, dt in (('depth', np.float32), ('depth_valid', bool), ('gt_depth', np.float32),
                ('seg', np.int32), ('gt_seg', np.int32)):
    assert el[k].shape == (h, w) and el[k].dtype == dt, k
  assert el['domain'].dtype == np.int32 and el['index'] == 7


def maps_consistent(el):
  """depth, seg and gt_seg all come from the same source pixel (one geometry for every map)."""
  code = np.round((el['depth'] - 0.2) * 1000).astype(int)  # the source block of every pixel
  np.testing.assert_array_equal(el['seg'], code % 6)
  np.testing.assert_array_equal(el['gt_seg'], code % 7)
  np.testing.assert_array_equal(el['depth_valid'], code % 3 > 0)
  np.testing.assert_array_equal(el['gt_depth'], el['depth'])


@pytest.mark.parametrize('size', [(240, 320), (96, 128)])
def test_train_deterministic_and_maps_aligned(size):
  frame = make_frame()
  a = transforms.train_transform(frame, transforms.frame_rng(0, 5, 3), size)
  b = transforms.train_transform(frame, transforms.frame_rng(0, 5, 3), size)
  c = transforms.train_transform(frame, transforms.frame_rng(0, 5, 4), size)
  check_element(a, size)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a['image'], c['image'])
  maps_consistent(a)
  maps_consistent(c)


def find_crop(frame_rgb, img):
  """(y, x) with frame_rgb[y:y + h, x:x + w] == img, else None."""
  h, w = img.shape[:2]
  for y, x in np.argwhere(np.all(frame_rgb == img[0, 0], axis=-1)):
    if y + h <= frame_rgb.shape[0] and x + w <= frame_rgb.shape[1] and np.array_equal(
        frame_rgb[y:y + h, x:x + w], img):
      return y, x
  return None


def test_nyu_crop_at_native_scale():
  frame = make_frame()
  corners = set()
  for pos in range(12):
    el = transforms.train_transform(frame, transforms.frame_rng(1, 0, pos), (240, 320))
    y, x = find_crop(frame['rgb'], el['image'])
    corners.add((y, x))
    np.testing.assert_array_equal(el['depth'], frame['depth'][y:y + 240, x:x + 320])
  assert len(corners) > 6  # the window moves


def test_crop_window_rule():
  assert transforms.crop_window((480, 640), (240, 320)) == (240, 320)
  assert transforms.crop_window((480, 640), (96, 128)) == (240, 320)  # reference field of view
  assert transforms.crop_window((240, 320), (240, 320)) is None  # not larger: resize
  assert transforms.crop_window((480, 640), (480, 640)) is None


def test_nyu_crop_off_resizes_whole_frame():
  frame = make_frame()
  want = transforms.eval_transform(frame, (96, 128))
  el = transforms.train_transform(frame, transforms.frame_rng(0, 0, 0), (96, 128), nyu_crop=False)
  for k in want:
    np.testing.assert_array_equal(el[k], want[k])
  cropped = transforms.train_transform(frame, transforms.frame_rng(0, 0, 0), (96, 128))
  assert not np.array_equal(cropped['image'], want['image'])


def test_lilocbench_full_frame_resize():
  frame = make_frame(domain=1)
  want = transforms.eval_transform(frame, (96, 128))
  for pos in range(3):
    el = transforms.train_transform(frame, transforms.frame_rng(0, 0, pos), (96, 128))
    for k in want:
      np.testing.assert_array_equal(el[k], want[k])


def test_validation_resize_only():
  frame = make_frame(h=720, w=1280, domain=2)
  a = transforms.eval_transform(frame, (240, 320))
  b = transforms.eval_transform(frame, (240, 320))
  check_element(a, (240, 320))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  ys, xs = ((np.arange(240) + 0.5) * 3).astype(int), ((np.arange(320) + 0.5) * 4).astype(int)
  np.testing.assert_array_equal(a['seg'], frame['seg'][ys][:, xs])  # nearest neighbour
  np.testing.assert_array_equal(a['gt_depth'], frame['gt_depth'][ys][:, xs])


def triangle_resize(a, size):
  """PIL's bilinear resize of a float image, written out from its definition: per axis, output i
  takes the inputs within `s = max(n_in / n_out, 1)` of its centre c = (i + 0.5) n_in / n_out, with
  weights 1 - |x + 0.5 - c| / s normalised to sum 1 (so shrinking averages: antialiasing);
  columns first, float32 in between."""
  def weights(n_in, n_out):
    scale = n_in / n_out
    s = max(scale, 1.0)
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
      c = (i + 0.5) * scale
      lo, hi = max(int(c - s + 0.5), 0), min(int(c + s + 0.5), n_in)
      x = np.arange(lo, hi)
      k = np.maximum(0.0, 1.0 - np.abs((x + 0.5 - c) / s))
      w[i, lo:hi] = k / k.sum()
    return w
  rows = (a.astype(np.float64) @ weights(a.shape[1], size[1]).T).astype(np.float32)
  return (weights(a.shape[0], size[0]) @ rows.astype(np.float64)).astype(np.float32)


def test_reference_protocol_targets():
  frame = make_frame(domain=0)
  frame['sensor_depth'] = frame['depth'].copy()
  frame['sensor_depth'][:2, :2] = 0.0  # a hole, mixed in
  for size in ((240, 320), (96, 128)):
    el = transforms.eval_transform(frame, size, protocol='reference')
    expected = triangle_resize(frame['sensor_depth'], size)
    np.testing.assert_allclose(el['gt_depth'], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(el['gt_seg'], el['seg'])
  # Antialiased: at an exact 2x shrink 4 taps (1, 3, 3, 1) / 8 per axis, not the 2x2 mean of 2-tap bilinear.
  d = frame['sensor_depth'].astype(np.float64)
  two_tap = (d[2:6:2, 2:6:2] + d[3:7:2, 2:6:2] + d[2:6:2, 3:7:2] + d[3:7:2, 3:7:2]) / 4
  assert not np.allclose(el['gt_depth'][1:3, 1:3], two_tap)
  assert 0.0 < el['gt_depth'][0, 0] < d[2, 2]  # the hole pulls its neighbourhood down
  with pytest.raises(ValueError, match='protocol'):
    transforms.eval_transform(frame, (240, 320), protocol='theirs')


def test_reference_frames_protocol_resizes_as_opencv():
  """The RGB by OpenCV's bilinear and the sensor depth by its nearest neighbour, bit for bit:
  tests/data/opencv_resize.npz holds `cv2.resize` outputs (opencv-python-headless 4.10.0.84;
  5.1.0.95 gives the same) for shrinking by 3x4, 2x, other ratios, and enlarging."""
  with np.load(DATA / 'opencv_resize.npz') as z:
    fixture = {k: z[k] for k in z.files}
  for i, (_, _, h, w) in enumerate(fixture['cases']):
    frame = make_frame(h=fixture[f'rgb_{i}'].shape[0], w=fixture[f'rgb_{i}'].shape[1], domain=2)
    frame['rgb'], frame['sensor_depth'] = fixture[f'rgb_{i}'], fixture[f'depth_{i}']
    el = transforms.eval_transform(frame, (int(h), int(w)), protocol='reference-frames')
    np.testing.assert_array_equal(el['image'], fixture[f'rgb_{i}_linear'], err_msg=str(i))
    np.testing.assert_array_equal(el['gt_depth'], fixture[f'depth_{i}_nearest'], err_msg=str(i))
