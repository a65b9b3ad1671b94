"""Quickstart (`make demo`): synthetic data (`python -m data_pipelines.synthetic --out data/synthetic
--size demo`: 160 NYU-like training rooms), 96x128, a few hundred steps of joint training from
scratch; learns visibly in minutes on 2 CPU cores."""

from efficientvit_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.root = 'data/synthetic'
  c.data.mode = 'joint'
  c.data.input_size = (96, 128)
  c.data.color_jitter = {'nyu': True, 'lilocbench': True}
  # Whole NYU frames, as validation sees them: with few training rooms and steps, the reference's
  # native-scale crop (objects twice as large, the floor at a random height) costs the demo ~0.1 m of
  # NYU RMSE (docs/decisions.md).
  c.data.nyu_crop = False
  c.data.eval_sets = ('nyu', 'lilocbench', 'corridor')
  c.data.num_threads = 4
  c.batch_size = 16
  c.num_train_steps = 600
  c.log_every_steps = 20
  c.eval_every_steps = 300
  c.checkpoint_every_steps = 200
  c.freeze_encoder_epochs = 0
  c.optimizer.encoder_lr = 1e-3
  c.optimizer.decoder_lr = 1e-3
  c.optimizer.kendall_lr = 1e-3
  c.best_metric = 'val/nyu/rmse'
  return c
