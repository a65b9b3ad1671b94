"""Train/val transforms: determinism, geometry shared by every map, jitter, validation unaugmented."""

import colorsys

import numpy as np
import pytest

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
  assert el['image'].shape == (h, w, 3) and el['image'].dtype == np.float32
  np.testing.assert_array_equal(np.round(el['image'] * 255) / 255, el['image'])  # uint8 / 255
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
  a = transforms.train_transform(frame, transforms.frame_rng(0, 5, 3), size, True)
  b = transforms.train_transform(frame, transforms.frame_rng(0, 5, 3), size, True)
  c = transforms.train_transform(frame, transforms.frame_rng(0, 5, 4), size, True)
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


def test_nyu_crop_at_native_scale_then_flip():
  frame = make_frame()
  flips = set()
  for pos in range(12):
    el = transforms.train_transform(frame, transforms.frame_rng(1, 0, pos), (240, 320), False)
    img = np.round(el['image'] * 255).astype(np.uint8)
    found = [(flip, find_crop(frame['rgb'], img[:, ::-1] if flip else img)) for flip in (False, True)]
    flip, (y, x) = next((f, yx) for f, yx in found if yx is not None)
    flips.add(flip)
    want = frame['depth'][y:y + 240, x:x + 320]
    np.testing.assert_array_equal(el['depth'][:, ::-1] if flip else el['depth'], want)
  assert flips == {False, True}


def test_crop_window_rule():
  assert transforms.crop_window((480, 640), (240, 320)) == (240, 320)
  assert transforms.crop_window((480, 640), (96, 128)) == (240, 320)  # reference field of view
  assert transforms.crop_window((240, 320), (240, 320)) is None  # not larger: resize
  assert transforms.crop_window((480, 640), (480, 640)) is None


def test_lilocbench_full_frame_resize():
  frame = make_frame(domain=1)
  want = transforms.eval_transform(frame, (96, 128))
  for pos in range(6):
    el = transforms.train_transform(frame, transforms.frame_rng(0, 0, pos), (96, 128), False)
    flipped = not np.array_equal(el['depth'], want['depth'])
    for k in ('image', 'depth', 'seg', 'gt_seg', 'depth_valid', 'gt_depth'):
      np.testing.assert_array_equal(el[k][:, ::-1] if flipped else el[k], want[k])


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


def test_jitter_on_rgb_only_and_hue_is_an_hsv_shift():
  frame = make_frame()
  a = transforms.train_transform(frame, transforms.frame_rng(0, 1, 2), (240, 320), True)
  b = transforms.train_transform(frame, transforms.frame_rng(0, 1, 2), (240, 320), False)
  for k in ('depth', 'seg', 'gt_seg', 'depth_valid', 'gt_depth'):
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a['image'], b['image'])
  assert 0.0 <= a['image'].min() and a['image'].max() <= 1.0
  x = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
  hsv = transforms._rgb_to_hsv(x)  # pylint: disable=protected-access
  for y in range(4):
    np.testing.assert_allclose(hsv[:, y, 2], colorsys.rgb_to_hsv(*x[:, y, 2]), atol=1e-6)
  np.testing.assert_allclose(transforms._hsv_to_rgb(hsv), x, atol=1e-5)  # pylint: disable=protected-access


def test_reference_protocol_targets():
  frame = make_frame(domain=0)
  frame['sensor_depth'] = frame['depth'].copy()
  frame['sensor_depth'][:2, :2] = 0.0  # a hole, mixed in bilinearly
  el = transforms.eval_transform(frame, (240, 320), protocol='reference')
  d = frame['sensor_depth']
  np.testing.assert_allclose(el['gt_depth'], (d[0::2, 0::2] + d[1::2, 0::2] + d[0::2, 1::2] + d[1::2, 1::2]) / 4,
                             rtol=1e-6)  # exact 2x: bilinear (align_corners=False) = 2x2 mean
  assert el['gt_depth'][0, 0] == 0.0
  np.testing.assert_array_equal(el['gt_seg'], el['seg'])
  with pytest.raises(ValueError, match='protocol'):
    transforms.eval_transform(frame, (240, 320), protocol='theirs')
