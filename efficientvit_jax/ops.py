"""Convolution primitives of the model, with backend-aware formulations.

XLA:CPU differentiates grouped and depthwise convolutions slowly; on CPU the model uses equivalent
formulations built from dense ops (each tested equal to the native one in `tests/test_ops.py`).
On GPU/TPU the native convolutions are used. `set_impl` overrides the choice (benchmarks, tests).

All tensors are NHWC; kernels are HWIO `[kh, kw, in / groups, out]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ('NHWC', 'HWIO', 'NHWC')
_IMPL: str | None = None  # None = by backend; 'native' | 'cpu'


def set_impl(impl: str | None) -> None:
  """Forces 'native' or 'cpu' formulations (None: choose by the default backend)."""
  global _IMPL
  if impl not in (None, 'native', 'cpu'):
    raise ValueError(f"ops impl must be None, 'native' or 'cpu', got {impl!r}")
  _IMPL = impl


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
    if k == 1 and stride == 1 and 1 < groups:
      return grouped_pointwise_einsum(x, kernel, groups=groups)
  p = k // 2
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((p, p), (p, p)), dimension_numbers=_DIMS,
      feature_group_count=groups)


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, *, stride: int = 1) -> jax.Array:
  """Depthwise conv as a sum of k*k shifted slices times per-channel weights.

  x: [N, H, W, C]; kernel: [k, k, 1, C]. Its backward is a handful of elementwise ops, which XLA:CPU
  runs far faster than the backward of a `feature_group_count=C` convolution.
  """
  k = kernel.shape[0]
  p = k // 2
  n, h, w, c = x.shape
  ho, wo = -(-h // stride), -(-w // stride)
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = None
  for i in range(k):
    for j in range(k):
      tap = lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                      (1, stride, stride, 1))
      term = tap * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


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
