"""Images on the host: the `--size HxW` argument of the commands (and its limits) and every host
resize: the RGB resize that training, evaluation and prediction share (so a picture is resized the
same way everywhere), OpenCV's bilinear and nearest resizes, which the reference's per-frame
evaluation uses (`--protocol reference-frames`), and the resizes of depth and label maps."""

import argparse

import numpy as np
from PIL import Image

MIN_SIDE = 32  # the network downsamples by 32
MAX_SIDE = 4096  # beyond any camera this serves; a mistyped size is refused before allocating
# Pixels in one batch of a command's forward pass (batch x H x W): the activations take about 160
# bytes a pixel in float32, so this is ~5 GB (two 4096x4096 frames, 436 at 240x320).
MAX_BATCH_PIXELS = 2**25
SIZE_HELP = f'HxW, each side {MIN_SIDE} to {MAX_SIDE}'


def parse_size(text: str) -> tuple[int, int]:
  """'240x320' -> (240, 320); an argparse `type` (ArgumentTypeError: one line, exit code 2)."""
  try:
    h, w = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise argparse.ArgumentTypeError(f'must be HxW, e.g. 240x320, got {text!r}') from None
  if h < MIN_SIDE or w < MIN_SIDE:
    raise argparse.ArgumentTypeError(f'the network needs at least {MIN_SIDE}x{MIN_SIDE}, got {text}')
  if h > MAX_SIDE or w > MAX_SIDE:
    raise argparse.ArgumentTypeError(f'each side must be at most {MAX_SIDE}, got {text}')
  return h, w


def check_batch_pixels(size: tuple[int, int], batch_size: int) -> None:
  """ValueError naming --batch-size and --size when one batch would exceed `MAX_BATCH_PIXELS`."""
  if batch_size * size[0] * size[1] > MAX_BATCH_PIXELS:
    raise ValueError(f'a batch of {batch_size} images at --size {size[0]}x{size[1]} is '
                     f'{batch_size * size[0] * size[1]:,} pixels, over the limit of {MAX_BATCH_PIXELS:,} (about 5 GB '
                     f'of activations): use --batch-size {max(1, MAX_BATCH_PIXELS // (size[0] * size[1]))} or less')


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [h, w, 3] -> uint8 [size[0], size[1], 3], bilinear (Pillow); unchanged when already that size."""
  if rgb.shape[:2] == tuple(size):
    return rgb
  return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR), np.uint8)


_CV_COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE: 11-bit fixed-point weights


def _opencv_linear_taps(n_in: int, n_out: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """OpenCV's bilinear taps along one axis: (first source index [n_out], its weight, the next
  index's weight), the weights in 1/2048. Positions (i + 0.5) * scale - 0.5 in float32 as it computes
  them; `clamp` (columns): outside the image both taps become the edge pixel's, at weight 2048."""
  scale = 1.0 / (n_out / n_in)
  f = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
  s = np.floor(f).astype(np.int64)
  f = f - s.astype(np.float32)
  if clamp:
    edge = (s < 0) | (s >= n_in - 1)
    f = np.where(edge, np.float32(0), f)
    s = np.clip(s, 0, n_in - 1)
  w0 = np.rint((np.float32(1) - f) * np.float32(_CV_COEF_SCALE)).astype(np.int64)
  w1 = np.rint(f * np.float32(_CV_COEF_SCALE)).astype(np.int64)
  return s, w0, w1


def resize_rgb_opencv(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [h, w, C] -> uint8 [size[0], size[1], C] bit for bit as OpenCV's `cv2.resize(rgb, (W, H),
  interpolation=cv2.INTER_LINEAR)` (4.x and 5.x): two taps per axis, no antialiasing, 11-bit weights,
  its rounding. The RGB resize of the reference's `run_student_evaluation.py`."""
  if rgb.shape[:2] == tuple(size):
    return rgb
  src = rgb.astype(np.int64)
  cols, a0, a1 = _opencv_linear_taps(src.shape[1], size[1], clamp=True)
  right = np.minimum(cols + 1, src.shape[1] - 1)
  rows = src[:, cols] * a0[:, None] + src[:, right] * a1[:, None]  # [h, W, C], exact integers
  top, b0, b1 = _opencv_linear_taps(src.shape[0], size[0], clamp=False)
  r0, r1 = np.clip(top, 0, src.shape[0] - 1), np.clip(top + 1, 0, src.shape[0] - 1)
  b0, b1 = b0[:, None, None], b1[:, None, None]
  # OpenCV's vertical pass (SIMD and scalar alike): 16-bit products, high halves, then /4 rounded.
  out = ((((rows[r0] >> 4) * b0) >> 16) + (((rows[r1] >> 4) * b1) >> 16) + 2) >> 2
  return np.clip(out, 0, 255).astype(np.uint8)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """[n_out] source indices of a nearest-neighbour resize (half-pixel centres)."""
  return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[h, w, ...] -> [size[0], size[1], ...] by nearest neighbour (any dtype)."""
  if a.shape[:2] == tuple(size):
    return a
  return a[nearest_indices(a.shape[0], size[0])][:, nearest_indices(a.shape[1], size[1])]


def opencv_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """[n_out] source indices of OpenCV's INTER_NEAREST: floor(i * (1 / (n_out / n_in))) in double,
  as it computes them (no half-pixel centres: 640 -> 320 takes the even columns)."""
  return np.minimum(np.floor(np.arange(n_out) * (1.0 / (n_out / n_in))).astype(np.int64), n_in - 1)


def resize_nearest_opencv(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[h, w, ...] -> [size[0], size[1], ...] as `cv2.resize(a, (W, H), interpolation=cv2.INTER_NEAREST)`."""
  if a.shape[:2] == tuple(size):
    return a
  return a[opencv_nearest_indices(a.shape[0], size[0])][:, opencv_nearest_indices(a.shape[1], size[1])]


def resize_bilinear_pil(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """float32 [h, w] -> float32 [size] by PIL's bilinear resize of a mode-F image: a triangle filter
  whose support grows with the shrink factor (antialiased; holes mixed in). The reference's loader
  resizes NYU depth so (`Image.fromarray(depth).resize((W, H), Image.BILINEAR)`)."""
  if a.shape == tuple(size):
    return a
  return np.asarray(Image.fromarray(np.asarray(a, np.float32)).resize((size[1], size[0]), Image.BILINEAR), np.float32)


def resize_bilinear(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """float [h, w] -> [size], bilinear, align_corners=False, no antialiasing (torch's
  `F.interpolate(mode='bilinear')`)."""
  if a.shape == tuple(size):
    return a
  return _lerp_axis(_lerp_axis(a, size[0], 0), size[1], 1)


def _lerp_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
  """Bilinear (align_corners=False) resample of `a` along `axis` to `n_out` samples."""
  n_in = a.shape[axis]
  x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
  i0 = np.floor(x).astype(np.int64)
  i1 = np.minimum(i0 + 1, n_in - 1)
  f = (x - i0).astype(np.float32)
  f = f[:, None] if axis == 0 else f[None, :]
  return a.take(i0, axis) * (1 - f) + a.take(i1, axis) * f


def resize_depth_valid(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """float32 [h, w] -> [size]: bilinear over valid (> 0) pixels only; 0 where none is near."""
  if depth.shape == tuple(size):
    return depth
  if np.all(depth > 0):  # dense teacher maps (the usual case) need no normalisation
    return resize_bilinear(depth, size).astype(np.float32)
  valid = (depth > 0).astype(np.float32)
  num, den = resize_bilinear(depth * valid, size), resize_bilinear(valid, size)
  return np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)
