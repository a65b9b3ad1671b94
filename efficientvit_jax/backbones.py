"""The encoders of the model family, as data (docs/model.md#the-family); shared by the Flax model
(`model.py`) and the PyTorch twin (`torch_model.py`), so this module imports nothing.

  encoder_channels('efficientvit_b1') == (32, 64, 128, 256)  # outputs at strides 4, 8, 16, 32
"""

BACKBONES = ('efficientvit_b0', 'efficientvit_b1', 'efficientvit_b2', 'efficientvit_b3', 'mobilenet_v3_small')
DEFAULT_BACKBONE = 'efficientvit_b1'

# timm `efficientvit_mit.py`: widths and depths of the stem and the four stages, attention head dim.
EFFICIENTVIT = {
    'efficientvit_b0': ((8, 16, 32, 64, 128), (1, 2, 2, 2, 2), 16),
    'efficientvit_b1': ((16, 32, 64, 128, 256), (1, 2, 3, 3, 4), 16),
    'efficientvit_b2': ((24, 48, 96, 192, 384), (1, 3, 4, 4, 6), 32),
    'efficientvit_b3': ((32, 64, 128, 256, 512), (1, 4, 6, 6, 9), 32),
}
EXPAND_RATIO = 4  # of every EfficientViT MBConv

# torchvision `mobilenet_v3_small`: per inverted residual block (kernel, expanded channels, out
# channels, squeeze-excitation, activation, stride); the stem conv gives 16 channels, the last conv
# 6 x 96 = 576. The reference takes the skips after blocks 1, 3, 4 of `features` (strides 4, 8, 16)
# and the last block's output (stride 32) as the bottleneck.
MOBILENET_V3_SMALL = (
    (3, 16, 16, True, 'relu', 2), (3, 72, 24, False, 'relu', 2), (3, 88, 24, False, 'relu', 1),
    (5, 96, 40, True, 'hswish', 2), (5, 240, 40, True, 'hswish', 1), (5, 240, 40, True, 'hswish', 1),
    (5, 120, 48, True, 'hswish', 1), (5, 144, 48, True, 'hswish', 1), (5, 288, 96, True, 'hswish', 2),
    (5, 576, 96, True, 'hswish', 1), (5, 576, 96, True, 'hswish', 1),
)
MOBILENET_STEM = 16
MOBILENET_SKIPS = (1, 3, 4)
MOBILENET_BN = {'eps': 1e-3, 'momentum': 0.01}  # torchvision's BatchNorm2d settings for MobileNetV3


def encoder_channels(backbone: str) -> tuple[int, int, int, int]:
  """Channels of the encoder's four outputs (strides 4, 8, 16, 32); ValueError for an unknown name."""
  if backbone in EFFICIENTVIT:
    return EFFICIENTVIT[backbone][0][1:]
  if backbone == 'mobilenet_v3_small':
    outs = [MOBILENET_STEM] + [block[2] for block in MOBILENET_V3_SMALL]
    return (*(outs[i] for i in MOBILENET_SKIPS), 6 * outs[-1])
  raise ValueError(f'unknown backbone {backbone!r}; one of {", ".join(BACKBONES)}')


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's channel rounding (the squeeze-excitation width): to a multiple of 8, never below
  90 % of `v`."""
  out = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return out + divisor if out < 0.9 * v else out
