"""PyTorch twin of the reference network, without timm or torchvision.

An encoder of the family (timm `efficientvit_b0..b3` with `features_only=True`, or torchvision
`mobilenet_v3_small().features` with the reference's skips) plus the reference's neck, two
skip-connected decoders and heads (`models/student.py`). Module attribute names are chosen so that
`DepthSegNet(backbone=...).state_dict()` has exactly the reference's keys in its order (358 for
B1), e.g. `encoder.stages_2.blocks.1.context_module.main.aggreg.0.0.weight`,
`encoder.4.block.2.fc1.weight`, `depth_d1.fuse.1.running_var`.

It serves as the oracle for the JAX model in tests, as the target layout of `orbax-to-torch` and
as the baseline of `benchmarks/train_step.py --torch`. Only torch and `backbones.py` (the
encoders' sizes as plain data, shared with the Flax model) are imported here; the rest of the
package imports this module lazily.

Usage:
  model = load_reference('student.pt')  # eval mode; the backbone from the file
  depth, seg_logits = model(image)  # image [N, 3, H, W] float32 in [0, 1]
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from efficientvit_jax import backbones

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = backbones.BACKBONES
DEFAULT_BACKBONE = backbones.DEFAULT_BACKBONE


class ConvNormAct(nn.Module):
  """Conv (padding k//2, also at stride 2) -> optional BatchNorm -> optional activation."""

  def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
               bias: bool = False, norm: bool = True, act: type[nn.Module] | None = None):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias)
    self.norm = nn.BatchNorm2d(cout) if norm else nn.Identity()
    self.act = act() if act is not None else nn.Identity()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.act(self.norm(self.conv(x)))


class DSConv(nn.Module):
  """Depthwise 3x3 +BN +Hardswish, then pointwise 1x1 +BN."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.depth_conv = ConvNormAct(cin, cin, 3, groups=cin, act=nn.Hardswish)
    self.point_conv = ConvNormAct(cin, cout, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
  """Inverted bottleneck: 1x1 expand, depthwise 3x3 (stride), 1x1 project +BN.

  `fewer_norm` (stages 2-3): the first two convs have a bias and no BatchNorm.
  """

  def __init__(self, cin: int, cout: int, stride: int = 1, expand_ratio: int = backbones.EXPAND_RATIO,
               fewer_norm: bool = False):
    super().__init__()
    mid = cin * expand_ratio
    self.inverted_conv = ConvNormAct(cin, mid, 1, bias=fewer_norm, norm=not fewer_norm,
                                     act=nn.Hardswish)
    self.depth_conv = ConvNormAct(mid, mid, 3, stride, groups=mid, bias=fewer_norm,
                                  norm=not fewer_norm, act=nn.Hardswish)
    self.point_conv = ConvNormAct(mid, cout, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class LiteMLA(nn.Module):
  """Multi-scale ReLU linear attention (heads of `dim` channels, one 5x5 aggregation scale)."""

  def __init__(self, channels: int, dim: int, eps: float = 1e-5):
    super().__init__()
    heads = channels // dim
    total = heads * dim
    self.dim, self.eps = dim, eps
    self.qkv = ConvNormAct(channels, 3 * total, 1, norm=False)
    self.aggreg = nn.ModuleList([nn.Sequential(
        nn.Conv2d(3 * total, 3 * total, 5, padding=2, groups=3 * total, bias=False),
        nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
    )])
    self.proj = ConvNormAct(2 * total, channels, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H, W]."""
    b, _, h, w = x.shape
    qkv = self.qkv(x)
    qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
    # [B, groups, H*W, 3*dim]; within a group: q, k, v of `dim` channels each.
    qkv = qkv.reshape(b, -1, 3 * self.dim, h * w).transpose(-1, -2)
    q, k, v = qkv.chunk(3, dim=-1)
    q, k = F.relu(q), F.relu(k)
    # The column of ones makes the last output column the normaliser q . sum_m k_m.
    v = F.pad(v, (0, 1), mode='constant', value=1.0)
    dtype = v.dtype
    with torch.autocast(device_type=v.device.type, enabled=False):
      q, k, v = q.float(), k.float(), v.float()
      out = q @ (k.transpose(-1, -2) @ v)
      out = (out[..., :-1] / (out[..., -1:] + self.eps)).to(dtype)
    return self.proj(out.transpose(-1, -2).reshape(b, -1, h, w))


class ResidualBlock(nn.Module):
  """`main(x) + x`, or just `main(x)` without a shortcut."""

  def __init__(self, main: nn.Module, shortcut: bool = True):
    super().__init__()
    self.main = main
    self.shortcut = shortcut

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.main(x) + x if self.shortcut else self.main(x)


class EfficientVitBlock(nn.Module):
  """`x + LiteMLA(x)`, then `x + MBConv(x)` (fewer-norm MBConv)."""

  def __init__(self, channels: int, head_dim: int):
    super().__init__()
    self.context_module = ResidualBlock(LiteMLA(channels, head_dim))
    self.local_module = ResidualBlock(MBConv(channels, channels, fewer_norm=True))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.local_module(self.context_module(x))


class EfficientVitStage(nn.Module):
  """Stride-2 MBConv without residual, then residual MBConvs or EfficientViT blocks."""

  def __init__(self, cin: int, cout: int, depth: int, vit_stage: bool, head_dim: int):
    super().__init__()
    blocks = [ResidualBlock(MBConv(cin, cout, stride=2, fewer_norm=vit_stage), shortcut=False)]
    if vit_stage:
      blocks += [EfficientVitBlock(cout, head_dim) for _ in range(depth)]
    else:
      blocks += [ResidualBlock(MBConv(cout, cout)) for _ in range(depth - 1)]
    self.blocks = nn.Sequential(*blocks)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.blocks(x)


class EfficientVitEncoder(nn.Module):
  """timm `efficientvit_b*` as `features_only`: stem, then 4 stages whose outputs are returned."""

  def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], head_dim: int):
    super().__init__()
    self.stem_in_conv = ConvNormAct(3, widths[0], 3, stride=2, act=nn.Hardswish)
    self.stem_depth = depths[0]
    for i in range(depths[0]):
      self.add_module(f'stem_res{i}', ResidualBlock(DSConv(widths[0], widths[0])))
    for i, (cin, cout, depth) in enumerate(zip(widths[:-1], widths[1:], depths[1:])):
      self.add_module(f'stages_{i}', EfficientVitStage(cin, cout, depth, vit_stage=i >= 2, head_dim=head_dim))

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    """[N, 3, H, W] normalised -> 4 maps (widths[1:] channels) at strides 4/8/16/32."""
    x = self.stem_in_conv(x)
    for i in range(self.stem_depth):
      x = getattr(self, f'stem_res{i}')(x)
    features = []
    for i in range(4):
      x = getattr(self, f'stages_{i}')(x)
      features.append(x)
    return features


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = None) -> nn.Sequential:
  """torchvision's Conv2dNormActivation: Sequential(conv, BN(eps 1e-3, momentum 0.01)[, act])."""
  layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, **backbones.MOBILENET_BN)]
  return nn.Sequential(*layers, *([act()] if act is not None else []))


class SqueezeExcitation(nn.Module):
  """torchvision's SE: x * hardsigmoid(fc2(relu(fc1(avgpool(x)))))."""

  def __init__(self, channels: int, squeeze: int):
    super().__init__()
    self.fc1 = nn.Conv2d(channels, squeeze, 1)
    self.fc2 = nn.Conv2d(squeeze, channels, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    scale = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
    return x * F.hardsigmoid(scale)


class InvertedResidual(nn.Module):
  """torchvision's MobileNetV3 block; `block` holds [expand], depthwise, [SE], project."""

  def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, act: str, stride: int):
    super().__init__()
    act = {'hswish': nn.Hardswish, 'relu': nn.ReLU}[act]
    layers: list[nn.Module] = []
    if expanded != cin:
      layers.append(_conv_bn_act(cin, expanded, 1, act=act))
    layers.append(_conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act))
    if use_se:
      layers.append(SqueezeExcitation(expanded, backbones.make_divisible(expanded // 4)))
    layers.append(_conv_bn_act(expanded, cout, 1))
    self.block = nn.Sequential(*layers)
    self.use_res_connect = stride == 1 and cin == cout

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.block(x)
    return y + x if self.use_res_connect else y


class MobileNetV3SmallEncoder(nn.Sequential):
  """torchvision `mobilenet_v3_small().features` (blocks 0-12), returning the outputs of blocks 1, 3,
  4 and 12 (16, 24, 40, 576 channels at strides 4, 8, 16, 32), as the reference's skips."""

  def __init__(self):
    layers: list[nn.Module] = [_conv_bn_act(3, backbones.MOBILENET_STEM, 3, 2, act=nn.Hardswish)]
    cin = backbones.MOBILENET_STEM
    for kernel, expanded, cout, use_se, act, stride in backbones.MOBILENET_V3_SMALL:
      layers.append(InvertedResidual(cin, kernel, expanded, cout, use_se, act, stride))
      cin = cout
    layers.append(_conv_bn_act(cin, 6 * cin, 1, act=nn.Hardswish))
    super().__init__(*layers)

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    features = []
    for i, block in enumerate(self):
      x = block(x)
      if i in backbones.MOBILENET_SKIPS:
        features.append(x)
    return features + [x]


def make_encoder(backbone: str) -> nn.Module:
  if backbone == 'mobilenet_v3_small':
    return MobileNetV3SmallEncoder()
  backbones.encoder_channels(backbone)  # raises for an unknown name
  return EfficientVitEncoder(*backbones.EFFICIENTVIT[backbone])


class DecoderBlock(nn.Module):
  """ConvTranspose x2 +BN +ReLU, resize to the skip if needed, concat [x, skip], 3x3 +BN +ReLU."""

  def __init__(self, cin: int, cskip: int, cout: int):
    super().__init__()
    self.up = nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1)
    self.bn = nn.BatchNorm2d(cout)
    self.fuse = nn.Sequential(
        nn.Conv2d(cout + cskip, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

  def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn(self.up(x)))
    if x.shape[2:] != skip.shape[2:]:
      # e.g. 16x20 -> 15x20 when the stride-2 convs rounded up.
      x = F.interpolate(x, size=skip.shape[2:], mode='bilinear', align_corners=False)
    return self.fuse(torch.cat([x, skip], dim=1))


class DepthSegNet(nn.Module):
  """Encoder (`backbone`), neck, depth and segmentation decoders sized from the encoder's channels
  (reference layout)."""

  def __init__(self, num_classes: int = 6, backbone: str = DEFAULT_BACKBONE):
    super().__init__()
    self.backbone = backbone
    skips = backbones.encoder_channels(backbone)
    self.register_buffer('img_mean', torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
    self.register_buffer('img_std', torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))
    self.encoder = make_encoder(backbone)
    self.neck = nn.Sequential(nn.Conv2d(skips[3], 128, 1), nn.BatchNorm2d(128), nn.ReLU())
    # Registration order = the reference's (each task's decoder, then its head): the order of
    # named_parameters(), hence of an optimiser's state (convert.torch_training_state).
    for task in ('depth', 'seg'):
      self.add_module(f'{task}_d1', DecoderBlock(128, skips[2], 64))
      self.add_module(f'{task}_d2', DecoderBlock(64, skips[1], 32))
      self.add_module(f'{task}_d3', DecoderBlock(32, skips[0], 16))
      self.add_module(f'{task}_head', nn.Sequential(nn.Conv2d(16, 1, 1), nn.ReLU()) if task == 'depth'
                      else nn.Conv2d(16, num_classes, 1))

  def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
    """[N, 3, H, W] in [0, 1] -> the 4 encoder maps [N, C_i, ceil(H/s_i), ceil(W/s_i)]."""
    return self.encoder((x - self.img_mean) / self.img_std)

  def _decode(self, task: str, feat: torch.Tensor, skips: list[torch.Tensor],
              size: tuple[int, int]) -> torch.Tensor:
    for i in (1, 2, 3):
      feat = getattr(self, f'{task}_d{i}')(feat, skips[3 - i])
    return F.interpolate(feat, size=size, mode='bilinear', align_corners=False)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 3, H, W] RGB in [0, 1] -> depth [N, 1, H, W] metres, seg_logits [N, C, H, W]."""
    size = tuple(x.shape[2:])
    *skips, bottleneck = self.forward_features(x)
    feat = self.neck(bottleneck)
    depth = self.depth_head(self._decode('depth', feat, skips, size))
    seg_logits = self.seg_head(self._decode('seg', feat, skips, size))
    return depth, seg_logits


def state_dict_of(checkpoint: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
  """The model state dict of a training checkpoint (`model` / `model_state_dict`) or a bare one."""
  for key in ('model', 'model_state_dict'):
    if key in checkpoint and isinstance(checkpoint[key], Mapping):
      return checkpoint[key]
  return checkpoint


def load_reference(path_or_state_dict: str | os.PathLike | Mapping[str, Any], strict: bool = True,
                   allow_pickle: bool = False, num_classes: int = 6, backbone: str | None = None) -> DepthSegNet:
  """Builds a `DepthSegNet` and loads reference weights into it; returned in eval mode.

  Args:
    path_or_state_dict: a reference `.pt` file, its loaded dict, or a bare state dict.
    strict: passed to `load_state_dict`.
    allow_pickle: load the file with full unpickling (`weights_only=False`); only for trusted
      files whose `config` holds objects that `weights_only=True` refuses.
    num_classes: segmentation classes.
    backbone: one of `BACKBONES`; default: the file's `config['BACKBONE']` (timm's tag, as in
      `efficientvit_b2.r288_in1k`, ignored), else `DEFAULT_BACKBONE`.
  """
  checkpoint = path_or_state_dict
  if isinstance(checkpoint, (str, os.PathLike)):
    try:
      checkpoint = torch.load(checkpoint, map_location='cpu', weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
      if allow_pickle:
        raise
      raise RuntimeError(f'{os.fspath(path_or_state_dict)}: torch.load(weights_only=True) failed; '
                         'if the file is trusted, pass allow_pickle=True') from e
  if backbone is None:
    config = checkpoint.get('config') if isinstance(checkpoint.get('config'), Mapping) else {}
    backbone = str(config.get('BACKBONE', DEFAULT_BACKBONE)).split('.')[0]
  model = DepthSegNet(num_classes, backbone)
  model.load_state_dict(state_dict_of(checkpoint), strict=strict)
  return model.eval()
