"""optimizer.py: groups, schedule, clipping, freezing; against numpy AdamW and torch.optim.AdamW.
The optimiser state in a training checkpoint: saved and restored by its paths."""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from efficientvit_jax import checkpointing
from efficientvit_jax import optimizer
from efficientvit_jax import trees
from efficientvit_jax.configs import default

B1, B2, EPS = 0.9, 0.999, 1e-8
BASE = {'encoder': 1e-2, 'decoder': 3e-2, 'kendall': 5e-2}
SHAPES = {
    'model': {'encoder': {'w': (3, 2)}, 'neck': {'b': (2,)},
              'depth_d1': {'w': (2, 2)}, 'seg_head': {'b': (3,)}},
    'kendall': {'log_sigma_d': (1,), 'log_sigma_s': (1,)},
}
GROUP_OF_PART = {'encoder': 'encoder', 'neck': 'encoder', 'depth_d1': 'decoder',
                 'seg_head': 'decoder', 'log_sigma_d': 'kendall', 'log_sigma_s': 'kendall'}


def _config(*, freeze_epochs=0, num_epochs=4, clip_norm=1e6, weight_decay=0.1, warmup=0,
            per_epoch=False):
  c = default.get_config()
  c.optimizer.encoder_lr, c.optimizer.decoder_lr, c.optimizer.kendall_lr = (
      BASE['encoder'], BASE['decoder'], BASE['kendall'])
  c.optimizer.weight_decay = weight_decay
  c.optimizer.clip_norm = clip_norm
  c.optimizer.warmup_steps = warmup
  c.optimizer.lr_per_epoch = per_epoch
  c.freeze_encoder_epochs = freeze_epochs
  c.num_epochs = num_epochs
  return c


def _random_tree(rng, scale=1.0):
  return jax.tree.map(lambda shape: jnp.asarray(scale * rng.normal(size=shape), jnp.float32),
                      SHAPES, is_leaf=lambda x: isinstance(x, tuple))


def _groups(tree):
  """`{'model/encoder/w': (group, array), ...}` of a tree shaped like SHAPES."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(k.key for k in path): (GROUP_OF_PART[path[1].key], np.asarray(x))
          for path, x in flat}


def _adamw_np(p, g, m, v, t, lr, wd):
  """torch.optim.AdamW's update for one tensor, in float64.

  optax takes the bias corrections in float32 (1 - 0.999 is 1.3e-5 off there), so an update agrees
  to ~1e-5 of its size: compare with `atol=1e-6` at these rates.
  """
  p, g = p.astype(np.float64), g.astype(np.float64)
  p = p * (1 - lr * wd)
  m = B1 * m + (1 - B1) * g
  v = B2 * v + (1 - B2) * g * g
  denom = np.sqrt(v) / math.sqrt(1 - B2**t) + EPS
  return p - lr / (1 - B1**t) * m / denom, m, v


def _step_fn(tx):
  @jax.jit
  def step(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, optimizer.learning_rates(state)
  return step


def test_param_labels_dict_and_nnx_state():
  labels = optimizer.param_labels(_random_tree(np.random.default_rng(0)))
  assert labels['model']['neck']['b'] == 'encoder'
  assert labels['model']['seg_head']['b'] == 'decoder'
  assert labels['kendall']['log_sigma_s'] == 'kendall'

  class Tiny(nnx.Module):
    def __init__(self, rngs):
      self.encoder = nnx.Linear(2, 3, rngs=rngs)
      self.depth_head = nnx.Linear(3, 1, rngs=rngs)

  _, state = nnx.split(Tiny(nnx.Rngs(0)), nnx.Param)
  tree = {'model': state, 'kendall': {'log_sigma_d': jnp.zeros(1), 'log_sigma_s': jnp.zeros(1)}}
  flat = jax.tree.leaves(optimizer.param_labels(tree))
  assert sorted(flat) == ['decoder', 'decoder', 'encoder', 'encoder', 'kendall', 'kendall']
  tx = optimizer.make_optimizer(_config(), steps_per_epoch=2, total_steps=8)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, tree), tx.init(tree), tree)
  assert isinstance(optax.apply_updates(tree, updates)['model'], nnx.State)


def test_unknown_keys_raise_naming_them():
  with pytest.raises(ValueError, match="'depth_decoder'"):
    optimizer.param_labels({'model': {'depth_decoder': {'w': jnp.zeros(1)}}, 'kendall': {}})
  with pytest.raises(ValueError, match="'params'"):
    optimizer.param_labels({'params': {'encoder': jnp.zeros(1)}})


def test_each_group_gets_its_own_rate():
  rng = np.random.default_rng(1)
  params, grads = _random_tree(rng), _random_tree(rng, scale=0.1)
  tx = optimizer.make_optimizer(_config(), steps_per_epoch=2, total_steps=8)
  new, state, lrs = _step_fn(tx)(grads, tx.init(params), params)
  expected_lrs = {f'lr/{g}': lr for g, lr in BASE.items()}
  assert {k: float(v) for k, v in lrs.items()} == pytest.approx(expected_lrs)
  p0, g0, p1 = _groups(params), _groups(grads), _groups(new)
  for name, (group, p) in p0.items():
    expected, _, _ = _adamw_np(p, g0[name][1], 0.0, 0.0, 1, BASE[group], 0.1)
    np.testing.assert_allclose(p1[name][1], expected, rtol=1e-6, atol=1e-6, err_msg=name)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))


def test_cosine_per_step_with_and_without_warmup():
  steps = np.arange(12)
  mult = optimizer.lr_multiplier(total_steps=12, steps_per_epoch=3, num_epochs=4)
  expected = 0.5 * (1 + np.cos(np.pi * steps / 12))
  np.testing.assert_allclose(mult(steps), expected, rtol=1e-6, atol=1e-7)
  mult = optimizer.lr_multiplier(total_steps=12, steps_per_epoch=3, num_epochs=4, warmup_steps=4)
  expected = np.where(steps < 4, (steps + 1) / 4, 0.5 * (1 + np.cos(np.pi * (steps - 4) / 8)))
  np.testing.assert_allclose(mult(steps), expected, rtol=1e-6, atol=1e-7)


def test_cosine_per_epoch_is_the_reference_formula():
  steps = np.arange(15)
  mult = optimizer.lr_multiplier(total_steps=12, steps_per_epoch=3, num_epochs=4, per_epoch=True)
  expected = [(1 + math.cos(math.pi * min(s // 3, 4) / 4)) / 2 for s in steps]
  np.testing.assert_allclose(mult(steps), expected, rtol=1e-6, atol=1e-7)


def test_learning_rates_follow_the_schedule():
  rng = np.random.default_rng(2)
  params = _random_tree(rng)
  config = _config(per_epoch=True, num_epochs=3)
  tx = optimizer.make_optimizer(config, steps_per_epoch=2, total_steps=6)
  step, state = _step_fn(tx), tx.init(params)
  for k in range(6):
    params, state, lrs = step(_random_tree(rng), state, params)
    for group, base in BASE.items():
      expected = base * (1 + math.cos(math.pi * (k // 2) / 3)) / 2
      np.testing.assert_allclose(lrs[f'lr/{group}'], expected, rtol=1e-6)


def test_clipping_counts_only_trained_parameters():
  rng = np.random.default_rng(3)
  grads = _random_tree(rng)
  grads['model']['encoder']['w'] = jnp.full((3, 2), 1e6)
  clip = optimizer.clip_trained_by_global_norm(1.0, freeze_steps=1)
  state = clip.init(grads)
  g = _groups(grads)
  squares = {name: np.sum(x.astype(np.float64)**2) for name, (_, x) in g.items()}
  trained_norm = math.sqrt(sum(v for name, v in squares.items() if g[name][0] != 'encoder'))
  clipped, state = jax.jit(clip.update)(grads, state)
  out = _groups(clipped)
  for name, (group, x) in g.items():
    if group != 'encoder':
      np.testing.assert_allclose(out[name][1], x / (trained_norm + 1e-6), rtol=1e-6, err_msg=name)
  # Unfrozen: the encoder's gradient joins the norm.
  full_norm = math.sqrt(sum(squares.values()))
  clipped, _ = jax.jit(clip.update)(grads, state)
  np.testing.assert_allclose(
      _groups(clipped)['model/neck/b'][1], g['model/neck/b'][1] / full_norm, rtol=1e-5)


def test_clipping_leaves_small_gradients_alone():
  grads = _random_tree(np.random.default_rng(4), scale=1e-3)
  clip = optimizer.clip_trained_by_global_norm(1.0, freeze_steps=0)
  clipped, _ = clip.update(grads, clip.init(grads))
  jax.tree.map(np.testing.assert_array_equal, clipped, grads)


def test_freezing_holds_the_encoder_then_starts_it_fresh():
  rng = np.random.default_rng(5)
  params = _random_tree(rng)
  params['model']['neck']['b'] = jnp.array([-0.0, 1.0])  # -0.0 must stay -0.0
  config = _config(freeze_epochs=1, clip_norm=1e6)
  tx = optimizer.make_optimizer(config, steps_per_epoch=2, total_steps=8)
  step, state = _step_fn(tx), tx.init(params)
  start = params
  for _ in range(2):
    params, state, lrs = step(_random_tree(rng, scale=1e3), state, params)
    assert lrs['lr/encoder'] == 0.0 and lrs['lr/decoder'] > 0.0
  for leaf in ('w', 'b'):
    part = 'encoder' if leaf == 'w' else 'neck'
    before, after = np.asarray(start['model'][part][leaf]), np.asarray(params['model'][part][leaf])
    np.testing.assert_array_equal(before.view(np.uint32), after.view(np.uint32))
  adam = state[1].inner_states['encoder'].inner_state.inner_state[0]
  assert int(adam.count) == 0
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves((adam.mu, adam.nu)))
  assert int(state[1].inner_states['decoder'].inner_state.inner_state[0].count) == 2

  # First unfrozen step = a fresh AdamW's first step at the unshifted cosine rate of step 2.
  grads = _random_tree(rng, scale=0.1)
  new, state, lrs = step(grads, state, params)
  lr = BASE['encoder'] * 0.5 * (1 + math.cos(math.pi * 2 / 8))
  np.testing.assert_allclose(lrs['lr/encoder'], lr, rtol=1e-6)
  p0, g0, p1 = _groups(params), _groups(grads), _groups(new)
  for name in ('model/encoder/w', 'model/neck/b'):
    expected, _, _ = _adamw_np(p0[name][1], g0[name][1], 0.0, 0.0, 1, lr, 0.1)
    np.testing.assert_allclose(p1[name][1], expected, rtol=1e-6, atol=1e-6, err_msg=name)


def test_matches_torch_adamw_with_requires_grad_freezing():
  """The reference's mechanism: encoder params requires_grad=False for the frozen epochs, grads of
  None skipped by clip_grad_norm_ and AdamW, CosineAnnealingLR stepped per epoch. One jitted step
  (one compilation) serves the whole run."""
  steps_per_epoch, epochs, freeze_epochs = 2, 4, 1
  rng = np.random.default_rng(6)
  params = _random_tree(rng)
  # Per-step gradient scales straddle the clip norm, so clipping changes Adam's later steps.
  grads_seq = [_random_tree(rng, scale=s) for s in (3.0, 0.2, 5.0, 0.1, 2.0, 0.05, 4.0, 0.3)]

  tx = optimizer.make_optimizer(
      _config(freeze_epochs=freeze_epochs, num_epochs=epochs, clip_norm=1.0, per_epoch=True),
      steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * epochs)
  step, state, ours = _step_fn(tx), tx.init(params), params
  for grads in grads_seq:
    ours, state, _ = step(grads, state, ours)
  assert step._cache_size() == 1

  names = list(_groups(params))
  g_of = {n: grp for n, (grp, _) in _groups(params).items()}
  tparams = {n: torch.nn.Parameter(torch.tensor(x)) for n, (_, x) in _groups(params).items()}
  groups = [{'params': [tparams[n] for n in names if g_of[n] == g], 'lr': BASE[g]} for g in BASE]
  opt = torch.optim.AdamW(groups, betas=(B1, B2), eps=EPS, weight_decay=0.1)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
  for k, grads in enumerate(grads_seq):
    epoch = k // steps_per_epoch
    for n in names:
      tparams[n].requires_grad_(g_of[n] != 'encoder' or epoch >= freeze_epochs)
    opt.zero_grad(set_to_none=True)
    g = _groups(grads)
    for n in names:
      if tparams[n].requires_grad:
        tparams[n].grad = torch.tensor(g[n][1])
    torch.nn.utils.clip_grad_norm_(list(tparams.values()), 1.0)
    opt.step()
    if (k + 1) % steps_per_epoch == 0:
      sched.step()

  got = _groups(ours)
  for n in names:
    np.testing.assert_allclose(
        got[n][1], tparams[n].detach().numpy(), rtol=2e-5, atol=1e-6, err_msg=n)


def _saved_opt_state(tmp_path, tx, stored=None):
  """A training checkpoint (step 2) of the state of `tx` after two updates; (checkpointer, state).
  `stored(state)`, when given, is what is written as `opt_state` instead (an older layout)."""
  rng = np.random.default_rng(7)
  params = _random_tree(rng)
  step = _step_fn(tx)
  state = tx.init(params)
  for _ in range(2):
    params, state, _ = step(_random_tree(rng), state, params)
  ckpt = checkpointing.Checkpoint(params={'w': np.zeros((1,), np.float32)}, batch_stats={},
                                  kendall=checkpointing.default_kendall(), meta={'step': 2})
  ckptr = checkpointing.TrainCheckpointer(tmp_path / 'w', keep=1, async_save=False)
  if stored is None:
    ckptr.save(2, ckpt, state, {'step': 2})
  else:
    ckptr._save('latest', 2, checkpointing._save_args(ckpt, {'opt_state': stored(state)}), True)
  ckptr.wait()
  return ckptr, state


def test_opt_state_round_trips_exactly_by_path(tmp_path):
  tx = optimizer.make_optimizer(_config(), steps_per_epoch=2, total_steps=8)
  ckptr, state = _saved_opt_state(tmp_path, tx)
  like = jax.eval_shape(tx.init, _random_tree(np.random.default_rng(0)))
  _, restored, _ = ckptr.restore(2, like)
  ckptr.close()
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert got.dtype == want.dtype and np.array_equal(got, want)
  adam = optimizer.adam_state(restored, 'decoder')
  assert int(adam.count) == 2
  assert not np.array_equal(adam.mu['model']['depth_d1']['w'], adam.nu['model']['depth_d1']['w'])
  # Stored by name: the first moment is found under its path, not by its position.
  _, items = checkpointing.restore_items(tmp_path / 'w' / 'checkpoints', 2, ('opt_state',))
  stored = trees.flatten(items['opt_state'])
  np.testing.assert_array_equal(stored['1.inner_states.decoder.inner_state.inner_state.0.mu.model.depth_d1.w'],
                                adam.mu['model']['depth_d1']['w'])


def test_opt_state_of_another_structure_is_refused_naming_the_path(tmp_path):
  tx = optimizer.make_optimizer(_config(), steps_per_epoch=2, total_steps=8)
  ckptr, state = _saved_opt_state(tmp_path, tx)
  like = jax.eval_shape(tx.init, _random_tree(np.random.default_rng(0)))
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  source = f'{tmp_path}/w/checkpoints/2'

  # optax declaring Adam's fields in another order: restored by name, the moments stay in place.
  reordered_adam = collections.namedtuple('ScaleByAdamState', 'nu count mu')
  target = jax.tree.map(lambda s: reordered_adam(nu=s.nu, count=s.count, mu=s.mu) if is_adam(s) else s,
                        like, is_leaf=is_adam)
  _, restored, _ = ckptr.restore(2, target)
  adams = [x for x in jax.tree.leaves(restored, is_leaf=lambda x: isinstance(x, reordered_adam))
           if isinstance(x, reordered_adam)]
  want = optimizer.adam_state(state, 'encoder')
  np.testing.assert_array_equal(adams[1].mu['model']['encoder']['w'], want.mu['model']['encoder']['w'])
  np.testing.assert_array_equal(adams[1].nu['model']['encoder']['w'], want.nu['model']['encoder']['w'])

  renamed_adam = collections.namedtuple('ScaleByAdamState', 'count m v')
  renamed = jax.tree.map(lambda s: renamed_adam(*s) if is_adam(s) else s, like, is_leaf=is_adam)
  reordered_chain = (like[1], like[0])
  params = _random_tree(np.random.default_rng(0))
  params['model']['encoder']['w'] = jnp.zeros((4, 2), jnp.float32)
  wider = jax.eval_shape(tx.init, params)
  for target, named in (
      (renamed, 'this optimiser has 1.inner_states.decoder.inner_state.inner_state.0.m.model.depth_d1.w, '
                'the checkpoint does not'),
      (reordered_chain, 'this optimiser has 0.inner_states.decoder.inner_state.count, the checkpoint does not'),
      (wider, 'opt_state 1.inner_states.encoder.inner_state.inner_state.0.mu.model.encoder.w is '
              'float32[3, 2], this optimiser expects float32[4, 2]'),
  ):
    with pytest.raises(checkpointing.CheckpointError) as e:
      ckptr.restore(2, target)
    assert str(e.value).startswith(f'{source}: ') and named in str(e.value) and '\n' not in str(e.value)
  ckptr.close()


def test_opt_state_of_numbered_leaves_is_refused_as_older(tmp_path):
  tx = optimizer.make_optimizer(_config(), steps_per_epoch=2, total_steps=8)
  numbered = lambda state: {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}
  ckptr, _ = _saved_opt_state(tmp_path, tx, numbered)
  like = jax.eval_shape(tx.init, _random_tree(np.random.default_rng(0)))
  with pytest.raises(checkpointing.CheckpointError, match=r'written by an older efficientvit-jax as numbered '
                     r'leaves.*--config\.init_from=.*/w/checkpoints\)'):
    ckptr.restore(ckptr.choose_step(), like)
  ckptr.close()
