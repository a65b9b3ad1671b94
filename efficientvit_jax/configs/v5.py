"""V5: NYU only from an ImageNet encoder, 200 epochs, encoder + neck frozen for 5 epochs.

The ImageNet encoder comes from `python -m efficientvit_jax.convert timm-encoder` and is passed as
`--config.init_from=...` (optional: without it the encoder starts from random weights).
"""

from efficientvit_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.mode = 'nyu'
  c.num_epochs = 200
  c.freeze_encoder_epochs = 5
  c.data.eval_sets = ('nyu',)
  c.best_metric = 'val/nyu/rmse'
  return c
