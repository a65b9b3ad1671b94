"""Images on the host: the `--size HxW` argument of the commands and the RGB resize that
training, evaluation and prediction share (so a picture is resized the same way everywhere)."""

import argparse

import numpy as np
from PIL import Image

MIN_SIDE = 32  # the network downsamples by 32


def parse_size(text: str) -> tuple[int, int]:
  """'240x320' -> (240, 320); an argparse `type` (ArgumentTypeError: one line, exit code 2)."""
  try:
    h, w = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise argparse.ArgumentTypeError(f'must be HxW, e.g. 240x320, got {text!r}') from None
  if h < MIN_SIDE or w < MIN_SIDE:
    raise argparse.ArgumentTypeError(f'the network needs at least {MIN_SIDE}x{MIN_SIDE}, got {text}')
  return h, w


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [h, w, 3] -> uint8 [size[0], size[1], 3], bilinear (Pillow); unchanged when already that size."""
  if rgb.shape[:2] == tuple(size):
    return rgb
  return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR), np.uint8)
