"""V7: sequential fine-tuning of V5 on LILocBench dynamics_0, 50 epochs (needs `init_from`)."""

from efficientvit_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.mode = 'lilocbench'
  c.num_epochs = 50
  c.freeze_encoder_epochs = 0
  c.requires_init_from = True
  c.data.eval_sets = ('lilocbench', 'nyu', 'corridor')
  c.best_metric = 'val/lilocbench/rmse'
  return c
