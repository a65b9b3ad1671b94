"""Raw frame -> data element on the host: the training geometry and the validation resize.

Element (input size H x W): `image` uint8 [H, W, 3]; `depth` float32 [H, W] training target
(0 = none); `depth_valid` bool [H, W]; `gt_depth` float32 [H, W] (0 = unusable); `seg` int32 [H, W]
(255 = none); `gt_seg` int32 [H, W] (255 = none); `domain` int32 []; `index` int32 []. The
image stays uint8 until it is on the device (a quarter of the bytes of float32 to copy and send).

Train: the geometry only. NYU (domain 0) takes a random crop at native scale when the frame is
larger than the crop window in both dimensions, else it is resized; LILocBench (and corridor)
frames are resized whole. The crop window is the input size scaled up to at least the reference's
240x320 crop (`REFERENCE_CROP`), keeping the input's aspect: at 240x320 it is the reference's
240x320 crop at native scale; at 96x128 it is a 240x320 window resized to 96x128, so a small input
sees the reference's field of view rather than a 96x128 sliver of the frame. The per-pixel part of
the augmentation (flip of every map, colour jitter, float conversion) runs inside the jitted train
step: `efficientvit_jax.augment`.
Resizing: RGB bilinear (PIL, antialiased when shrinking, as torchvision on PIL images); depth,
masks and labels nearest neighbour (half-pixel centres). Validation: resize only, never augmented.

The crop position comes from `frame_rng(seed, step, position)`: the same pixels for a resumed run
and for any process count.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

from efficientvit_jax import images

REFERENCE_CROP = (240, 320)  # the reference crops 240x320 at native scale from 480x640 NYU frames
MAPS = ('depth', 'depth_valid', 'gt_depth', 'seg', 'gt_seg')  # resized by nearest neighbour


def frame_rng(seed: int, step: int, position: int) -> np.random.Generator:
  """The generator of one training sample: a function of (seed, step, position in global batch).

  The trailing 1 keeps these streams apart from `mixing`'s permutation streams (trailing 0)."""
  return np.random.default_rng([seed, step, position, 1])


def crop_window(frame_hw: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int] | None:
  """(crop h, crop w) at native scale for a NYU frame, or None when the frame is to be resized."""
  h_in, w_in = input_size
  scale = max(1.0, REFERENCE_CROP[0] / h_in, REFERENCE_CROP[1] / w_in)
  ch, cw = int(round(h_in * scale)), int(round(w_in * scale))
  return (ch, cw) if frame_hw[0] > ch and frame_hw[1] > cw else None


def _element(rgb: np.ndarray, maps: Mapping[str, np.ndarray], frame: Mapping[str, Any]
             ) -> dict[str, np.ndarray]:
  return {
      'image': np.ascontiguousarray(rgb, dtype=np.uint8),
      'depth': maps['depth'].astype(np.float32),
      'depth_valid': maps['depth_valid'].astype(bool),
      'gt_depth': maps['gt_depth'].astype(np.float32),
      'seg': maps['seg'].astype(np.int32),
      'gt_seg': maps['gt_seg'].astype(np.int32),
      'domain': np.int32(frame['domain']),
      'index': np.int32(frame['index']),
  }


def eval_transform(frame: Mapping[str, Any], input_size: tuple[int, int],
                   protocol: str = 'ours') -> dict[str, np.ndarray]:
  """Raw frame -> element by resizing only (RGB bilinear, maps nearest).

  Protocols (docs/evaluation.md#protocols): 'reference', the reference's NYU validation:
  `gt_depth` is the stored sensor depth resized as its loader does (PIL bilinear, antialiased,
  holes mixed in, no window; the metric masks gt > 0) and `gt_seg` is the training label (the SAM2
  teacher's where present). 'reference-frames', its `run_student_evaluation.py`: the RGB resized by
  OpenCV's bilinear and `gt_depth` the stored sensor depth by OpenCV's nearest (no window; the
  metric applies its own).
  """
  size = tuple(input_size)
  maps = {k: images.resize_nearest(frame[k], size) for k in MAPS}
  resize_rgb = images.resize_rgb
  if protocol == 'reference':
    maps['gt_depth'] = images.resize_bilinear_pil(frame['sensor_depth'], size)
    maps['gt_seg'] = maps['seg']
  elif protocol == 'reference-frames':
    maps['gt_depth'] = images.resize_nearest_opencv(frame['sensor_depth'], size)
    resize_rgb = images.resize_rgb_opencv
  elif protocol != 'ours':
    raise ValueError(f'protocol must be ours, reference or reference-frames, got {protocol!r}')
  return _element(resize_rgb(frame['rgb'], size), maps, frame)


def train_transform(frame: Mapping[str, Any], rng: np.random.Generator,
                    input_size: tuple[int, int], *, nyu_crop: bool = True) -> dict[str, np.ndarray]:
  """Raw frame -> training element before the per-pixel augmentation (module docstring): the
  geometry only (NYU crop window at native scale, or resize). Flip and colour jitter follow on the
  device (`efficientvit_jax.augment`). `nyu_crop=False` (`data.nyu_crop`) resizes NYU frames whole
  too, so training sees the field of view and object scale that validation sees."""
  size = tuple(input_size)
  rgb = frame['rgb']
  maps = {k: frame[k] for k in MAPS}
  window = crop_window(rgb.shape[:2], size) if frame['domain'] == 0 and nyu_crop else None
  if window is not None:
    y = int(rng.integers(0, rgb.shape[0] - window[0] + 1))
    x = int(rng.integers(0, rgb.shape[1] - window[1] + 1))
    crop = (slice(y, y + window[0]), slice(x, x + window[1]))
    rgb = rgb[crop]
    maps = {k: v[crop] for k, v in maps.items()}
  rgb = images.resize_rgb(np.ascontiguousarray(rgb), size)
  maps = {k: images.resize_nearest(v, size) for k, v in maps.items()}
  return _element(rgb, maps, frame)
