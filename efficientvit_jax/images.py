"""Images on the host: the `--size HxW` argument of the commands (and its limits) and the RGB
resize that training, evaluation and prediction share (so a picture is resized the same way
everywhere)."""

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
