"""The reference's multi-task network (docs/model.md), Flax NNX, NHWC: an encoder from the family
`BACKBONES` (timm's EfficientViT B0-B3, torchvision's MobileNetV3-Small), a neck and two
skip-connected decoders sized from the encoder's channels.

Module and attribute names follow the reference's PyTorch names (timm `efficientvit_b*` features,
torchvision `mobilenet_v3_small().features`, the reference decoder), so that `convert.py` maps one
tree onto the other by a short table. Parameters are float32; `dtype` is the compute dtype of
convolutions. BatchNorm, the attention normaliser and the outputs stay float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from efficientvit_jax import backbones
from efficientvit_jax import classes
from efficientvit_jax import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = backbones.BACKBONES
DEFAULT_BACKBONE = backbones.DEFAULT_BACKBONE
encoder_channels = backbones.encoder_channels
NECK_CHANNELS = 128
DECODER_CHANNELS = (64, 32, 16)
ENCODER_KEYS = ('encoder', 'neck')  # the parameters frozen in the reference's first epochs
_MOBILENET_NORM = {'norm_eps': backbones.MOBILENET_BN['eps'], 'norm_momentum': backbones.MOBILENET_BN['momentum']}

_ACTS = {
    None: lambda x: x,
    'relu': jax.nn.relu,
    'hswish': jax.nn.hard_swish,
}


def _uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
  """PyTorch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class Conv(nnx.Module):
  """2-D convolution, PyTorch padding k//2 (explicit, also at stride 2). Kernel [k, k, in/g, out]."""

  def __init__(self, in_ch: int, out_ch: int, kernel_size: int, *, stride: int = 1,
               groups: int = 1, use_bias: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    fan_in = in_ch // groups * kernel_size * kernel_size
    self.kernel = nnx.Param(_uniform(rngs.params(), (kernel_size, kernel_size, in_ch // groups, out_ch), fan_in))
    self.bias = nnx.Param(_uniform(rngs.params(), (out_ch,), fan_in)) if use_bias else None
    self.stride = stride
    self.groups = groups
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = ops.conv2d(x.astype(self.dtype), self.kernel[...].astype(self.dtype), stride=self.stride,
                   groups=self.groups)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class ConvTranspose(nnx.Module):
  """PyTorch `ConvTranspose2d(in, out, 4, stride=2, padding=1)` with bias: doubles H and W.

  Kernel [4, 4, in, out] = torch weight `[in, out, 4, 4].transpose(2, 3, 0, 1)`.
  """

  def __init__(self, in_ch: int, out_ch: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    fan_in = out_ch * 16  # torch computes fan_in from weight.size(1) * k * k for transposed convs
    self.kernel = nnx.Param(_uniform(rngs.params(), (4, 4, in_ch, out_ch), fan_in))
    self.bias = nnx.Param(_uniform(rngs.params(), (out_ch,), fan_in))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = ops.conv_transpose_k4s2(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    return y + self.bias[...].astype(self.dtype)


class BatchNorm(nnx.Module):
  """PyTorch `BatchNorm2d` semantics over N, H, W (eps 1e-5, momentum 0.1).

  Train mode normalises with the biased two-pass batch variance and updates `var` with the unbiased
  one (x n / (n - 1)), exactly as torch does; Flax's own BatchNorm updates with the biased one.
  Under `jit` with the batch sharded, the means are global: XLA inserts the all-reduce.
  """

  def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5):
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.momentum = momentum
    self.eps = eps

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if train:
      mean = x.mean(axis=(0, 1, 2))
      var = jnp.square(x - mean).mean(axis=(0, 1, 2))
      n = x.size // x.shape[-1]
      m = self.momentum
      # set_value, not `[...] =`: Flax's indexed assignment compares the shardings of the traced
      # values, and each such miss on a tracer scans the whole trace so far (quadratic in the model's
      # size: ~1.5 s of every train.py start with B1, measured). The same program either way.
      self.mean.set_value((1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean))
      self.var.set_value((1 - m) * self.var[...] + m * jax.lax.stop_gradient(var) * (n / max(n - 1, 1)))
    else:
      mean, var = self.mean[...], self.var[...]
    mul = self.scale[...] * jax.lax.rsqrt(var + self.eps)
    return ((x - mean) * mul + self.bias[...]).astype(dtype)


class ConvNormAct(nnx.Module):
  """conv -> optional BatchNorm -> optional activation ('relu' | 'hswish' | None)."""

  def __init__(self, in_ch: int, out_ch: int, kernel_size: int, *, stride: int = 1, groups: int = 1,
               use_bias: bool = False, norm: bool = True, act: str | None = None, dtype=jnp.float32,
               norm_eps: float = 1e-5, norm_momentum: float = 0.1, rngs: nnx.Rngs):
    self.conv = Conv(in_ch, out_ch, kernel_size, stride=stride, groups=groups, use_bias=use_bias,
                     dtype=dtype, rngs=rngs)
    self.norm = BatchNorm(out_ch, eps=norm_eps, momentum=norm_momentum) if norm else None
    self.act = act

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = self.conv(x)
    if self.norm is not None:
      x = self.norm(x, train)
    return _ACTS[self.act](x)


class DSConv(nnx.Module):
  """Depthwise 3x3 +BN +Hardswish, pointwise 1x1 +BN (the stem's residual block)."""

  def __init__(self, ch: int, *, dtype, rngs: nnx.Rngs):
    self.depth_conv = ConvNormAct(ch, ch, 3, groups=ch, act='hswish', dtype=dtype, rngs=rngs)
    self.point_conv = ConvNormAct(ch, ch, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return self.point_conv(self.depth_conv(x, train), train)


class MBConv(nnx.Module):
  """1x1 expand +act, depthwise 3x3 (stride) +act, 1x1 project +BN.

  `fewer_norm` (stages 2-3): the first two convs have a bias and no BatchNorm.
  """

  def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, fewer_norm: bool = False, dtype,
               rngs: nnx.Rngs):
    mid = in_ch * backbones.EXPAND_RATIO
    self.inverted_conv = ConvNormAct(in_ch, mid, 1, use_bias=fewer_norm, norm=not fewer_norm,
                                     act='hswish', dtype=dtype, rngs=rngs)
    self.depth_conv = ConvNormAct(mid, mid, 3, stride=stride, groups=mid, use_bias=fewer_norm,
                                  norm=not fewer_norm, act='hswish', dtype=dtype, rngs=rngs)
    self.point_conv = ConvNormAct(mid, out_ch, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = self.inverted_conv(x, train)
    x = self.depth_conv(x, train)
    return self.point_conv(x, train)


class LiteMLA(nnx.Module):
  """Lightweight multi-scale linear attention (heads of `head_dim` channels, one 5x5 aggregation scale)."""

  def __init__(self, ch: int, *, head_dim: int, dtype, rngs: nnx.Rngs):
    heads = ch // head_dim
    total = 3 * heads * head_dim
    self.head_dim = head_dim
    self.qkv = ConvNormAct(ch, total, 1, norm=False, dtype=dtype, rngs=rngs)
    # Mirrors timm's ModuleList([Sequential(depthwise 5x5, grouped 1x1)]): `aggreg.0.0`, `aggreg.0.1`.
    self.aggreg = nnx.List([nnx.List([
        Conv(total, total, 5, groups=total, dtype=dtype, rngs=rngs),
        Conv(total, total, 1, groups=3 * heads, dtype=dtype, rngs=rngs),
    ])])
    self.proj = ConvNormAct(2 * heads * head_dim, ch, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    n, h, w, _ = x.shape
    d = self.head_dim
    qkv = self.qkv(x, train)
    scales = [qkv] + [pw(dw(qkv)) for dw, pw in self.aggreg]
    # Channels group-major: group g holds q, k, v of one head at channels g*3d + (0..d-1, d..2d-1, 2d..3d-1).
    qkv = jnp.concatenate(scales, axis=-1).reshape(n, h * w, -1, 3 * d).astype(jnp.float32)
    q = jax.nn.relu(qkv[..., :d])
    k = jax.nn.relu(qkv[..., d:2 * d])
    v = qkv[..., 2 * d:]
    kv = jnp.einsum('nmgd,nmge->ngde', k, v)  # [N, G, d, d]
    num = jnp.einsum('nmgd,ngde->nmge', q, kv)
    den = jnp.einsum('nmgd,ngd->nmg', q, k.sum(axis=1))[..., None]
    out = (num / (den + 1e-5)).astype(x.dtype).reshape(n, h, w, -1)
    return self.proj(out, train)


class ResidualBlock(nnx.Module):
  """`main(x) + x` when `shortcut`, else `main(x)` (timm's ResidualBlock with Identity / None)."""

  def __init__(self, main: nnx.Module, shortcut: bool):
    self.main = main
    self.shortcut = shortcut

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.main(x, train)
    return y + x if self.shortcut else y


class EfficientVitBlock(nnx.Module):
  """`x + LiteMLA(x)` then `x + MBConv(x)` (fewer-norm MBConv)."""

  def __init__(self, ch: int, *, head_dim: int, dtype, rngs: nnx.Rngs):
    self.context_module = ResidualBlock(LiteMLA(ch, head_dim=head_dim, dtype=dtype, rngs=rngs), shortcut=True)
    self.local_module = ResidualBlock(
        MBConv(ch, ch, fewer_norm=True, dtype=dtype, rngs=rngs), shortcut=True)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return self.local_module(self.context_module(x, train), train)


class Stage(nnx.Module):
  """Block 0: stride-2 MBConv without residual; then residual MBConvs or EfficientViT blocks."""

  def __init__(self, in_ch: int, out_ch: int, depth: int, *, vit: bool, head_dim: int, dtype,
               rngs: nnx.Rngs):
    blocks = [ResidualBlock(MBConv(in_ch, out_ch, stride=2, fewer_norm=vit, dtype=dtype, rngs=rngs),
                            shortcut=False)]
    for _ in range(depth if vit else depth - 1):
      if vit:
        blocks.append(EfficientVitBlock(out_ch, head_dim=head_dim, dtype=dtype, rngs=rngs))
      else:
        blocks.append(ResidualBlock(MBConv(out_ch, out_ch, dtype=dtype, rngs=rngs), shortcut=True))
    self.blocks = nnx.List(blocks)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for block in self.blocks:
      x = block(x, train)
    return x


class EfficientVit(nnx.Module):
  """timm `efficientvit_b0..b3` with `features_only=True`: 4 maps at strides 4, 8, 16, 32."""

  def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], head_dim: int, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    w, d = widths, depths
    self.stem_in_conv = ConvNormAct(3, w[0], 3, stride=2, act='hswish', dtype=dtype, rngs=rngs)
    self.stem_depth = d[0]
    for i in range(d[0]):
      setattr(self, f'stem_res{i}', ResidualBlock(DSConv(w[0], dtype=dtype, rngs=rngs), shortcut=True))
    for i in range(4):
      setattr(self, f'stages_{i}', Stage(w[i], w[i + 1], d[i + 1], vit=i >= 2, head_dim=head_dim, dtype=dtype,
                                         rngs=rngs))

  def __call__(self, x: jax.Array, train: bool) -> list[jax.Array]:
    """x: [N, H, W, 3] normalised -> [N, H/4, W/4, w1], [../8, w2], [../16, w3], [../32, w4]."""
    x = self.stem_in_conv(x, train)
    for i in range(self.stem_depth):
      x = getattr(self, f'stem_res{i}')(x, train)
    features = []
    for i in range(4):
      x = getattr(self, f'stages_{i}')(x, train)
      features.append(x)
    return features


class SqueezeExcitation(nnx.Module):
  """torchvision's SE: x * hardsigmoid(fc2(relu(fc1(mean over H, W of x)))), fc1/fc2 1x1 convs with bias."""

  def __init__(self, ch: int, squeeze: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = Conv(ch, squeeze, 1, use_bias=True, dtype=dtype, rngs=rngs)
    self.fc2 = Conv(squeeze, ch, 1, use_bias=True, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train
    pooled = x.astype(jnp.float32).mean(axis=(1, 2), keepdims=True).astype(x.dtype)  # [N, 1, 1, C]
    scale = jax.nn.hard_sigmoid(self.fc2(jax.nn.relu(self.fc1(pooled))))
    return x * scale.astype(x.dtype)


class InvertedResidual(nnx.Module):
  """torchvision's MobileNetV3 block: `block` = [1x1 expand +BN +act (if expanded)], depthwise kxk
  (stride) +BN +act, [SE], 1x1 project +BN; `+ x` when stride 1 and the channels stay."""

  def __init__(self, in_ch: int, kernel: int, expanded: int, out_ch: int, use_se: bool, act: str,
               stride: int, *, dtype, rngs: nnx.Rngs):
    layers = []
    if expanded != in_ch:
      layers.append(ConvNormAct(in_ch, expanded, 1, act=act, dtype=dtype, rngs=rngs, **_MOBILENET_NORM))
    layers.append(ConvNormAct(expanded, expanded, kernel, stride=stride, groups=expanded, act=act, dtype=dtype,
                              rngs=rngs, **_MOBILENET_NORM))
    if use_se:
      layers.append(SqueezeExcitation(expanded, backbones.make_divisible(expanded // 4), dtype=dtype, rngs=rngs))
    layers.append(ConvNormAct(expanded, out_ch, 1, dtype=dtype, rngs=rngs, **_MOBILENET_NORM))
    self.block = nnx.List(layers)
    self.residual = stride == 1 and in_ch == out_ch

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = x
    for layer in self.block:
      y = layer(y, train)
    return y + x if self.residual else y


class MobileNetV3Small(nnx.Module):
  """torchvision `mobilenet_v3_small().features` (13 blocks); returns the outputs of blocks 1, 3, 4
  and 12: 16, 24, 40, 576 channels at strides 4, 8, 16, 32."""

  def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
    layers = [ConvNormAct(3, backbones.MOBILENET_STEM, 3, stride=2, act='hswish', dtype=dtype, rngs=rngs,
                          **_MOBILENET_NORM)]
    ch = backbones.MOBILENET_STEM
    for kernel, expanded, out_ch, use_se, act, stride in backbones.MOBILENET_V3_SMALL:
      layers.append(InvertedResidual(ch, kernel, expanded, out_ch, use_se, act, stride, dtype=dtype, rngs=rngs))
      ch = out_ch
    layers.append(ConvNormAct(ch, 6 * ch, 1, act='hswish', dtype=dtype, rngs=rngs, **_MOBILENET_NORM))
    self.features = nnx.List(layers)

  def __call__(self, x: jax.Array, train: bool) -> list[jax.Array]:
    """x: [N, H, W, 3] normalised -> [N, H/4, W/4, 16], [../8, 24], [../16, 40], [../32, 576]."""
    features = []
    for i, layer in enumerate(self.features):
      x = layer(x, train)
      if i in backbones.MOBILENET_SKIPS:
        features.append(x)
    return features + [x]


def make_encoder(backbone: str, *, dtype=jnp.float32, rngs: nnx.Rngs) -> EfficientVit | MobileNetV3Small:
  """The encoder named `backbone` (one of `BACKBONES`)."""
  if backbone in backbones.EFFICIENTVIT:
    return EfficientVit(*backbones.EFFICIENTVIT[backbone], dtype=dtype, rngs=rngs)
  if backbone == 'mobilenet_v3_small':
    return MobileNetV3Small(dtype=dtype, rngs=rngs)
  raise ValueError(f'unknown backbone {backbone!r}; one of {", ".join(BACKBONES)}')


class DecoderBlock(nnx.Module):
  """relu(BN(ConvTranspose(x))), bilinear to the skip's size if needed, concat, conv3x3 +BN +ReLU."""

  def __init__(self, in_ch: int, skip_ch: int, out_ch: int, *, dtype, rngs: nnx.Rngs):
    self.up = ConvTranspose(in_ch, out_ch, dtype=dtype, rngs=rngs)
    self.bn = BatchNorm(out_ch)
    self.fuse = ConvNormAct(out_ch + skip_ch, out_ch, 3, use_bias=True, act='relu', dtype=dtype,
                            rngs=rngs)

  def __call__(self, x: jax.Array, skip: jax.Array, train: bool) -> jax.Array:
    x = jax.nn.relu(self.bn(self.up(x), train))
    x = ops.resize_bilinear(x, skip.shape[1:3])
    return self.fuse(jnp.concatenate([x, skip.astype(x.dtype)], axis=-1), train)


class DepthSegNet(nnx.Module):
  """The reference's multi-task student: metric depth + `num_classes` segmentation logits.

  `model(image, train=...)` with image `[N, H, W, 3]` float RGB in [0, 1] (any H, W >= 32) returns
  `{'depth': [N, H, W] float32 metres >= 0, 'seg_logits': [N, H, W, C] float32}`. The neck maps the
  encoder's last output to 128 channels; decoder block i upsamples to `DECODER_CHANNELS[i]` and
  fuses the encoder output of the same stride.
  """

  def __init__(self, *, backbone: str = DEFAULT_BACKBONE, num_classes: int = classes.NUM_CLASSES,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.backbone = backbone
    self.encoder = make_encoder(backbone, dtype=dtype, rngs=rngs)
    skips = encoder_channels(backbone)
    self.neck = ConvNormAct(skips[3], NECK_CHANNELS, 1, use_bias=True, act='relu', dtype=dtype, rngs=rngs)
    for task in ('depth', 'seg'):
      ch = NECK_CHANNELS
      for i, (out_ch, skip_ch) in enumerate(zip(DECODER_CHANNELS, skips[2::-1]), start=1):
        setattr(self, f'{task}_d{i}', DecoderBlock(ch, skip_ch, out_ch, dtype=dtype, rngs=rngs))
        ch = out_ch
    self.depth_head = Conv(DECODER_CHANNELS[-1], 1, 1, use_bias=True, dtype=dtype, rngs=rngs)
    self.seg_head = Conv(DECODER_CHANNELS[-1], num_classes, 1, use_bias=True, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def features(self, image: jax.Array, train: bool = False) -> list[jax.Array]:
    """The encoder's four feature maps (NHWC) for an image in [0, 1]."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    x = (image.astype(jnp.float32) - mean) / std
    return self.encoder(x.astype(self.dtype), train)

  def __call__(self, image: jax.Array, *, train: bool = False,
               encoder_train: bool | None = None) -> dict[str, jax.Array]:
    """`encoder_train` (default: `train`) sets the encoder's and neck's BatchNorm mode alone."""
    size = image.shape[1:3]
    encoder_train = train if encoder_train is None else encoder_train
    skips = self.features(image, encoder_train)
    feat = self.neck(skips[3], encoder_train)
    outputs = {}
    for task in ('depth', 'seg'):
      x = feat
      for i, skip in zip((1, 2, 3), (skips[2], skips[1], skips[0])):
        x = getattr(self, f'{task}_d{i}')(x, skip, train)
      # The reference resizes the 16 channels, then applies the 1x1 head. Both are linear per
      # pixel and the bilinear weights sum to 1 (bias included), so they commute: resizing the
      # head's 1 or 6 channels gives the same outputs for a fraction of the work.
      x = getattr(self, f'{task}_head')(x)
      outputs[task] = ops.resize_bilinear(x, size).astype(jnp.float32)
    return {'depth': jax.nn.relu(outputs['depth'][..., 0]), 'seg_logits': outputs['seg']}


def create(*, backbone: str = DEFAULT_BACKBONE, num_classes: int = classes.NUM_CLASSES, dtype=jnp.float32,
           seed: int = 0) -> DepthSegNet:
  """A freshly initialised model (PyTorch default init, BN scale 1 / bias 0 / mean 0 / var 1)."""
  return DepthSegNet(backbone=backbone, num_classes=num_classes, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(seed))
