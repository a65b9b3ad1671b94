"""V5 with an EfficientViT-B2 encoder: the reference's `MultiTaskStudent(backbone='efficientvit_b2')`.

The V5 recipe unchanged (NYU only, 200 epochs, encoder + neck frozen for 5 epochs, the same rates);
only the encoder differs: timm's `efficientvit_b2` (15.76 M parameters with our heads, against
5.31 M for B1). Its ImageNet weights (timm `efficientvit_b2.r288_in1k`) come from `python -m
efficientvit_jax.convert timm-encoder` and are passed as `--config.init_from=...`.
"""

from efficientvit_jax.configs import v5


def get_config():
  c = v5.get_config()
  c.model.backbone = 'efficientvit_b2'
  return c
