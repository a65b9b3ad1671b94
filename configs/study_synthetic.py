"""The domain-mixing study on the synthetic data (`make study`): the whole ladder on 2 CPU cores.

  python -m data_pipelines.synthetic --out data/synthetic --size default  # (make study: study/data)
  python -m studies.domain_mixing --config configs/study_synthetic.py --workdir study

96x128 inputs, batch 8, one learning rate of 1e-3 (as `quickstart`), no encoder freezing (the
pretraining starts from random weights), no validation inside the runs (the study evaluates every
final checkpoint with eval.py). Budget, planned at ~0.8 s a step plus ~30 s of start-up and
compilation a run (2 cores shared with other jobs): pretraining 500 steps, then 7 rows x 3 seeds x
150 steps, evaluation, data generation: about an hour. Measured: data 2.3 min, pretraining 5.7 min,
each later run 1.4 min (29 min for 21), evaluation 2.2 min: 40 min in all.
"""

from configs import study_full


def get_config():
  c = study_full.get_config()
  c.data_root = 'data/synthetic'
  c.finetune_steps = 150
  c.pretrain.steps = 500
  c.pretrain.overrides.freeze_encoder_epochs = 0
  c.common = {
      'data': {'input_size': (96, 128), 'eval_sets': (), 'num_threads': 4},
      'batch_size': 8,
      'optimizer': {'encoder_lr': 1e-3, 'decoder_lr': 1e-3, 'kendall_lr': 1e-3},
      'log_every_steps': 25,
      'checkpoint_every_steps': 50,
      'keep_checkpoints': 1,
  }
  return c
