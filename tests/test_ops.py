"""Each backend-specific formulation equals the native XLA op, in value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from efficientvit_jax import model as model_lib
from efficientvit_jax import ops


def _native_conv(x, k, stride, groups):
  p = k.shape[0] // 2
  return lax.conv_general_dilated(x, k, (stride, stride), ((p, p), (p, p)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


def _native_transpose(x, k):
  return lax.conv_general_dilated(x, k[::-1, ::-1], (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _check(f, g, *args, rtol=1e-5):
  np.testing.assert_allclose(f(*args), g(*args), rtol=rtol, atol=rtol)
  # A non-linear loss so that the cotangent differs per element.
  loss = lambda fn: (lambda *a: jnp.sum(jnp.sin(fn(*a))))
  grads_f = jax.jit(jax.grad(loss(f), argnums=(0, 1)))(*args)
  grads_g = jax.jit(jax.grad(loss(g), argnums=(0, 1)))(*args)
  for ga, gb in zip(grads_f, grads_g):
    np.testing.assert_allclose(ga, gb, rtol=10 * rtol, atol=10 * rtol)


def _normal(rng, *shape):
  return jnp.asarray(rng.normal(size=shape), jnp.float32)


@pytest.mark.parametrize('k,stride,size,batch', [
    (3, 1, (9, 12), 2), (3, 2, (9, 12), 3), (3, 2, (8, 11), 1), (5, 1, (7, 5), 5), (5, 2, (6, 7), 2),
    (3, 1, (1, 1), 2)])
def test_depthwise(k, stride, size, batch):
  rng = np.random.default_rng(0)
  x = _normal(rng, batch, *size, 6)
  w = _normal(rng, k, k, 1, 6)
  _check(lambda x, w: ops.depthwise_conv_shifted(x, w, stride=stride),
         lambda x, w: _native_conv(x, w, stride, 6), x, w)


def test_depthwise_bfloat16_kernel_gradient_accumulates_in_float32():
  rng = np.random.default_rng(3)
  x = _normal(rng, 8, 16, 16, 4)
  w = _normal(rng, 3, 3, 1, 4)
  loss = lambda conv: (lambda w: jnp.sum(conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)).astype(jnp.float32)))
  ours = jax.grad(loss(lambda x, w: ops.depthwise_conv_shifted(x, w)))(w)
  exact = jax.grad(loss(lambda x, w: _native_conv(x.astype(jnp.float32), w.astype(jnp.float32), 1, 4)))(w)
  assert ours.dtype == jnp.float32
  np.testing.assert_allclose(ours, exact, rtol=2e-2, atol=0.5)


@pytest.mark.parametrize('cin,cout', [(8, 24), (24, 8)])
def test_pointwise(cin, cout):
  rng = np.random.default_rng(1)
  x = _normal(rng, 2, 5, 7, cin)
  w = _normal(rng, 1, 1, cin, cout)
  _check(ops.pointwise_conv_dot, lambda x, w: _native_conv(x, w, 1, 1), x, w)


def test_grouped_pointwise():
  rng = np.random.default_rng(1)
  x = _normal(rng, 2, 5, 7, 24)
  w = _normal(rng, 1, 1, 8, 24)  # 3 groups of 8 -> 8
  _check(lambda x, w: ops.grouped_pointwise_einsum(x, w, groups=3), lambda x, w: _native_conv(x, w, 1, 3), x, w)


@pytest.mark.parametrize('size', [(4, 5), (1, 1)])
def test_conv_transpose(size):
  rng = np.random.default_rng(2)
  x = _normal(rng, 2, *size, 6)
  w = _normal(rng, 4, 4, 6, 3)
  _check(ops.conv_transpose_k4s2_phases, _native_transpose, x, w)


def test_dispatch_by_impl():
  rng = np.random.default_rng(4)
  x = _normal(rng, 1, 8, 8, 4)
  cases = [(_normal(rng, 3, 3, 1, 4), 2, 4), (_normal(rng, 1, 1, 4, 6), 1, 1),
           (_normal(rng, 1, 1, 2, 4), 1, 2), (_normal(rng, 3, 3, 4, 5), 2, 1)]
  by_backend = 'cpu' if jax.default_backend() == 'cpu' else 'native'
  for impl in ('native', 'cpu'):
    with ops.formulation(impl):
      assert ops.impl() == impl
      with ops.formulation(None):  # nested: by backend inside, this block's choice after
        assert ops.impl() == by_backend
      assert ops.impl() == impl
      for w, stride, groups in cases:
        np.testing.assert_allclose(ops.conv2d(x, w, stride=stride, groups=groups),
                                   _native_conv(x, w, stride, groups), rtol=1e-5, atol=1e-5)
  assert ops.impl() == by_backend
  with pytest.raises(RuntimeError), ops.formulation('native'):  # an error inside: the choice is restored
    raise RuntimeError
  assert ops.impl() == by_backend
  with pytest.raises(ValueError, match='ops impl'), ops.formulation('gpu'):
    pass


@pytest.mark.e2e
def test_model_train_step_same_under_both_impls():
  """Train-mode outputs, parameter gradients and BatchNorm updates agree across formulations."""
  image = jnp.asarray(np.random.default_rng(5).uniform(size=(2, 64, 96, 3)), jnp.float32)
  model = model_lib.create(seed=1)
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

  def loss(params, stats):
    m = nnx.merge(graphdef, params, stats, copy=True)
    out = m(image, train=True)
    value = jnp.mean(out['depth'] ** 2) + jnp.mean(jnp.sin(out['seg_logits']))
    return value, (out, nnx.state(m, nnx.BatchStat))

  results = {}
  for impl in ('native', 'cpu'):
    with ops.formulation(impl):
      results[impl] = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, stats)
  (_, (out_n, stats_n)), grads_n = results['native']
  (_, (out_c, stats_c)), grads_c = results['cpu']
  for key in out_n:
    np.testing.assert_allclose(out_c[key], out_n[key], rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(stats_c), jax.tree.leaves(stats_n)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  flat_n = jax.tree.leaves(grads_n)
  flat_c = jax.tree.leaves(grads_c)
  assert len(flat_n) == len(flat_c)
  # Relative to the largest gradient: conv biases followed by BatchNorm have a gradient that is
  # zero in exact arithmetic, i.e. rounding noise of either formulation.
  scale = max(float(jnp.max(jnp.abs(b))) for b in flat_n)
  for a, b in zip(flat_c, flat_n):
    np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=1e-4)
