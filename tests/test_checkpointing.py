"""Checkpoint folders, workdirs, `checkpointing.load` and `convert.load_any`."""

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import DATA

from efficientvit_jax import checkpointing
from efficientvit_jax import convert
from efficientvit_jax import trees
from efficientvit_jax.checkpointing import Checkpoint
from efficientvit_jax.checkpointing import CheckpointError


def _write_steps(root, reference_ckpt, steps):
  with ocp.CheckpointManager(root.absolute(), item_names=checkpointing.MODEL_ITEMS) as manager:
    for step in steps:
      params = {'encoder': {'x': np.full((2,), step, np.float32)}}
      ckpt = Checkpoint(params=params, batch_stats={}, kendall=checkpointing.default_kendall(),
                        meta={'step': step, 'epoch': step // 10})
      manager.save(step, args=checkpointing._save_args(ckpt))
    manager.wait_until_finished()


def test_workdir_latest_and_given_step(tmp_path, reference_ckpt):
  workdir = tmp_path / 'run'
  _write_steps(workdir / 'checkpoints', reference_ckpt, [10, 20])
  assert checkpointing.steps(workdir) == [10, 20]
  latest = checkpointing.load(workdir)
  assert latest.step == 20 and latest.meta['epoch'] == 2
  np.testing.assert_array_equal(latest.params['encoder']['x'], [20, 20])
  first = checkpointing.load(workdir / 'checkpoints', step=10)
  assert first.step == 10
  with pytest.raises(CheckpointError, match=r'no step 15; available steps: \[10, 20\]'):
    checkpointing.load(workdir, step=15)


def test_load_any_pt_and_folder_agree(reference_folder):
  a = convert.load_any(DATA / 'student_random.pt')
  b = convert.load_any(reference_folder)
  fa, fb = trees.flatten(a.params), trees.flatten(b.params)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k])
  with pytest.raises(CheckpointError, match='--step applies'):
    convert.load_any(DATA / 'student_random.pt', step=3)


def test_bad_sources(tmp_path):
  with pytest.raises(CheckpointError, match='no such file or folder'):
    checkpointing.load(tmp_path / 'nothing')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(CheckpointError, match='neither a checkpoint folder'):
    checkpointing.load(tmp_path / 'empty')
  (tmp_path / 'killed' / 'checkpoints' / '2.orbax-checkpoint-tmp-1').mkdir(parents=True)  # its first save killed
  with pytest.raises(CheckpointError, match='a training workdir without a finished checkpoint'):
    checkpointing.load(tmp_path / 'killed')
  with pytest.raises(CheckpointError, match='a reference .pt is read by convert.load_any'):
    checkpointing.load(DATA / 'student_random.pt')


def test_write_is_atomic(tmp_path, reference_ckpt):
  bad = Checkpoint(params={'encoder': {'x': object()}}, batch_stats={}, kendall=checkpointing.default_kendall(),
                   meta={'step': 0})
  with pytest.raises(Exception):  # noqa: B017  any failure: the test is about what it leaves behind
    checkpointing.write_folder(tmp_path / 'dst', bad)
  assert list(tmp_path.iterdir()) == []


def test_load_into_model_checks_shapes(reference_ckpt):
  from efficientvit_jax import model as model_lib

  model = model_lib.create()
  params = trees.flatten(reference_ckpt.params)
  params['neck.conv.kernel'] = np.zeros((1, 1, 256, 64), np.float32)
  with pytest.raises(CheckpointError,
                     match=r'neck.conv.kernel has shape \(1, 1, 256, 64\), the model expects \(1, 1, 256, 128\)'):
    checkpointing.load_into_model(model, trees.unflatten(params), reference_ckpt.batch_stats)
  with pytest.raises(CheckpointError, match='missing Param'):
    checkpointing.load_into_model(model, {'encoder': reference_ckpt.params['encoder']}, reference_ckpt.batch_stats)


def test_best_metric_directions():
  """Errors and losses improve downwards, the deltas, IoUs and accuracies upwards; others are refused."""
  for name in ('rmse', 'mae', 'abs_rel', 'sq_rel', 'rmse_log', 'log10', 'rmse_median_scaled', 'loss', 'loss_depth',
               'loss_seg', 'loss_edge'):
    assert checkpointing.lower_is_better(f'val/nyu/{name}'), name
  for name in ('delta1', 'delta3', 'miou', 'mean_class_accuracy', 'fw_iou', 'pixel_accuracy', 'iou/floor',
               'class_accuracy/glass'):
    assert not checkpointing.lower_is_better(f'val/corridor/{name}'), name
  for bad in ('val/nyu/speed', 'val/nyu/iou'):
    with pytest.raises(ValueError, match='unknown direction'):
      checkpointing.lower_is_better(bad)
