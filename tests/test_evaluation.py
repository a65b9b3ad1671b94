"""evaluation.evaluate's validation loss against the reference's `validate` written out in numpy: per
batch the training objective of its real frames (berHu, cross-entropy, edge smoothness, Kendall
weighting), then the plain mean over the batches."""

import jax
import numpy as np
import pytest
from flax import nnx

from efficientvit_jax import augment
from efficientvit_jax import evaluation
from efficientvit_jax import model as model_lib
from efficientvit_jax import parallel

LOSS = {'use_kendall': True, 'lambda_depth': 1.0, 'lambda_seg': 1.0, 'lambda_edge': 0.1}
S_D, S_S = 0.3, -2.5  # log-sigmas; s_s beyond the clamp: -2 is used
SIZE = (32, 32)


def _numpy_loss(depth, logits, image, target, valid, seg):
  """The reference's MultiTaskLoss on one batch (numpy float64), from its formulas."""
  depth, logits, image = (np.asarray(x, np.float64) for x in (depth, logits, image))
  valid = valid & (target > 0)
  e = np.abs(depth - target)[valid]
  if len(e):
    c = 0.2 * e.max()
    l_depth = np.mean(np.where(e <= c, e, (e * e + c * c) / (2 * c + 1e-8)))
  else:
    l_depth = 0.0
  labelled = seg != 255
  if labelled.any():
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    l_seg = -np.mean(np.take_along_axis(log_p, np.where(labelled, seg, 0)[..., None], -1)[..., 0][labelled])
  else:
    l_seg = 0.0
  gx = np.abs(np.diff(depth, axis=2)) * np.exp(-np.mean(np.abs(np.diff(image, axis=2)), -1))
  gy = np.abs(np.diff(depth, axis=1)) * np.exp(-np.mean(np.abs(np.diff(image, axis=1)), -1))
  l_edge = gx.mean() + gy.mean()
  s_d, s_s = np.clip(S_D, -2, 2), np.clip(S_S, -2, 2)
  total = 0.5 * np.exp(-s_d) * l_depth + 0.5 * s_d + np.exp(-s_s) * l_seg + 0.5 * s_s + 0.1 * l_edge
  return {'loss': total, 'loss_depth': l_depth, 'loss_seg': l_seg, 'loss_edge': l_edge}


def _frames(rng, n, labelled=True):
  h, w = SIZE
  target = rng.uniform(0.5, 6.0, (n, h, w)).astype(np.float32)
  target[rng.random((n, h, w)) < 0.2] = 0.0
  seg = rng.integers(0, 6, (n, h, w)).astype(np.int32)
  seg[rng.random((n, h, w)) < 0.3] = 255
  if not labelled:
    seg[:] = 255
  return {'image': rng.integers(0, 256, (n, h, w, 3)).astype(np.uint8), 'depth': target,
          'depth_valid': rng.random((n, h, w)) < 0.9, 'seg': seg, 'gt_depth': target, 'gt_seg': seg,
          'frame_mask': np.ones(n, bool)}


def _batches(frames, batch_size):
  """Consecutive batches, the last padded with garbage frames (frame_mask False), plus one batch of
  padding only (as a split whose last frames were all skipped as bad)."""
  rng = np.random.default_rng(5)
  n = len(frames['frame_mask'])
  out = []
  for start in range(0, n + batch_size, batch_size):
    real = {k: v[start:start + batch_size] for k, v in frames.items()}
    pad = batch_size - len(real['frame_mask'])
    junk = _frames(rng, pad)
    junk['frame_mask'][:] = False
    junk['depth'] *= 9.0  # would dominate berHu's c if it counted
    out.append({k: np.concatenate([real[k], junk[k]]) for k in frames})
  return out


@pytest.fixture(scope='module')
def model():
  mesh = parallel.make_mesh()
  graphdef, params, stats = nnx.split(model_lib.create(seed=3), nnx.Param, nnx.BatchStat)
  params, stats = parallel.put_replicated((params, stats), mesh)
  kendall = parallel.put_replicated({'log_sigma_d': np.array([S_D], np.float32),
                                     'log_sigma_s': np.array([S_S], np.float32)}, mesh)
  return graphdef, params, stats, kendall, mesh


@pytest.mark.parametrize('labelled', [True, False])
def test_validation_loss_is_the_mean_over_batches_of_each_batchs_loss(model, labelled):
  graphdef, params, stats, kendall, mesh = model
  frames = _frames(np.random.default_rng(1), 5, labelled)
  batches = _batches(frames, 2)
  res = evaluation.evaluate(graphdef, params, stats, batches, mesh, set_name='nyu', with_seg=labelled,
                            kendall=kendall, loss_config=LOSS)
  forward = jax.jit(lambda image: nnx.merge(graphdef, params, stats)(image, train=False))
  expected = []
  for start in range(0, 5, 2):  # the reference's val loader: batches of 2 in order, the last short
    real = {k: v[start:start + 2] for k, v in frames.items()}
    image = np.asarray(augment.to_float(real['image']))
    out = forward(image)
    expected.append(_numpy_loss(out['depth'], out['seg_logits'], image, real['depth'], real['depth_valid'],
                                real['seg']))
  loss = res['loss']
  assert loss['num_batches'] == 3
  for k in ('loss', 'loss_depth', 'loss_edge') + (('loss_seg',) if labelled else ()):
    assert loss[k] == pytest.approx(np.mean([e[k] for e in expected]), rel=2e-5), k
  if not labelled:  # no label anywhere: no segmentation loss to report; the total keeps 0.5 s_s
    assert loss['loss_seg'] is None and 'seg' not in res
  assert res['num_frames'] == 5


def test_no_loss_without_its_config_nor_for_a_split_without_depth_targets(model):
  graphdef, params, stats, kendall, mesh = model
  frames = _frames(np.random.default_rng(2), 2)
  res = evaluation.evaluate(graphdef, params, stats, _batches(frames, 2), mesh, set_name='corridor')
  assert 'loss' not in res and res['num_frames'] == 2
  frames['depth_valid'][:] = False
  res = evaluation.evaluate(graphdef, params, stats, _batches(frames, 2), mesh, set_name='corridor',
                            kendall=kendall, loss_config=LOSS)
  assert res['loss'] is None
