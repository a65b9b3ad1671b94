"""Look at what training would see: `evit-preview --config CFG [--config.k=v]
--batches N --out F.jsonl [--grid PNG] [--start_step S]`.

Writes one JSON line per global batch, `{"step", "domain": [...], "index": [...]}`, prints a
summary (domain shares, repeats per set, target-depth percentiles per domain, class frequencies)
and with `--grid` draws the first batch as the train step sees it, after its device-side flip and
colour jitter (`efficientvit_jax.augment`): RGB, depth target, training labels, human labels.
"""

import collections
import json
import os
from collections.abc import Sequence

import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from data_pipelines import datasets
from data_pipelines import mixing
from efficientvit_jax import classes
from efficientvit_jax import domains
from efficientvit_jax import runtime

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration: a preset name or a config file.',
                                          lock_config=True)
_BATCHES = flags.DEFINE_integer('batches', 10, 'Number of global batches to read.')
_OUT = flags.DEFINE_string('out', None, 'Output JSONL, one line per global batch.')
_GRID = flags.DEFINE_string('grid', None, 'Optional PNG drawing the first batch.')
_START = flags.DEFINE_integer('start_step', 0, 'First step to read.')


def draw_grid(batch: dict[str, np.ndarray], path: str, max_frames: int = 16) -> None:
  """One row per frame: RGB, depth target (invalid black), training labels, human labels."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  n = min(len(batch['image']), max_frames)
  fig, axes = plt.subplots(n, 4, figsize=(10, 2.0 * n), squeeze=False)
  for r in range(n):
    depth = np.where(batch['depth_valid'][r], batch['depth'][r], np.nan)
    panels = [(batch['image'][r], {}), (depth, {'cmap': 'turbo'}),
              (classes.colorize(batch['seg'][r]), {}), (classes.colorize(batch['gt_seg'][r]), {})]
    for c, (img, kw) in enumerate(panels):
      ax = axes[r, c]
      ax.imshow(img, interpolation='nearest', **kw)
      ax.set_xticks([])
      ax.set_yticks([])
    domain = domains.SETS[int(batch['domain'][r])]
    axes[r, 0].set_ylabel(f'{domain} {int(batch["index"][r])}', fontsize=8)
    if batch['depth_valid'][r].any():
      valid = batch['depth'][r][batch['depth_valid'][r]]
      axes[r, 1].set_xlabel(f'{valid.min():.1f}-{valid.max():.1f} m', fontsize=7)
  for c, title in enumerate(('image', 'depth target', 'seg (train)', 'gt_seg')):
    axes[0, c].set_title(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def augmented(batch: dict[str, np.ndarray], config, step: int) -> dict[str, np.ndarray]:
  """The host batch of `step` after the train step's flip and colour jitter (a whole global
  batch: positions are those of the global batch)."""
  from efficientvit_jax import augment

  out = augment.augment_batch(batch, seed=config.seed, step=step,
                              jitter=datasets.color_jitter_flags(config.data))
  return {k: np.asarray(v) for k, v in out.items()}


def summarize(lines: Sequence[dict], depth_samples: dict[int, list[np.ndarray]],
              class_counts: np.ndarray, sizes: dict[str, int]) -> str:
  """The printed summary (see module docstring)."""
  ids = np.concatenate([l['domain'] for l in lines]) if lines else np.zeros(0, int)
  out = [f'{len(lines)} global batches, {len(ids)} frames']
  for d, name in enumerate(mixing.TRAIN_SETS):
    share = float(np.mean(ids == d)) if len(ids) else 0.0
    seen = collections.Counter(i for l in lines for dd, i in zip(l['domain'], l['index']) if dd == d)
    repeated = sum(1 for c in seen.values() if c > 1)
    out.append(f'{name:11s} share {share:6.1%}  distinct {len(seen):6d} of {sizes.get(name, 0):6d}'
               f'  repeated {repeated:6d}  max repeats {max(seen.values(), default=0)}')
  for d, chunks in sorted(depth_samples.items()):
    v = np.concatenate(chunks) if chunks else np.zeros(0)
    if v.size:
      p = np.percentile(v, [1, 5, 25, 50, 75, 95, 99])
      out.append(f'{mixing.TRAIN_SETS[d]:11s} target depth m p1/5/25/50/75/95/99: '
                 + ' '.join(f'{x:.2f}' for x in p))
  total = class_counts.sum()
  if total:
    out.append('classes (training labels): ' + '  '.join(
        f'{n} {c / total:.1%}' for n, c in zip(classes.CLASS_NAMES, class_counts)))
  return '\n'.join(out)


@runtime.reporting_missing_extras  # tensorflow-datasets, for data.format = 'tfds'
def main(argv: Sequence[str]) -> int:
  del argv
  from efficientvit_jax import train_loop  # the run's length: the loop's plan

  config = _CONFIG.value
  it = datasets.train_iterator(config, start_step=_START.value, num_steps=train_loop.steps_plan(config)['num_steps'])
  lines, depth_samples = [], collections.defaultdict(list)
  class_counts = np.zeros(classes.NUM_CLASSES, np.int64)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    for _ in range(_BATCHES.value):
      step = it.step
      try:
        batch = next(it)
      except StopIteration:
        break
      line = {'step': step, 'domain': batch['domain'].tolist(), 'index': batch['index'].tolist()}
      f.write(json.dumps(line) + '\n')
      lines.append(line)
      for j, d in enumerate(batch['domain']):
        depth_samples[int(d)].append(batch['depth'][j][batch['depth_valid'][j]][::7])
      seg = batch['seg']
      class_counts += np.bincount(seg[seg < classes.NUM_CLASSES].ravel(), minlength=classes.NUM_CLASSES)
      if _GRID.value and len(lines) == 1:
        draw_grid(augmented(batch, config, step), _GRID.value)
  it.close()
  print(summarize(lines, depth_samples, class_counts, it.sizes))
  if it.skipped.count:
    print(f'skipped {it.skipped.count} bad frames')
  return 0


def run():
  """The `evit-preview` command."""
  flags.mark_flags_as_required(['config', 'out'])
  from efficientvit_jax import config_checks

  config_checks.help_of(__name__, __doc__)
  app.run(main, flags_parser=config_checks.parse_flags)


if __name__ == '__main__':
  run()
