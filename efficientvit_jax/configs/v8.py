"""V8: joint NYU + LILocBench, exactly 50/50 in every batch, NYU upsampled, from V5 (needs `init_from`).

Colour jitter is on for both domains (the reference's failure analysis assumes it competes across
the two distributions).
"""

from efficientvit_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.mode = 'joint'
  c.data.weights = {'nyu': 0.5, 'lilocbench': 0.5}
  c.data.color_jitter = {'nyu': True, 'lilocbench': True}
  c.num_epochs = 50
  c.freeze_encoder_epochs = 0
  c.requires_init_from = True
  c.data.eval_sets = ('nyu', 'lilocbench', 'corridor')
  c.best_metric = 'val/nyu/rmse'
  return c
