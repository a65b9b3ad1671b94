"""Device-side augmentation: colour jitter against an independent numpy transcription of
torchvision's tensor formulas, one flip for every map, randomness a function of (seed, step,
position)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax import augment

# ---------------------------------------------------------------------------------------------
# torchvision.transforms.functional_tensor, transcribed literally (float images [3, H, W]).


def tv_grayscale(img):
  return 0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def tv_blend(img1, img2, ratio):
  return np.clip(ratio * img1 + (1.0 - ratio) * img2, 0.0, 1.0)


def tv_rgb2hsv(img):
  r, g, b = img
  maxc, minc = img.max(axis=0), img.min(axis=0)
  eqc = maxc == minc
  cr = maxc - minc
  ones = np.ones_like(maxc)
  s = cr / np.where(eqc, ones, maxc)
  cr_divisor = np.where(eqc, ones, cr)
  rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
  hr = (maxc == r) * (bc - gc)
  hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
  hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
  h = np.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
  return np.stack((h, s, maxc))


def tv_hsv2rgb(img):
  h, s, v = img
  i = np.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(np.int32) % 6
  p = np.clip(v * (1.0 - s), 0.0, 1.0)
  q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  mask = (i[None] == np.arange(6)[:, None, None]).astype(img.dtype)
  a1 = np.stack((v, q, p, p, t, v))
  a2 = np.stack((t, v, v, q, p, p))
  a3 = np.stack((p, p, t, v, v, q))
  a4 = np.stack((a1, a2, a3))  # [3, 6, H, W]
  return np.einsum('ijk,xijk->xjk', mask, a4)


def tv_color_jitter(rgb_u8, order, b, c, s, hue):
  """uint8 [H, W, 3] -> uint8: ColorJitter's forward with fixed parameters, float tensor path."""
  img = rgb_u8.transpose(2, 0, 1).astype(np.float32) / 255.0
  for fn_id in order:
    if fn_id == 0:
      img = tv_blend(img, np.zeros_like(img), b)
    elif fn_id == 1:
      img = tv_blend(img, tv_grayscale(img).mean(), c)
    elif fn_id == 2:
      img = tv_blend(img, tv_grayscale(img)[None], s)
    else:
      hsv = tv_rgb2hsv(img)
      hsv[0] = (hsv[0] + hue) % 1.0
      img = tv_hsv2rgb(hsv)
  return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def device_jitter(rgb_u8, order, factors, hue):
  x = augment.to_float(jnp.asarray(rgb_u8))
  y = jax.jit(augment.color_jitter)(x, jnp.asarray(order, jnp.int32), jnp.asarray(factors, jnp.float32),
                                    jnp.float32(hue))
  return np.asarray(jnp.clip(jnp.round(y * 255.0), 0, 255)).astype(np.uint8)


def test_jitter_matches_torchvision_formulas_in_every_order():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
  img[:4, :4] = 128  # grey pixels: the hue of a zero-chroma pixel
  img[4:8, :4] = [255, 255, 0]  # saturated sector edges
  worst = 0
  for order in itertools.permutations(range(4)):
    factors = rng.uniform(0.8, 1.2, 3)
    hue = rng.uniform(-0.1, 0.1)
    want = tv_color_jitter(img, order, *factors, hue)
    got = device_jitter(img, order, factors, hue)
    worst = max(worst, int(np.abs(got.astype(int) - want.astype(int)).max()))
  assert worst <= 1  # |diff| <= 1/255 after rounding


def test_extreme_factors_and_identity():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  for factors, hue in (((0.8, 0.8, 0.8), -0.1), ((1.2, 1.2, 1.2), 0.1)):
    want = tv_color_jitter(img, (3, 2, 1, 0), *factors, hue)
    assert np.abs(device_jitter(img, (3, 2, 1, 0), factors, hue).astype(int) - want).max() <= 1
  # Factors 1 and no hue shift leave the image as it was.
  np.testing.assert_array_equal(device_jitter(img, (0, 1, 2, 3), (1, 1, 1), 0.0), img)


def make_batch(n=6, h=12, w=16, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  code = np.broadcast_to(yy * 100 + xx, (n, h, w))
  return {'image': rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8),
          'depth': (code * 0.01 + 0.5).astype(np.float32),
          'depth_valid': code % 3 > 0,
          'seg': (code % 6).astype(np.int32),
          'domain': np.array([0, 1] * (n // 2), np.int32)}


def test_batch_flip_moves_every_map_together_and_jitter_follows_the_domain():
  batch = make_batch()
  out = jax.jit(lambda b, s: augment.augment_batch(b, seed=3, step=s, jitter=(True, False, False)))(
      {k: jnp.asarray(v) for k, v in batch.items()}, jnp.int32(7))
  out = {k: np.asarray(v) for k, v in out.items()}
  assert out['image'].dtype == np.float32
  flips = set()
  for p in range(len(batch['image'])):
    params = jax.device_get(augment.sample_params(3, 7, p))
    flip = bool(params['flip'])
    flips.add(flip)
    ref = {k: (v[p][:, ::-1] if flip else v[p]) for k, v in batch.items() if k != 'domain'}
    for k in ('depth', 'depth_valid', 'seg'):
      np.testing.assert_array_equal(out[k][p], ref[k])
    if batch['domain'][p] == 0:  # jittered: torchvision's formulas with this sample's parameters
      want = tv_color_jitter(ref['image'], params['order'], *params['factors'], params['hue'])
      got = np.round(out['image'][p] * 255).astype(int)
      assert np.abs(got - want).max() <= 1
    else:  # jitter off for LILocBench here: exactly uint8 / 255
      np.testing.assert_array_equal(out['image'][p], ref['image'].astype(np.float32) / np.float32(255))
  assert flips == {False, True}


def test_randomness_is_a_function_of_seed_step_position():
  a = jax.device_get(jax.vmap(lambda p: augment.sample_params(0, 5, p))(jnp.arange(8)))
  b = jax.device_get([augment.sample_params(0, 5, p) for p in range(8)])
  for p in range(8):
    for k in a:
      np.testing.assert_array_equal(a[k][p], b[p][k])
  other_step = jax.device_get(augment.sample_params(0, 6, 0))
  other_seed = jax.device_get(augment.sample_params(1, 5, 0))
  assert not np.array_equal(a['factors'][0], other_step['factors'])
  assert not np.array_equal(a['factors'][0], other_seed['factors'])
  for p in range(8):
    assert sorted(a['order'][p]) == [0, 1, 2, 3]
    assert np.all((a['factors'][p] >= 0.8) & (a['factors'][p] <= 1.2)) and abs(a['hue'][p]) <= 0.1
