"""The capacity question at full size, for an accelerator: B0-B3 x the domain-mixing ladder.

  python -m data_pipelines.synthetic --out study/capacity/data --size default
  python -m studies.domain_mixing --config configs/study_backbones_full.py --workdir study/capacity \
      --config.data_root=study/capacity/data

`configs/study_backbones.py` at the model's input size (240x320), batch 16 and ten times the
steps, with B3 and the joint ratio sweep (source share 0.25 / 0.5 / 0.75) that traces the
trade-off curve: per backbone one pretraining of 3000 steps, then 5 rows x 3 seeds of 1000 steps.
On real data give `data_root` (docs/data.md) and, for the reference's recipe,
`--config.pretrain.preset=configs/v5.py --config.pretrain.init_from=ckpt/imagenet_{backbone}`
(one `timm-encoder` folder per backbone; `{backbone}` is replaced by each name). Not run yet: no
measured wall time (4 x (3000 + 15 x 1000) = 72,000 training steps at batch 16).
"""

from configs import study_backbones


def get_config():
  c = study_backbones.get_config()
  c.backbones = ('efficientvit_b0', 'efficientvit_b1', 'efficientvit_b2', 'efficientvit_b3')
  c.protocols.joint.ratios = (0.25, 0.5, 0.75)
  c.common.data.input_size = (240, 320)
  c.common.batch_size = 16
  c.common.data.num_threads = 16
  c.common.log_every_steps = 100
  c.common.checkpoint_every_steps = 500
  c.eval.batch_size = 16
  c.pretrain.steps = 3000
  c.finetune_steps = 1000
  return c
