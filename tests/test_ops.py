"""Each backend-specific formulation equals the native XLA op, in value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from efficientvit_jax import ops


def _native_conv(x, k, stride, groups):
  p = k.shape[0] // 2
  return lax.conv_general_dilated(x, k, (stride, stride), ((p, p), (p, p)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


def _native_transpose(x, k):
  return lax.conv_general_dilated(x, k[::-1, ::-1], (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _check(f, g, *args):
  np.testing.assert_allclose(f(*args), g(*args), rtol=1e-5, atol=1e-5)
  loss = lambda fn: (lambda *a: jnp.sum(jnp.sin(fn(*a))))
  for ga, gb in zip(jax.grad(loss(f), argnums=(0, 1))(*args), jax.grad(loss(g), argnums=(0, 1))(*args)):
    np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('k,stride,size', [(3, 1, (9, 12)), (3, 2, (9, 12)), (3, 2, (8, 11)), (5, 1, (7, 5))])
def test_depthwise(k, stride, size):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, *size, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 1, 6)), jnp.float32)
  _check(lambda x, w: ops.depthwise_conv_shifted(x, w, stride=stride),
         lambda x, w: _native_conv(x, w, stride, 6), x, w)


def test_grouped_pointwise():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 5, 7, 24)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(1, 1, 8, 24)), jnp.float32)  # 3 groups of 8 -> 8
  _check(lambda x, w: ops.grouped_pointwise_einsum(x, w, groups=3), lambda x, w: _native_conv(x, w, 1, 3), x, w)


@pytest.mark.parametrize('size', [(4, 5), (1, 1)])
def test_conv_transpose(size):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, *size, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 4, 6, 3)), jnp.float32)
  _check(ops.conv_transpose_k4s2_phases, _native_transpose, x, w)


def test_dispatch_by_impl():
  x = jnp.ones((1, 8, 8, 4))
  w = jnp.ones((3, 3, 1, 4))
  try:
    for impl in ('native', 'cpu'):
      ops.set_impl(impl)
      assert ops.impl() == impl
      np.testing.assert_allclose(ops.conv2d(x, w, stride=2, groups=4), _native_conv(x, w, 2, 4), rtol=1e-6)
  finally:
    ops.set_impl(None)
  with pytest.raises(ValueError, match='ops impl'):
    ops.set_impl('gpu')
