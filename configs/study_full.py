"""The domain-mixing study at full size, for real data on accelerators (`studies/domain_mixing.py`).

  python -m studies.domain_mixing --config configs/study_full.py --workdir study/real \
      --config.data_root=/data --config.pretrain.init_from=ckpt/imagenet

Source = NYU (the reference's V5 recipe: 200 epochs, encoder frozen for 5, encoder 3e-5 /
decoder 3e-4, from the ImageNet encoder of `python -m efficientvit_jax.convert timm-encoder`);
target = LILocBench; deployment = the corridor set (evaluated only). Every protocol after the
pretraining takes the same number of optimiser steps: `finetune_steps`, or when 0, the V7 budget
of `finetune_epochs` passes over the target at the preset batch (50 epochs; docs/config.md#presets).
Already have V5 weights (e.g. the reference's .pt)? Set `source_checkpoint` and no pretraining
runs. A V6-style checkpoint in `v6_checkpoint` adds the V9-like protocol.

Each protocol names a training preset (a path relative to the repository root, or absolute) and
the overrides applied on top of it, in this order:
preset, `common`, the protocol's `overrides`, then the study's own keys (`seed`,
`num_train_steps`, `init_from`, and `data.weights` = {nyu: r, lilocbench: 1 - r} for each ratio r
of `ratios`). `configs/study_synthetic.py` derives from this file.
"""

import ml_collections


def protocol(preset: str, label: str, overrides: dict | None = None, ratios: tuple[float, ...] = (),
             start: str = 'source') -> ml_collections.ConfigDict:
  """One protocol: a training preset plus overrides; `ratios` makes one table row per source
  share; `start` is the checkpoint it starts from (`source` = the pretraining, `v6`)."""
  return ml_collections.ConfigDict({'preset': preset, 'label': label, 'start': start,
                                    'ratios': tuple(ratios), 'overrides': overrides or {}})


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # The three sets, in the layouts of docs/data.md ('' = the part of data_root).
  c.data_root = 'data'
  c.source = ''  # NYU root holding nyu_cache/ ('' = <data_root>/nyu)
  c.target = ''  # LILocBench manifest.jsonl ('' = <data_root>/lilocbench/manifest.jsonl)
  c.deployment = ''  # corridor manifest.jsonl ('' = <data_root>/corridor/manifest.jsonl)

  c.seeds = (0, 1, 2)  # every protocol runs once per seed (data order and augmentation)
  # The capacity axis: () = one ladder with the presets' backbone (`model.backbone`); names of
  # docs/model.md's family = the whole ladder once per backbone, each from its own pretraining.
  c.backbones = ()
  c.finetune_steps = 0  # > 0: optimiser steps of every protocol after the pretraining
  c.finetune_epochs = 50  # finetune_steps = 0: this many epochs of the target alone at batch_size

  # Source-only pretraining (V5-like); skipped when source_checkpoint is given.
  c.source_checkpoint = ''  # a checkpoint folder, workdir or .pt to use as the source model instead
  c.v6_checkpoint = ''  # a V6-style checkpoint: adds `sequential_v6` (V9-like)
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.preset = 'configs/v5.py'
  c.pretrain.steps = 0  # > 0 overrides the preset's epochs
  c.pretrain.seed = 0
  c.pretrain.init_from = ''  # e.g. the ImageNet encoder folder (timm-encoder); '{backbone}' in it = each one's
  c.pretrain.overrides = ml_collections.ConfigDict()  # on top of the preset (V5: encoder frozen 5 epochs)

  # Training-config overrides applied to every run, pretraining included.
  c.common = ml_collections.ConfigDict({'data': {'input_size': (240, 320)}, 'batch_size': 16})

  c.protocols = ml_collections.ConfigDict()
  c.protocols.source_continued = protocol(
      'configs/v5.py', 'source only, continued (control)', {'data': {'mode': 'nyu'}, 'freeze_encoder_epochs': 0})
  c.protocols.sequential = protocol('configs/v7.py', 'sequential: target only (V7-like)')
  c.protocols.sequential_v6 = protocol('configs/v9.py', 'sequential from V6 (V9-like)', start='v6')
  c.protocols.joint = protocol('configs/v8.py', 'joint, source upsampled', ratios=(0.25, 0.5, 0.75))
  c.protocols.downsample = protocol('configs/v8.py', 'joint, target downsampled', {'data': {'mode': 'downsample'}},
                                    ratios=(0.5,))
  c.protocols.concat = protocol('configs/v8.py', 'concatenation (natural share)', {'data': {'mode': 'concat'}})
  # The protocols that run, in table order.
  c.order = ('source_continued', 'sequential', 'sequential_v6', 'joint', 'downsample', 'concat')
  # Which of our rows the reference's published rows (docs/evaluation.md) correspond to.
  c.reference_rows = ml_collections.ConfigDict(
      {'V5': 'source_only', 'V7': 'sequential', 'V8': 'joint@0.5', 'V9': 'sequential_v6'})

  c.eval = ml_collections.ConfigDict({'batch_size': 16})
  return c
