"""Training augmentation on the device: horizontal flip and colour jitter inside the jitted step.

The host ships each training frame after its geometry only (crop or resize, `data_pipelines.
transforms.train_transform`): `image` uint8 [B, H, W, 3] and the maps at the input size. Here,
per sample:
1. horizontal flip with p 0.5, of the image and every map together;
2. if colour jitter is on for the sample's domain: torchvision's `ColorJitter(0.2, 0.2, 0.2, 0.1)`
   on float tensors (brightness, contrast, saturation and hue as an HSV shift, in a random order
   per sample), computed in float32 and rounded to uint8 levels, as the host did before;
3. the uint8 -> float32 conversion (`image / 255`).

Randomness is a pure function of (seed, step, position in the global batch): the key of a sample is
`fold_in(fold_in(key(seed), step), position)`, so a resumed run, any device count and any process
count see the same pixels. Everything is elementwise per sample (the contrast mean is per sample),
so it runs on the batch as it is sharded.

Example::

  batch = augment_batch(batch, seed=0, step=state['step'], jitter=(True, False, False))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

BRIGHTNESS = CONTRAST = SATURATION = 0.2
HUE = 0.1
FLIPPED = ('image', 'depth', 'depth_valid', 'gt_depth', 'seg', 'gt_seg')  # [B, H, W, ...] maps


def sample_params(seed: int, step: jax.Array | int, position: jax.Array | int) -> dict[str, jax.Array]:
  """The random choices of one sample: `flip` bool, `order` int32 [4] (a permutation of the ops
  0 brightness, 1 contrast, 2 saturation, 3 hue), `factors` float32 [3] (brightness, contrast,
  saturation, each in [0.8, 1.2]) and `hue` float32 in [-0.1, 0.1]."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), position)
  k_flip, k_order, k_factors, k_hue = jax.random.split(key, 4)
  lo = jnp.array([1 - BRIGHTNESS, 1 - CONTRAST, 1 - SATURATION], jnp.float32)
  hi = jnp.array([1 + BRIGHTNESS, 1 + CONTRAST, 1 + SATURATION], jnp.float32)
  return {
      'flip': jax.random.uniform(k_flip) < 0.5,
      'order': jax.random.permutation(k_order, 4).astype(jnp.int32),
      'factors': jax.random.uniform(k_factors, (3,), jnp.float32, lo, hi),
      'hue': jax.random.uniform(k_hue, (), jnp.float32, -HUE, HUE),
  }


def _grayscale(x: jax.Array) -> jax.Array:
  """[H, W, 3] -> [H, W, 1], torchvision's `rgb_to_grayscale` weights."""
  return (0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def _shift_hue(x: jax.Array, hue: jax.Array) -> jax.Array:
  """RGB [H, W, 3] in [0, 1] -> RGB with the HSV hue shifted by `hue` (torchvision `adjust_hue`).

  RGB -> HSV as torchvision's `_rgb2hsv`; HSV -> RGB in the closed form of its sector table."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  # The sector from comparisons between the channels, not `maxc == r`: XLA may compute r in two
  # fusions with different rounding, and an exact-equality test then picks a wrong sector.
  is_r = (r >= g) & (r >= b)
  is_g = ~is_r & (g >= b)
  maxc = jnp.where(is_r, r, jnp.where(is_g, g, b))
  cr = maxc - jnp.minimum(jnp.minimum(r, g), b)
  eqc = cr <= 0
  s = cr / jnp.where(eqc, 1.0, maxc)
  div = jnp.where(eqc, 1.0, cr)
  rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
  h = jnp.where(is_r, bc - gc, jnp.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.mod(jnp.mod(h / 6.0 + 1.0, 1.0) + hue, 1.0)
  h6, vs = h * 6.0, maxc * s
  return jnp.stack([maxc - vs * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
                    for k in (jnp.mod(n + h6, 6.0) for n in (5.0, 3.0, 1.0))], axis=-1)


def color_jitter(x: jax.Array, order: jax.Array, factors: jax.Array, hue: jax.Array) -> jax.Array:
  """One image float32 [H, W, 3] in [0, 1] -> jittered float32 [H, W, 3] in [0, 1] (not rounded).

  The three blend ops (brightness, contrast, saturation) are each `clip(f x + (1 - f) g, 0, 1)`
  with g = 0, the mean grey level or the grey image; a blend with f = 1 is the identity exactly.
  So the ops before the hue shift run as three blend slots (inactive ones with f = 1), then the
  hue shift once, then three slots for the ops after it: the per-sample random order costs one
  HSV round trip, not four, under `vmap`.
  """
  slot_of_hue = jnp.argmax(order == 3)

  def blend(x, op, active):
    f = jnp.where(active, factors[jnp.minimum(op, 2)], 1.0)
    grey = _grayscale(x)
    g = jnp.where(op == 0, 0.0, jnp.where(op == 1, jnp.mean(grey), grey))
    return jnp.clip(f * x + (1.0 - f) * g, 0.0, 1.0)

  for slot in range(3):  # ops before the hue shift (at most 3)
    x = blend(x, order[slot], slot < slot_of_hue)
  x = _shift_hue(x, hue)
  for slot in range(1, 4):  # ops after it
    x = blend(x, order[slot], slot > slot_of_hue)
  return x


_UINT8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def to_float(image: jax.Array) -> jax.Array:
  """uint8 [..., 3] -> float32 in [0, 1] (a float image passes through).

  A 256-entry table, not `x / 255`: XLA turns a division by a constant into a multiplication by
  its reciprocal, one ulp away from the host's `uint8 / 255` for half of the values."""
  if image.dtype == jnp.uint8:
    return jnp.asarray(_UINT8_TO_FLOAT)[image]
  return image.astype(jnp.float32)


def augment_batch(batch: Mapping[str, jax.Array], *, seed: int, step: jax.Array | int,
                  jitter: Sequence[bool]) -> dict[str, jax.Array]:
  """Flips, jitters and converts a training batch (module docstring).

  batch: `image` uint8 [B, H, W, 3], `domain` int32 [B], and any of the maps of `FLIPPED`
  ([B, H, W]); other entries pass through. jitter: per domain id (0 NYU, 1 LILocBench,
  2 corridor), whether colour jitter applies. Returns the batch with `image` float32 in [0, 1].
  """
  n = batch['image'].shape[0]
  params = jax.vmap(lambda p: sample_params(seed, step, p))(jnp.arange(n))
  out = dict(batch)
  for k in FLIPPED:
    if k in out:
      flip = params['flip'].reshape((n,) + (1,) * (out[k].ndim - 1))
      out[k] = jnp.where(flip, jnp.flip(out[k], axis=2), out[k])
  image = to_float(out['image'])
  if any(jitter):
    on = jnp.asarray(tuple(bool(j) for j in jitter))[batch['domain']]
    jittered = jax.vmap(color_jitter)(image, params['order'], params['factors'], params['hue'])
    jittered = to_float(jnp.clip(jnp.round(jittered * 255.0), 0, 255).astype(jnp.uint8))
    image = jnp.where(on[:, None, None, None], jittered, image)
  out['image'] = image
  return out
