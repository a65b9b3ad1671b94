"""The jitted train step in-process: freezing, BatchNorm statistics, the non-finite guard, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientvit_jax import model as model_lib
from efficientvit_jax import optimizer as optimizer_lib
from efficientvit_jax import parallel
from efficientvit_jax import training
from efficientvit_jax.configs import default


def _batch(n=2, h=32, w=48, seed=0):
  rng = np.random.default_rng(seed)
  depth = rng.uniform(1, 4, (n, h, w)).astype(np.float32)
  return {'image': rng.random((n, h, w, 3), np.float32), 'depth': depth, 'depth_valid': depth > 0,
          'seg': rng.integers(0, 6, (n, h, w)).astype(np.int32)}


def _setup(dtype=jnp.float32, freeze_epochs=0, freeze_bn=False, lr=1e-3, encoder_bn_train=True):
  config = default.get_config()
  config.unlock()
  config.freeze_encoder_epochs = freeze_epochs
  config.num_epochs = 10
  config.optimizer.encoder_lr = config.optimizer.decoder_lr = lr
  model = model_lib.create(dtype=dtype)
  tx = optimizer_lib.make_optimizer(config, steps_per_epoch=2, total_steps=20)
  mesh = parallel.make_mesh()
  graphdef, state = training.create_state(
      model, {'log_sigma_d': np.zeros(1, np.float32), 'log_sigma_s': np.zeros(1, np.float32)}, tx, mesh)
  step = training.jit_train_step(
      training.make_train_step(graphdef, tx, config.loss, freeze_steps=freeze_epochs * 2,
                               freeze_bn_when_frozen=freeze_bn, encoder_bn_train=encoder_bn_train), mesh, state)
  return state, step, mesh


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(x), tree)


@pytest.mark.e2e
@pytest.mark.parametrize('freeze_bn', [False, True])
def test_frozen_encoder_keeps_weights_bn_follows_flag(freeze_bn):
  state, step, mesh = _setup(freeze_epochs=1, freeze_bn=freeze_bn, encoder_bn_train=not freeze_bn)
  before = _host({'p': state['params'], 's': state['batch_stats']})
  for i in range(2):  # the two frozen steps
    state, metrics = step(state, parallel.global_batch(_batch(seed=i), mesh))
  after = _host({'p': state['params'], 's': state['batch_stats']})
  for part in ('encoder', 'neck'):
    for a, b in zip(jax.tree.leaves(before['p'][part]), jax.tree.leaves(after['p'][part])):
      np.testing.assert_array_equal(a, b)
    stats_same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before['s'][part]),
                                                           jax.tree.leaves(after['s'][part])))
    assert stats_same == freeze_bn, part
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before['p']['depth_d1']),
                                                      jax.tree.leaves(after['p']['depth_d1'])))
  assert float(metrics['lr/encoder']) == 0.0 and float(metrics['lr/decoder']) > 0
  state, _ = step(state, parallel.global_batch(_batch(seed=3), mesh))  # unfrozen: encoder moves
  moved = _host(state['params'])
  assert not np.array_equal(jax.tree.leaves(moved['encoder'])[0], jax.tree.leaves(before['p']['encoder'])[0])


@pytest.mark.e2e
def test_non_finite_update_is_discarded():
  state, step, mesh = _setup(lr=float('inf'))
  before = _host(state['params'])
  state, _ = step(state, parallel.global_batch(_batch(), mesh))
  assert int(state['nonfinite_step']) == 0 and int(state['step']) == 1
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(_host(state['params']))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.e2e
def test_bfloat16_step_is_finite_and_learns():
  state, step, mesh = _setup(dtype=jnp.bfloat16)
  batch = parallel.global_batch(_batch(), mesh)
  losses = []
  for _ in range(4):
    state, metrics = step(state, batch)
    losses.append(float(metrics['train/depth']))
    assert metrics['train/loss'].dtype == jnp.float32
  assert int(state['nonfinite_step']) == -1
  assert losses[-1] < losses[0]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state['params']))
