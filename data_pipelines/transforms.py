"""Raw frame -> data element (INTERFACES): SPEC §3 train transforms and the validation resize.

Element (input size H x W): `image` float32 [H, W, 3] in [0, 1] (always a uint8 value / 255);
`depth` float32 [H, W] training target (0 = none); `depth_valid` bool [H, W]; `gt_depth` float32
[H, W] (0 = unusable); `seg` int32 [H, W] (255 = none); `gt_seg` int32 [H, W] (255 = none);
`domain` int32 []; `index` int32 [].

Train (SPEC §3.1/§3.2), in this order:
1. geometry: NYU (domain 0) takes a random crop at native scale when the frame is larger than the
   crop window in both dimensions, else it is resized; LILocBench (and corridor) frames are resized
   whole. The crop window is the input size scaled up to at least the reference's 240x320 crop
   (`REFERENCE_CROP`), keeping the input's aspect: at 240x320 it is the reference's 240x320 crop
   at native scale; at 96x128 it is a 240x320 window resized to 96x128, so a small input sees the
   reference's field of view rather than a 96x128 sliver of the frame.
2. horizontal flip with p 0.5, every map;
3. optional colour jitter on RGB only: torchvision `ColorJitter(0.2, 0.2, 0.2, 0.1)` in its float
   tensor form (brightness, contrast, saturation, hue as an HSV shift, in a random order per
   call), computed in float32 and rounded back to uint8.
Resizing: RGB bilinear (PIL, antialiased when shrinking, as torchvision on PIL images); depth,
masks and labels nearest neighbour (half-pixel centres). Validation: resize only, never augmented.

All randomness comes from `frame_rng(seed, step, position)`: the same pixels for a resumed run
and for any process count.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines import readers

REFERENCE_CROP = (240, 320)  # the reference crops 240x320 at native scale from 480x640 NYU frames
JITTER = {'brightness': 0.2, 'contrast': 0.2, 'saturation': 0.2, 'hue': 0.1}
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


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [h, w, 3] -> uint8 [size[0], size[1], 3], bilinear."""
  if rgb.shape[:2] == tuple(size):
    return rgb
  return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))


# The colour ops work on planar float32 [3, h, w] images: contiguous channel planes are several
# times faster in numpy than strided [..., c] slices.


def _grayscale(x: np.ndarray) -> np.ndarray:
  return 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]


def _rgb_to_hsv(x: np.ndarray) -> np.ndarray:
  """[3, h, w] RGB in [0, 1] -> [3, h, w] HSV in [0, 1] (torchvision's `_rgb2hsv`)."""
  r, g, b = x
  maxc = np.maximum(np.maximum(r, g), b)
  cr = maxc - np.minimum(np.minimum(r, g), b)
  eqc = cr == 0
  s = cr / np.where(eqc, 1.0, maxc)
  div = np.where(eqc, 1.0, cr)
  rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
  h = np.where(maxc == r, bc - gc, np.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  return np.stack([(h / 6.0 + 1.0) % 1.0, s, maxc])


def _hsv_to_rgb(x: np.ndarray) -> np.ndarray:
  """[3, h, w] HSV -> [3, h, w] RGB; the closed form of torchvision's `_hsv2rgb` sector table."""
  h6, vs = x[0] * 6.0, x[2] * x[1]
  return np.stack([x[2] - vs * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
                   for k in ((n + h6) % 6.0 for n in (5.0, 3.0, 1.0))])


def color_jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """uint8 [h, w, 3] -> uint8 [h, w, 3]: torchvision ColorJitter(0.2, 0.2, 0.2, 0.1), float form."""
  order = rng.permutation(4)
  b, c, s = (rng.uniform(1 - JITTER[k], 1 + JITTER[k]) for k in ('brightness', 'contrast', 'saturation'))
  hue = rng.uniform(-JITTER['hue'], JITTER['hue'])
  x = rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
  for op in order:
    if op == 0:
      x = np.clip(x * b, 0.0, 1.0)
    elif op == 1:
      x = np.clip(c * x + (1 - c) * _grayscale(x).mean(), 0.0, 1.0)
    elif op == 2:
      x = np.clip(s * x + (1 - s) * _grayscale(x), 0.0, 1.0)
    else:
      hsv = _rgb_to_hsv(x)
      hsv[0] = (hsv[0] + hue) % 1.0
      x = _hsv_to_rgb(hsv)
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _element(rgb: np.ndarray, maps: Mapping[str, np.ndarray], frame: Mapping[str, Any]
             ) -> dict[str, np.ndarray]:
  return {
      'image': rgb.astype(np.float32) / np.float32(255.0),
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

  protocol 'reference' (the reference's NYU validation, SPEC §6): `gt_depth` is the stored sensor
  depth resized bilinearly (holes mixed in, no window; the metric masks gt > 0) and `gt_seg` is
  the training label (the SAM2 teacher's where present).
  """
  size = tuple(input_size)
  maps = {k: readers.resize_nearest(frame[k], size) for k in MAPS}
  if protocol == 'reference':
    maps['gt_depth'] = readers.resize_bilinear(frame['sensor_depth'], size)
    maps['gt_seg'] = maps['seg']
  elif protocol != 'ours':
    raise ValueError(f'protocol must be ours or reference, got {protocol!r}')
  return _element(resize_rgb(frame['rgb'], size), maps, frame)


def train_transform(frame: Mapping[str, Any], rng: np.random.Generator,
                    input_size: tuple[int, int], jitter: bool) -> dict[str, np.ndarray]:
  """Raw frame -> augmented element (module docstring); `jitter` = data.color_jitter[domain]."""
  size = tuple(input_size)
  rgb = frame['rgb']
  maps = {k: frame[k] for k in MAPS}
  window = crop_window(rgb.shape[:2], size) if frame['domain'] == 0 else None
  if window is not None:
    y = int(rng.integers(0, rgb.shape[0] - window[0] + 1))
    x = int(rng.integers(0, rgb.shape[1] - window[1] + 1))
    crop = (slice(y, y + window[0]), slice(x, x + window[1]))
    rgb = rgb[crop]
    maps = {k: v[crop] for k, v in maps.items()}
  rgb = resize_rgb(np.ascontiguousarray(rgb), size)
  maps = {k: readers.resize_nearest(v, size) for k, v in maps.items()}
  if rng.random() < 0.5:
    rgb = rgb[:, ::-1]
    maps = {k: v[:, ::-1] for k, v in maps.items()}
  if jitter:
    rgb = color_jitter(np.ascontiguousarray(rgb), rng)
  return _element(rgb, maps, frame)
