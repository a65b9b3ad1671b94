"""`train_loop.train_and_evaluate` in-process on the tiny synthetic data at 32x32: a run writes its
checkpoints, metrics, config and TensorBoard files; a second call in the same workdir resumes at the
saved step and logs each step once; a third finds nothing left to do; the validation's metrics and
loss reach metrics.jsonl and a converted .pt. (train.py end to end, signals and faults:
test_train.py, test_faults.py.)"""

import json
import re

import pytest
import torch

from data_pipelines import readers
from efficientvit_jax import checkpointing
from efficientvit_jax import convert
from efficientvit_jax import train_loop
from efficientvit_jax.configs import quickstart


def _config(data, steps):
  config = quickstart.get_config()
  config.data.root = str(data)
  config.data.input_size = (32, 32)
  config.data.eval_sets = ('nyu',)
  config.data.num_threads = 2
  config.batch_size = 2
  config.num_train_steps = steps
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 0  # at the end only
  config.optimizer.lr_per_epoch = True  # rates independent of the run's length: one compiled step
  return config


def _rows(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.e2e
def test_train_then_resume_then_nothing_to_do(tmp_path, synthetic_tiny):
  workdir = tmp_path / 'run'
  first = train_loop.train_and_evaluate(_config(synthetic_tiny, 2), workdir)
  assert (first.start_step, first.step, first.total_steps, first.preempted) == (0, 2, 2, False)
  assert set(first.metrics) >= {f'val/nyu/{k}' for k in ('rmse', 'abs_rel', 'sq_rel', 'rmse_log', 'log10', 'delta3',
                                                        'rmse_median_scaled', 'miou', 'mean_class_accuracy',
                                                        'fw_iou', 'iou/floor', 'class_accuracy/wall', 'loss',
                                                        'loss_depth', 'loss_seg', 'loss_edge')}
  assert all(checkpointing.lower_is_better(k) in (True, False) for k in first.metrics)  # each can be best_metric
  assert checkpointing.steps(workdir) == [2] and checkpointing.verify(workdir / 'checkpoints' / '2')
  assert checkpointing.steps(workdir / 'best') == [2]
  assert [r['step'] for r in _rows(workdir) if 'train/loss' in r] == [1, 2]
  assert [r['step'] for r in _rows(workdir) if 'val/nyu/rmse' in r] == [2]
  assert json.loads((workdir / 'config.json').read_text())['num_train_steps'] == 2
  assert any((workdir / 'tb').iterdir())

  second = train_loop.train_and_evaluate(_config(synthetic_tiny, 3), workdir)
  assert (second.start_step, second.step) == (2, 3)
  assert checkpointing.steps(workdir) == [2, 3]
  meta = convert.load_any(workdir).meta
  assert meta['step'] == 3 and set(meta['num_batches_tracked'].values()) == {3}
  assert meta['num_steps'] == 3 and meta['steps_per_epoch'] >= 1  # the plan, for convert.planned_epochs
  assert meta['backbone'] == 'efficientvit_b1' and meta['input_size'] == [32, 32]  # what eval.py defaults to
  assert [r['step'] for r in _rows(workdir) if 'train/loss' in r] == [1, 2, 3]

  third = train_loop.train_and_evaluate(_config(synthetic_tiny, 3), workdir)
  assert (third.start_step, third.step, third.metrics) == (3, 3, {})
  assert checkpointing.steps(workdir) == [2, 3]

  # The reference's val_loss / best_val_loss in a .pt: this step's validation loss, the best so far.
  losses = [r['val/nyu/loss'] for r in _rows(workdir) if 'val/nyu/loss' in r]
  assert len(losses) == 2
  # Timed steps only: steps 1 and 3 (the first of each call) compiled.
  timed = [r for r in _rows(workdir) if 'train/steps_per_s' in r]
  assert [r['step'] for r in timed] == [2] and timed[0]['train/steps_per_s'] > 0
  assert convert.main(['orbax-to-torch', str(workdir), str(tmp_path / 'run.pt')]) == 0
  pt = torch.load(tmp_path / 'run.pt', weights_only=True)
  assert (pt['val_loss'], pt['best_val_loss']) == (losses[-1], min(losses))


@pytest.mark.parametrize('key, value, named', [
    ('compute_dtype', 'bfloat61', "compute_dtype must be float32 or bfloat16, got 'bfloat61'"),
    ('model.backbone', 'efficientvit_b9', "model.backbone must be one of"),
    ('batch_size', 0, 'batch_size must be >= 1, got 0'),
])
def test_a_bad_config_is_refused_before_training(tmp_path, monkeypatch, key, value, named):
  # The library checks the config itself, as train.py does: no silent float32 for a dtype typo.
  config = _config(tmp_path / 'no_data', 2)
  parent, _, leaf = key.rpartition('.')
  (config[parent] if parent else config)[leaf] = value
  monkeypatch.setattr(train_loop.parallel, 'make_mesh', lambda: pytest.fail('reached device work'))
  with pytest.raises(train_loop.UserError, match=re.escape(named)):
    train_loop.train_and_evaluate(config, tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


@pytest.mark.e2e
def test_a_bad_frame_saves_the_step_before_it_and_the_rerun_resumes_there(tmp_path, monkeypatch, synthetic_tiny):
  # Reading the batch of step 3 fails after step 2 ran; no scheduled save (every 10 steps) before.
  real = train_loop.datasets.train_iterator

  class BadThirdBatch:
    def __init__(self, *args, **kwargs):
      self.data, self.n = real(*args, **kwargs), 0

    def __next__(self):
      self.n += 1
      if self.n == 3:
        raise readers.BadFrameError('nyu/nyu_cache/rgb/00003.png: cannot decode image')
      return next(self.data)

    def close(self):
      self.data.close()

  config = _config(synthetic_tiny, 4)
  config.checkpoint_every_steps = 10
  workdir = tmp_path / 'run'
  monkeypatch.setattr(train_loop.datasets, 'train_iterator', BadThirdBatch)
  with pytest.raises(train_loop.UserError, match=re.escape('data: nyu/nyu_cache/rgb/00003.png: cannot decode')):
    train_loop.train_and_evaluate(config, workdir)
  assert checkpointing.steps(workdir) == [2] and checkpointing.verify(workdir / 'checkpoints' / '2')
  monkeypatch.setattr(train_loop.datasets, 'train_iterator', real)  # the data fixed
  rerun = train_loop.train_and_evaluate(config, workdir)
  assert (rerun.start_step, rerun.step) == (2, 4)
  assert [r['step'] for r in _rows(workdir) if 'train/loss' in r] == [1, 2, 3, 4]


def test_steps_plan_from_the_frames_of_the_data(synthetic_tiny):
  # The frame counts the generator reports; a table row of data_pipelines.mixing: n // B, n_larger // count_larger.
  counts = json.loads((synthetic_tiny / 'synthetic_info.json').read_text())['counts']
  config = _config(synthetic_tiny, 0)
  config.num_epochs = 3
  config.data.mode = 'nyu'
  plan = train_loop.steps_plan(config)
  assert plan == {'sizes': {'nyu': counts['nyu_train']}, 'steps_per_epoch': counts['nyu_train'] // 2,
                  'num_steps': 3 * (counts['nyu_train'] // 2)}
  config.data.mode = 'joint'  # weights 0.5 / 0.5 of a batch of 2: one frame of each set a step
  config.num_train_steps = 5
  plan = train_loop.steps_plan(config)
  assert plan['sizes'] == {'nyu': counts['nyu_train'], 'lilocbench': counts['lilocbench_train']}
  assert plan['steps_per_epoch'] == max(counts['nyu_train'], counts['lilocbench_train'])
  assert plan['num_steps'] == 5
