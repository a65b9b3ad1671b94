"""Convolution and resize primitives of the model, with backend-aware formulations.

XLA:CPU runs some of the model's ops, and above all their gradients, far slower than the same
arithmetic written another way; on CPU the model uses these equivalent formulations (each tested
equal to the native op, value and gradient, in `tests/test_ops.py`):

- depthwise kxk: k*k shifted slices x per-channel weights, with a hand-written VJP (the native
  `feature_group_count=C` conv and its transpose are slow; autodiff of the slices saves every tap);
- 1x1: one matrix product `[N*H*W, Cin] @ [Cin, Cout]` (the conv's weight gradient transposes both
  operands first);
- grouped 1x1: a block einsum (as above, per group);
- ConvTranspose k4 s2: four 2x2 convs (one per output phase) + depth-to-space (the input-dilated
  conv's gradient is ~15x its forward).

Dense kxk convolutions stay native everywhere. On GPU/TPU every op is native (cuDNN and the TPU
compiler handle grouped convolutions well). `with formulation('native' | 'cpu'):` overrides the
choice while tracing inside the block (export, benchmarks, tests).

All tensors are NHWC; kernels are HWIO `[kh, kw, in / groups, out]`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ('NHWC', 'HWIO', 'NHWC')
_IMPL: str | None = None  # None = by backend; 'native' | 'cpu'; set only by `formulation`


@contextlib.contextmanager
def formulation(impl: str | None) -> Iterator[None]:
  """Within the block, ops traced use the 'native' or 'cpu' formulations (None: chosen by the
  default backend); the previous choice is back on exit. Jitted functions traced before keep theirs."""
  global _IMPL
  if impl not in (None, 'native', 'cpu'):
    raise ValueError(f"ops impl must be None, 'native' or 'cpu', got {impl!r}")
  previous, _IMPL = _IMPL, impl
  try:
    yield
  finally:
    _IMPL = previous


def impl() -> str:
  """The formulation used when tracing: 'cpu' on the CPU backend, else 'native'."""
  if _IMPL is not None:
    return _IMPL
  return 'cpu' if jax.default_backend() == 'cpu' else 'native'


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, groups: int = 1) -> jax.Array:
  """PyTorch-style conv: padding k//2 on both sides (also at stride 2), `groups` groups.

  x: [N, H, W, Cin]; kernel: [k, k, Cin / groups, Cout] -> [N, ceil(H / stride), ..., Cout].
  """
  k = kernel.shape[0]
  cin = x.shape[-1]
  if impl() == 'cpu':
    if groups == cin and kernel.shape[2] == 1 and kernel.shape[3] == cin:
      return depthwise_conv_shifted(x, kernel, stride=stride)
    if k == 1 and stride == 1:
      if groups == 1:
        return pointwise_conv_dot(x, kernel)
      return grouped_pointwise_einsum(x, kernel, groups=groups)
  p = k // 2
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((p, p), (p, p)), dimension_numbers=_DIMS,
      feature_group_count=groups)


def pointwise_conv_dot(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """1x1 conv as one matrix product. x: [N, H, W, Cin]; kernel: [1, 1, Cin, Cout]."""
  n, h, w, c = x.shape
  return (x.reshape(n * h * w, c) @ kernel[0, 0]).reshape(n, h, w, kernel.shape[-1])


def _correlate(xp: jax.Array, kernel: jax.Array, stride: int, out_hw: tuple[int, int]) -> jax.Array:
  """sum_ij xp[:, stride * h + i, stride * w + j] * kernel[i, j, 0]: one fused elementwise loop.

  xp: [N, Hp, Wp, C] already padded; kernel: [k, k, 1, C] -> [N, out_h, out_w, C].
  """
  n, _, _, c = xp.shape
  k = kernel.shape[0]
  ho, wo = out_hw
  out = None
  for i in range(k):
    for j in range(k):
      tap = lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                      (1, stride, stride, 1))
      term = tap * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def _pad_hw(x: jax.Array, p: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  h, w = x.shape[1:3]
  return _correlate(_pad_hw(x, kernel.shape[0] // 2), kernel, stride, (-(-h // stride), -(-w // stride)))


def _depthwise_fwd(x, kernel, stride):
  h, w = x.shape[1:3]
  xp = _pad_hw(x, kernel.shape[0] // 2)
  return _correlate(xp, kernel, stride, (-(-h // stride), -(-w // stride))), (xp, kernel)


def _depthwise_bwd(stride, residuals, g):
  xp, kernel = residuals
  k = kernel.shape[0]
  p = k // 2
  n, hp, wp, c = xp.shape
  h, w = hp - 2 * p, wp - 2 * p
  ho, wo = g.shape[1:3]
  # Input gradient: a stride-1 correlation of g (dilated by the stride, padded by p) with the
  # flipped kernel, i.e. gq[u] = g[(u - p) / stride] where that is an integer, else 0.
  gq = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (p, h + p - (ho - 1) * stride - 1, stride - 1),
                                           (p, w + p - (wo - 1) * stride - 1, stride - 1), (0, 0, 0)))
  dx = _correlate(gq, kernel[::-1, ::-1], 1, (h, w))
  # Kernel gradient: per tap, the sum over N, H, W of the forward's tap times g. The batch is
  # summed first by a tree of adds, which XLA fuses into one pass over the tap and g (its own
  # reduction of a fused product is several times slower, and YNNPACK's would copy every tap).
  dk = []
  for i in range(k):
    for j in range(k):
      tap = lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                      (1, stride, stride, 1))
      dk.append(jnp.sum(_sum_batch(tap.astype(jnp.float32) * g.astype(jnp.float32)), axis=(0, 1)))
  return dx, jnp.stack(dk).reshape(kernel.shape).astype(kernel.dtype)


def _sum_batch(y: jax.Array) -> jax.Array:
  """y.sum(axis=0) as a tree of elementwise adds of halves: [N, ...] -> [...]."""
  while y.shape[0] > 1:
    half = y.shape[0] // 2
    total = y[:half] + y[half:2 * half]
    if y.shape[0] % 2:
      total = jnp.concatenate([total[:1] + y[-1:], total[1:]])
    y = total
  return y[0]


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, *, stride: int = 1) -> jax.Array:
  """Depthwise conv as a sum of k*k shifted slices times per-channel weights (odd k).

  x: [N, H, W, C]; kernel: [k, k, 1, C] -> [N, ceil(H / stride), ceil(W / stride), C]. The VJP is
  written out: autodiff of the slices would keep all k*k taps for the backward (k*k copies of the
  input) and sum k*k padded gradients; here only the padded input is kept, the input gradient is
  one correlation and the kernel gradient k*k reductions.
  """
  return _depthwise(x, kernel, stride)


def grouped_pointwise_einsum(x: jax.Array, kernel: jax.Array, *, groups: int) -> jax.Array:
  """Grouped 1x1 conv as a block einsum. x: [N, H, W, C]; kernel: [1, 1, C / groups, Cout]."""
  n, h, w, c = x.shape
  cin_g = c // groups
  cout = kernel.shape[-1]
  xg = x.reshape(n, h, w, groups, cin_g)
  kg = kernel.reshape(cin_g, groups, cout // groups)  # output channel o = g * (cout / groups) + j
  y = jnp.einsum('nhwgi,igj->nhwgj', xg, kg)
  return y.reshape(n, h, w, cout)


def conv_transpose_k4s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """PyTorch `ConvTranspose2d(k=4, stride=2, padding=1)`: [N, H, W, Cin] -> [N, 2H, 2W, Cout].

  kernel: [4, 4, Cin, Cout] = torch weight `[Cin, Cout, 4, 4].transpose(2, 3, 0, 1)` (unflipped).
  """
  if impl() == 'cpu':
    return conv_transpose_k4s2_phases(x, kernel)
  return lax.conv_general_dilated(
      x, kernel[::-1, ::-1], (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2), dimension_numbers=_DIMS)


def conv_transpose_k4s2_phases(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The same transposed conv as four 2x2 convolutions (one per output phase) + depth-to-space.

  Output pixel (2m + a, 2n + b) only sees input rows m - 1 + a .. m + a and the kernel taps
  3 - a - 2r (r = 0, 1); computing each phase densely skips the zeros that input dilation inserts.
  """
  n, h, w, cin = x.shape
  cout = kernel.shape[-1]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = []
  for a in (0, 1):
    cols = []
    for b in (0, 1):
      # Taps for r, s = 0, 1 at kernel rows 3 - a - 2r, cols 3 - b - 2s.
      k = kernel[jnp.array([3 - a, 1 - a])][:, jnp.array([3 - b, 1 - b])]
      window = lax.slice(xp, (0, a, b, 0), (n, a + h + 1, b + w + 1, cin))
      cols.append(lax.conv_general_dilated(window, k, (1, 1), 'VALID', dimension_numbers=_DIMS))
    rows.append(jnp.stack(cols, axis=3))  # [N, H, W, 2(b), Cout]
  y = jnp.stack(rows, axis=2)  # [N, H, 2(a), W, 2(b), Cout]
  return y.reshape(n, 2 * h, 2 * w, cout)


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """PyTorch `interpolate(mode='bilinear', align_corners=False)` up and down: [N, H, W, C]."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), 'bilinear', antialias=False)
