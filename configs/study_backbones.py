"""The capacity question on 2 CPU cores: the domain-mixing ladder once per backbone (B0, B1, B2).

  make study STUDY=study/backbones STUDY_CONFIG=configs/study_backbones.py
  # = python -m data_pipelines.synthetic --out study/backbones/data --size default
  #   python -m studies.domain_mixing --config configs/study_backbones.py --workdir study/backbones \
  #       --config.data_root=study/backbones/data

`study_synthetic`'s recipe (batch 8, learning rate 1e-3, no freezing, no validation inside the
runs) at 64x80, three protocols (the source-only control, sequential, joint 50/50), 3 seeds; per
backbone one pretraining from random weights, then 3 x 3 runs from it. Measured 2026-12-06 on 2
cores shared with other jobs (load 8-18): data 4.6 min, pretraining B0 5.3 / B1 6.4 / B2 7.8 min,
seeds 0-1 (18 runs of 100 steps) 45 min, evaluation 7.5 min; seed 2 adds ~20 min: ~95 min in all
under that load (studies/capacity.md).
"""

from configs import study_synthetic


def get_config():
  c = study_synthetic.get_config()
  c.backbones = ('efficientvit_b0', 'efficientvit_b1', 'efficientvit_b2')
  c.order = ('source_continued', 'sequential', 'joint')
  c.protocols.joint.ratios = (0.5,)
  c.common.data.input_size = (64, 80)
  c.pretrain.steps = 300
  c.finetune_steps = 100
  c.common.checkpoint_every_steps = 50
  return c
