"""Depth and classes for images, from any checkpoint source.

  python -m efficientvit_jax.predict --checkpoint SRC --out DIR [--size HxW] [--native-size]
      [--save-logits] [--depth-png] IMAGE...

Per image: `<stem>_depth.npy` [H, W] float32 metres, `<stem>_seg.png` class ids (8-bit PNG),
`<stem>_seg_logits.npy` [H, W, 6] (with --save-logits), `<stem>_depth_mm.png` (with --depth-png:
16-bit PNG, depth in millimetres, the ROS / RealSense convention) and `<stem>_panel.png`. Outputs
are at the model's input size, or at the image's own size with --native-size. The model (its
backbone) and the input size come from the checkpoint (the size it was trained at; 240x320 when it
records none; printed); --size overrides the size. Pixels are uint8 / 255 as in training; an image
of another size is resized bilinearly first.

From Python (a robot node, a notebook):

  predictor = predict.load('runs/b1')           # folder, workdir or reference .pt
  predictor.size, predictor.backbone            # (240, 320), 'efficientvit_b1': from the checkpoint
  out = predictor(rgb)                          # rgb [H, W, 3] or [N, H, W, 3] uint8, any H, W
  out['depth'], out['labels'], out['seg_logits']  # metres, uint8 class ids, float32 logits
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from efficientvit_jax import checkpointing
from efficientvit_jax import convert
from efficientvit_jax import images as images_lib
from efficientvit_jax import model as model_lib
from efficientvit_jax import ops
from efficientvit_jax import panels
from efficientvit_jax import runtime


class ImageError(Exception):
  """An input image that cannot be used; the message names the file."""


def read_rgb(path: str | os.PathLike) -> np.ndarray:
  """An image file -> [H, W, 3] uint8 RGB. Greyscale, palette and RGBA become RGB; 16-bit is refused."""
  try:
    with Image.open(path) as img:
      img.load()
      mode = img.mode
      if mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I', 'F') or img.getbands() == ('I',):
        raise ImageError(f'{path}: {mode} image (16/32-bit); predict takes 8-bit RGB images '
                         '(a depth PNG is not an input)')
      if mode not in ('RGB', 'L', 'LA', 'P', 'PA', 'RGBA', 'RGBX', 'CMYK', 'YCbCr', '1'):
        raise ImageError(f'{path}: unsupported image mode {mode}')
      return np.asarray(img.convert('RGB'), np.uint8)
  except ImageError:
    raise
  except FileNotFoundError:
    raise ImageError(f'{path}: no such file') from None
  except Exception as e:  # PIL raises several types for corrupt data
    raise ImageError(f'{path}: cannot be decoded as an image ({e})') from None


@dataclasses.dataclass
class Predictor:
  """A jitted eval-mode forward over a fixed input size, batched."""

  model: model_lib.DepthSegNet
  size: tuple[int, int]
  batch_size: int = 8

  def __post_init__(self):
    graphdef, state = nnx.split(self.model)

    @jax.jit
    def forward(state, images):
      return nnx.merge(graphdef, state)(images, train=False)

    self._forward = functools.partial(forward, state)

  def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """images [N, H, W, 3] float32 in [0, 1] at `size` -> depth [N, H, W], seg_logits [N, H, W, C]."""
    outs = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      pad = self.batch_size - len(chunk)  # one compiled shape for every batch
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
      out = jax.device_get(self._forward(jnp.asarray(chunk)))
      outs.append({k: v[:len(chunk) - pad] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


class ImagePredictor:
  """A checkpoint as a callable on uint8 RGB images; see `load`."""

  def __init__(self, model: model_lib.DepthSegNet, size: tuple[int, int] = (240, 320), batch_size: int = 8):
    self.size = tuple(size)
    self.backbone = model.backbone
    self._predictor = Predictor(model, self.size, batch_size)

  def __call__(self, images: np.ndarray, *, native_size: bool = False) -> dict[str, np.ndarray]:
    """images [H, W, 3] or [N, H, W, 3] uint8 RGB -> depth [(N,) H', W'] float32 metres,
    labels [(N,) H', W'] uint8, seg_logits [(N,) H', W', C] float32.

    Images of another size than the model's are resized bilinearly; H', W' is the model's size,
    or the images' own with `native_size`.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
      raise ValueError(f'images must be [H, W, 3] or [N, H, W, 3] uint8 RGB, got {images.dtype} {images.shape}')
    single = images.ndim == 3
    batch = images[None] if single else images
    resized = np.stack([images_lib.resize_rgb(rgb, self.size) for rgb in batch])
    out = self._predictor(resized.astype(np.float32) / 255.0)
    if native_size and batch.shape[1:3] != self.size:
      out = [to_native({k: v[i] for k, v in out.items()}, batch.shape[1:3]) for i in range(len(batch))]
      out = {k: np.stack([o[k] for o in out]) for k in out[0]}
    out['labels'] = np.argmax(out['seg_logits'], axis=-1).astype(np.uint8)
    return {k: v[0] for k, v in out.items()} if single else out


def load(src: str | os.PathLike, *, size: tuple[int, int] | None = None, step: int | None = None,
         batch_size: int = 8, allow_pickle: bool = False) -> ImagePredictor:
  """A checkpoint folder, training workdir (latest step or `step`) or reference .pt -> predictor at
  `size`, by default the training input size the checkpoint records (else 240x320)."""
  loaded = convert.load_model(src, step, allow_pickle=allow_pickle)
  return ImagePredictor(loaded.model, loaded.input_size(size), batch_size)


DEPTH_PNG_SCALE = 1000.0  # uint16 units per metre: millimetres


def depth_to_uint16(depth: np.ndarray) -> np.ndarray:
  """Metres -> uint16 millimetres, rounded; 0 stays 0 (no depth), beyond 65.535 m saturates."""
  return np.clip(np.rint(np.asarray(depth, np.float64) * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)


def save_depth_png(path: str | os.PathLike, depth: np.ndarray) -> None:
  """[H, W] metres -> a 16-bit greyscale PNG of millimetres."""
  Image.fromarray(depth_to_uint16(depth)).save(path)


def read_depth_png(path: str | os.PathLike) -> np.ndarray:
  """A 16-bit millimetre depth PNG -> [H, W] float32 metres."""
  with Image.open(path) as img:
    return np.asarray(img, np.uint16).astype(np.float32) / DEPTH_PNG_SCALE


def to_native(out: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
  """Bilinear resize of depth [H, W] and logits [H, W, C] to `size` (as the model's own resizes)."""
  depth = ops.resize_bilinear(jnp.asarray(out['depth'])[None, ..., None], size)[0, ..., 0]
  logits = ops.resize_bilinear(jnp.asarray(out['seg_logits'])[None], size)[0]
  return {'depth': np.asarray(depth), 'seg_logits': np.asarray(logits)}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m efficientvit_jax.predict', description=__doc__.split('\n\n')[0])
  parser.add_argument('--checkpoint', required=True, help='checkpoint folder, training workdir or reference .pt')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  parser.add_argument('--out', required=True, help='output folder')
  parser.add_argument('--size', type=images_lib.parse_size, default=None,
                      help=f"model input size, {images_lib.SIZE_HELP} (default: the checkpoint's training size, "
                           'else 240x320)')
  parser.add_argument('--native-size', action='store_true', help="outputs at each image's own size")
  parser.add_argument('--save-logits', action='store_true', help='also write <stem>_seg_logits.npy')
  parser.add_argument('--depth-png', action='store_true',
                      help='also write <stem>_depth_mm.png (16-bit, millimetres)')
  parser.add_argument('--batch-size', type=int, default=8,
                      help=f'images a forward pass (default 8; at most {images_lib.MAX_BATCH_PIXELS:,} pixels a batch)')
  parser.add_argument('--allow-pickle', action='store_true', help='for .pt files that weights_only loading refuses')
  parser.add_argument('--compilation-cache', default='', metavar='DIR',
                      help="JAX's persistent compilation cache (default ~/.cache/efficientvit_jax/xla; 'none': off)")
  parser.add_argument('--overwrite', action='store_true', help='replace existing outputs in --out')
  parser.add_argument('images', nargs='+', metavar='IMAGE')
  return parser


def _write_outputs(out_dir: pathlib.Path, stem: str, out: dict[str, np.ndarray], shown: np.ndarray,
                   args: argparse.Namespace) -> None:
  """One image's files <stem>_depth.npy, _seg.png, _panel.png and those the flags ask for.

  out: 'depth' (H, W) metres and 'seg_logits' (H, W, C); shown: the (H, W, 3) uint8 image of the panel."""
  seg = np.argmax(out['seg_logits'], axis=-1).astype(np.uint8)
  np.save(out_dir / f'{stem}_depth.npy', out['depth'].astype(np.float32))
  if args.depth_png:
    save_depth_png(out_dir / f'{stem}_depth_mm.png', out['depth'])
  Image.fromarray(seg).save(out_dir / f'{stem}_seg.png')
  if args.save_logits:
    np.save(out_dir / f'{stem}_seg_logits.npy', out['seg_logits'].astype(np.float32))
  panels.prediction_panel(out_dir / f'{stem}_panel.png', shown, out['depth'], seg)


@runtime.reporting_missing_extras  # torch, for a reference .pt
def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error(f'--batch-size must be at least 1, got {args.batch_size}')
  batch_size = min(args.batch_size, len(args.images))  # no padding beyond the images given
  out_dir = pathlib.Path(args.out)
  try:
    if args.size is not None:
      images_lib.check_batch_pixels(args.size, batch_size)
  except ValueError as e:
    parser.error(str(e))
  if out_dir.exists() and not out_dir.is_dir():
    parser.error(f'--out {out_dir} is a file; predict writes a folder of outputs')
  runtime.enable_compilation_cache(args.compilation_cache)
  try:
    rgbs = [read_rgb(p) for p in args.images]
    stems = [pathlib.Path(p).stem for p in args.images]
    if len(set(stems)) != len(stems):
      raise ImageError('two input images share a file name stem; their outputs would overwrite each other')
    loaded = convert.load_model(args.checkpoint, args.step, allow_pickle=args.allow_pickle)
  except (ImageError, checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  suffixes = ('_depth.npy', '_seg.png', '_panel.png') + (('_seg_logits.npy',) if args.save_logits else ())
  existing = [out_dir / f'{stem}{s}' for stem in stems for s in suffixes if (out_dir / f'{stem}{s}').exists()]
  if existing and not args.overwrite:
    print(f'error: {existing[0]} already exists ({len(existing)} outputs in all); choose another --out or '
          'pass --overwrite', file=sys.stderr)
    return 2
  size = loaded.input_size(args.size)
  try:
    checkpointing.check_writable(out_dir)  # before predicting: a read-only place fails now
    images_lib.check_batch_pixels(size, batch_size)  # the checkpoint's size, when --size gave none
  except (OSError, ValueError) as e:
    print(f'error: cannot write --out: {e}' if isinstance(e, OSError) else f'error: {e}', file=sys.stderr)
    return 2
  print(loaded.describe(args.size))
  predictor = Predictor(loaded.model, size, batch_size)
  resized = [images_lib.resize_rgb(rgb, size) for rgb in rgbs]
  outputs = predictor(np.stack(resized).astype(np.float32) / 255.0)
  for i, (stem, rgb) in enumerate(zip(stems, rgbs)):
    out = {k: v[i] for k, v in outputs.items()}
    if args.native_size:
      _write_outputs(out_dir, stem, to_native(out, rgb.shape[:2]), rgb, args)
    else:
      _write_outputs(out_dir, stem, out, resized[i], args)
  print(f'wrote predictions for {len(stems)} image(s) to {out_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
