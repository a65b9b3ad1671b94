"""losses.py against loop/np.where numpy versions and torch versions of the reference formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from efficientvit_jax import losses

LOSS_CONFIG = {'use_kendall': True, 'lambda_depth': 1.0, 'lambda_seg': 1.0, 'lambda_edge': 0.1}


def _depth_case(seed=0, shape=(2, 5, 7)):
  rng = np.random.default_rng(seed)
  pred = rng.uniform(0.0, 5.0, shape).astype(np.float32)
  target = rng.uniform(0.5, 5.0, shape).astype(np.float32)
  valid = rng.random(shape) < 0.6
  return pred, target, valid


def _berhu_loop(pred, target, valid):
  triples = zip(pred.ravel(), target.ravel(), valid.ravel())
  errors = [abs(float(p) - float(t)) for p, t, v in triples if v]
  if not errors:
    return 0.0
  c = 0.2 * max(errors)
  total = 0.0
  for e in errors:
    total += e if e <= c else (e * e + c * c) / (2 * c + 1e-8)
  return total / len(errors)


def _berhu_torch(pred, target, valid):
  """The reference's HybridDepthLoss body (berHu on the masked batch)."""
  if valid.sum() == 0:
    return pred.sum() * 0.0
  e = (pred[valid] - target[valid]).abs()
  c = 0.2 * e.max().detach()
  return torch.where(e <= c, e, (e * e + c * c) / (2.0 * c + 1e-8)).mean()


def _edge_torch(depth, rgb):
  """The reference's EdgeAwareSmoothness, NCHW."""
  gx = lambda x: x[:, :, :, :-1] - x[:, :, :, 1:]
  gy = lambda x: x[:, :, :-1, :] - x[:, :, 1:, :]
  ix = gx(rgb).abs().mean(dim=1, keepdim=True)
  iy = gy(rgb).abs().mean(dim=1, keepdim=True)
  return (gx(depth).abs() * torch.exp(-ix)).mean() + (gy(depth).abs() * torch.exp(-iy)).mean()


def _kendall_torch(l_d, l_s, l_e, s_d, s_s, lambda_edge):
  """The reference's MultiTaskLoss with use_kendall=True."""
  log_d, log_s = s_d.clamp(-2, 2), s_s.clamp(-2, 2)
  return (0.5 * torch.exp(-log_d) * l_d + 0.5 * log_d + torch.exp(-log_s) * l_s + 0.5 * log_s
          + lambda_edge * l_e)


def test_berhu_matches_loop():
  pred, target, valid = _depth_case()
  got = jax.jit(losses.berhu)(pred, target, valid)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, _berhu_loop(pred, target, valid), rtol=1e-5)


def test_berhu_matches_torch_value_and_gradient():
  pred, target, valid = _depth_case(seed=1)
  value, grad = jax.jit(jax.value_and_grad(losses.berhu))(pred, target, valid)
  p = torch.tensor(pred, requires_grad=True)
  ref = _berhu_torch(p, torch.tensor(target), torch.tensor(valid))
  ref.backward()
  np.testing.assert_allclose(value, ref.item(), rtol=1e-6)
  np.testing.assert_allclose(grad, p.grad.numpy(), rtol=1e-5, atol=1e-9)


def test_berhu_ignores_garbage_outside_valid():
  pred, target, valid = _depth_case(seed=2)
  dirty = np.where(valid, target, np.nan).astype(np.float32)
  dirty[~valid & (np.arange(valid.size).reshape(valid.shape) % 2 == 0)] = np.inf
  value, grad = jax.value_and_grad(losses.berhu)(pred, dirty, valid)
  np.testing.assert_allclose(value, losses.berhu(pred, target, valid), rtol=1e-6)
  assert np.all(np.isfinite(grad)) and np.all(grad[~valid] == 0)


def test_berhu_empty_is_zero_with_zero_gradient():
  pred, target, _ = _depth_case()
  valid = np.zeros(pred.shape, bool)
  value, grad = jax.value_and_grad(losses.berhu)(pred, target, valid)
  assert value == 0.0
  assert np.all(grad == 0)


def test_cross_entropy_matches_torch_value_and_gradient():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
  labels = rng.integers(0, 6, (2, 4, 5)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.3] = 255
  value, grad = jax.jit(jax.value_and_grad(losses.cross_entropy))(logits, labels)
  t = torch.tensor(logits.transpose(0, 3, 1, 2), requires_grad=True)
  ref = F.cross_entropy(t, torch.tensor(labels, dtype=torch.int64), ignore_index=255)
  ref.backward()
  np.testing.assert_allclose(value, ref.item(), rtol=1e-6)
  np.testing.assert_allclose(grad, t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-8)


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(1, 3, 3, 6)).astype(np.float64)
  labels = rng.integers(0, 6, (1, 3, 3))
  labels[0, 1, 1] = 255
  total, count = 0.0, 0
  for idx in np.ndindex(labels.shape):
    if labels[idx] == 255:
      continue
    z = logits[idx]
    total += np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[labels[idx]]
    count += 1
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), total / count, rtol=1e-5)


def test_cross_entropy_all_ignored_is_zero_with_finite_gradient():
  logits = np.random.default_rng(5).normal(size=(1, 3, 4, 6)).astype(np.float32)
  labels = np.full((1, 3, 4), 255, np.int32)
  value, grad = jax.value_and_grad(losses.cross_entropy)(logits, labels)
  assert value == 0.0
  assert np.all(grad == 0)


def test_edge_smoothness_matches_loop_and_torch():
  rng = np.random.default_rng(6)
  depth = rng.uniform(0.5, 4.0, (2, 4, 5)).astype(np.float32)
  image = rng.random((2, 4, 5, 3)).astype(np.float32)
  def term(a, b):
    return abs(depth[a] - depth[b]) * np.exp(-np.mean(np.abs(image[a] - image[b])))

  sx = [term((n, i, j), (n, i, j + 1)) for n in range(2) for i in range(4) for j in range(4)]
  sy = [term((n, i, j), (n, i + 1, j)) for n in range(2) for i in range(3) for j in range(5)]
  value, grad = jax.jit(jax.value_and_grad(losses.edge_smoothness))(depth, image)
  np.testing.assert_allclose(value, np.mean(sx) + np.mean(sy), rtol=1e-5)
  d = torch.tensor(depth[:, None], requires_grad=True)
  ref = _edge_torch(d, torch.tensor(image.transpose(0, 3, 1, 2)))
  ref.backward()
  np.testing.assert_allclose(value, ref.item(), rtol=1e-6)
  np.testing.assert_allclose(grad, d.grad.numpy()[:, 0], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize('s_d, s_s', [(0.0, 0.0), (0.7, -1.3), (3.0, -2.5), (2.0, -2.0)])
def test_kendall_total_matches_torch(s_d, s_s):
  """Inside, outside and exactly on the clamp's bounds (torch passes the gradient on the bound)."""
  l = (0.8, 1.7, 0.3)
  kw = dict(use_kendall=True, lambda_depth=1.0, lambda_seg=0.5, lambda_edge=0.1)
  fn = lambda *a: losses.kendall_total(*a, **kw)
  args = tuple(jnp.float32(v) for v in l) + (jnp.full((1,), s_d), jnp.full((1,), s_s))
  value, grads = jax.value_and_grad(fn, argnums=range(5))(*args)
  ts = [torch.tensor(v, requires_grad=True) for v in l] + [
      torch.full((1,), s_d, requires_grad=True), torch.full((1,), s_s, requires_grad=True)]
  ref = _kendall_torch(*ts, lambda_edge=0.1).sum()
  ref.backward()
  assert value.shape == () and value.dtype == jnp.float32
  np.testing.assert_allclose(value, ref.item(), rtol=1e-6)
  for g, t in zip(grads, ts):
    np.testing.assert_allclose(np.ravel(g), np.ravel(t.grad.numpy()), rtol=1e-6)


def test_clamp_gradient_on_bounds_is_torchs():
  s = jnp.array([-2.5, -2.0, 0.3, 2.0, 2.5])
  g = jax.vmap(jax.grad(lambda s: losses.clamp(s, -2.0, 2.0)))(s)
  np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 1.0, 0.0])


def test_kendall_total_without_kendall_is_fixed_weights():
  fn = lambda l_d, l_s, l_e, s_d, s_s: losses.kendall_total(
      l_d, l_s, l_e, s_d, s_s, use_kendall=False, lambda_depth=2.0, lambda_seg=0.5, lambda_edge=0.1)
  value, grads = jax.value_and_grad(fn, argnums=(3, 4))(1.0, 2.0, 3.0, jnp.ones(1), jnp.ones(1))
  np.testing.assert_allclose(value, 2.0 + 1.0 + 0.3, rtol=1e-6)
  assert np.all(grads[0] == 0) and np.all(grads[1] == 0)


def _batch(dtype, seed=7, shape=(2, 6, 8)):
  rng = np.random.default_rng(seed)
  depth = rng.uniform(0.5, 4.0, shape)
  depth[rng.random(shape) < 0.2] = 0.0
  seg = rng.integers(0, 6, shape)
  seg[rng.random(shape) < 0.2] = 255
  batch = {
      'image': jnp.asarray(rng.random(shape + (3,)), dtype),
      'depth': jnp.asarray(depth, dtype),
      'depth_valid': jnp.asarray(rng.random(shape) < 0.8),
      'seg': jnp.asarray(seg, jnp.int32),
  }
  preds = (jnp.asarray(rng.uniform(0.5, 4.0, shape), dtype),
           jnp.asarray(rng.normal(size=shape + (6,)), dtype))
  return preds, batch


def test_multitask_loss_combines_parts():
  (depth, logits), batch = _batch(jnp.float32)
  kendall = {'log_sigma_d': jnp.array([0.3]), 'log_sigma_s': jnp.array([-0.4])}
  loss = jax.jit(lambda *args: losses.multitask_loss(*args, LOSS_CONFIG))
  total, aux = loss(depth, logits, batch, kendall)
  valid = np.asarray(batch['depth_valid']) & (np.asarray(batch['depth']) > 0)
  expected_depth = _berhu_loop(np.asarray(depth), np.asarray(batch['depth']), valid)
  np.testing.assert_allclose(aux['depth'], expected_depth, rtol=1e-5)
  np.testing.assert_allclose(aux['seg'], losses.cross_entropy(logits, batch['seg']), rtol=1e-6)
  np.testing.assert_allclose(aux['edge'], losses.edge_smoothness(depth, batch['image']), rtol=1e-6)
  expected = (0.5 * np.exp(-0.3) * aux['depth'] + 0.15 + np.exp(0.4) * aux['seg'] - 0.2
              + 0.1 * aux['edge'])
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  np.testing.assert_allclose([aux['log_sigma_d'], aux['log_sigma_s']], [0.3, -0.4], rtol=1e-6)
  assert set(aux) == {'depth', 'seg', 'edge', 'log_sigma_d', 'log_sigma_s'}


def test_multitask_loss_bfloat16_inputs_give_float32():
  (depth, logits), batch = _batch(jnp.bfloat16)
  kendall = {'log_sigma_d': jnp.zeros(1, jnp.bfloat16), 'log_sigma_s': jnp.zeros(1, jnp.bfloat16)}

  def loss(depth, logits):
    return losses.multitask_loss(depth, logits, batch, kendall, LOSS_CONFIG)

  grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  (total, aux), grads = grad_fn(depth, logits)
  assert total.dtype == jnp.float32 and total.shape == ()
  assert all(v.dtype == jnp.float32 and v.shape == () for v in aux.values())
  assert grads[0].dtype == jnp.bfloat16
  assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)
  # Computed in float32 from the bfloat16 values, not in bfloat16.
  f32 = lambda x: x.astype(jnp.float32)
  np.testing.assert_allclose(aux['seg'], losses.cross_entropy(f32(logits), batch['seg']), rtol=1e-6)
  np.testing.assert_allclose(
      aux['edge'], losses.edge_smoothness(f32(depth), f32(batch['image'])), rtol=1e-6)


def test_multitask_loss_empty_targets():
  """No valid depth and no label (an all-LILocBench batch): finite values and gradients."""
  (depth, logits), batch = _batch(jnp.float32)
  batch = dict(batch, depth_valid=jnp.zeros_like(batch['depth_valid']),
               seg=jnp.full_like(batch['seg'], 255))
  kendall = {'log_sigma_d': jnp.zeros(1), 'log_sigma_s': jnp.zeros(1)}

  def loss(depth, logits, kendall):
    return losses.multitask_loss(depth, logits, batch, kendall, LOSS_CONFIG)

  grad_fn = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  (total, aux), grads = grad_fn(depth, logits, kendall)
  assert aux['depth'] == 0.0 and aux['seg'] == 0.0
  np.testing.assert_allclose(total, 0.1 * aux['edge'], rtol=1e-6)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.all(grads[1] == 0)


def test_multitask_loss_of_a_padded_batch_is_that_of_its_real_frames():
  """Padding frames (frame_mask False), whatever they hold, count in none of the three terms: the
  loss equals the plain loss of the real frames alone (an evaluation batch's last, short batch)."""
  (depth, logits), batch = _batch(jnp.float32)
  kendall = {'log_sigma_d': jnp.array([0.3]), 'log_sigma_s': jnp.array([-0.4])}
  rng = np.random.default_rng(9)
  n = depth.shape[0]
  padded_depth = jnp.concatenate([depth, jnp.asarray(rng.uniform(0, 50, depth.shape), jnp.float32)])
  padded_logits = jnp.concatenate([logits, jnp.asarray(rng.normal(size=logits.shape) * 10, jnp.float32)])
  padded = {k: jnp.concatenate([v, v[::-1]]) for k, v in batch.items()}  # labelled, valid padding
  mask = np.arange(2 * n) < n
  total, aux = jax.jit(lambda *a: losses.multitask_loss(*a, LOSS_CONFIG, frame_mask=mask))(
      padded_depth, padded_logits, padded, kendall)
  ref_total, ref_aux = losses.multitask_loss(depth, logits, batch, kendall, LOSS_CONFIG)
  np.testing.assert_allclose(total, ref_total, rtol=1e-6)
  for k in ('depth', 'seg', 'edge'):
    np.testing.assert_allclose(aux[k], ref_aux[k], rtol=1e-6, err_msg=k)
  # The edge term over the kept frames is the mean of the loop's terms over their pixels.
  image, d = np.asarray(batch['image']), np.asarray(depth)
  term = lambda a, b: abs(d[a] - d[b]) * np.exp(-np.mean(np.abs(image[a] - image[b])))
  h, w = d.shape[1:]
  sx = [term((f, i, j), (f, i, j + 1)) for f in range(n) for i in range(h) for j in range(w - 1)]
  sy = [term((f, i, j), (f, i + 1, j)) for f in range(n) for i in range(h - 1) for j in range(w)]
  np.testing.assert_allclose(aux['edge'], np.mean(sx) + np.mean(sy), rtol=1e-5)
  no_frame = losses.edge_smoothness(padded_depth, padded['image'], np.zeros(2 * n, bool))
  assert float(no_frame) == 0.0
