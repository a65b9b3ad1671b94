"""A .pt written with --with-optimizer resumes in the reference's train.py.

The reference's side is rebuilt here from the fixture (`tests/data/student_state_dict_keys.txt`,
saved from the reference network: its parameter order) and from how its train.py builds the
optimiser (`_reference_resume`), never from our twin: the exported AdamW state must put every
moment on its parameter in that order with that shape, the scheduler must describe the run, and
one torch AdamW step from the .pt must equal our optimiser's next step.
"""

import math

import jax
import numpy as np
import optax
import pytest
import torch
from conftest import DATA
from flax import nnx

from efficientvit_jax import checkpointing
from efficientvit_jax import convert
from efficientvit_jax import model as model_lib
from efficientvit_jax import optimizer as optimizer_lib
from efficientvit_jax.configs import default

STEPS_PER_EPOCH = 2
BUFFERS = ('img_mean', 'img_std', '.running_mean', '.running_var', '.num_batches_tracked')
KENDALL = ('log_sigma_d', 'log_sigma_s')


def _fixture_parameters() -> list[tuple[str, tuple[int, ...]]]:
  """(name, shape) of the reference network's parameters in `named_parameters()` order: its state
  dict's order without the buffers."""
  out = []
  for line in (DATA / 'student_state_dict_keys.txt').read_text().splitlines():
    key, shape, _ = line.split('\t')
    if not key.endswith(BUFFERS) and key not in BUFFERS:
      out.append((key, tuple(int(d) for d in shape.strip('()').split(',') if d.strip())))
  return out


def _reference_groups(names: list[str]) -> list[list[str]]:
  """The reference train.py's groups: `model.encoder.parameters() + model.neck.parameters()`, the
  named parameters not under encoder. / neck., `criterion.parameters()` (log_sigma_d, log_sigma_s)."""
  encoder = [n for n in names if n.startswith('encoder.')] + [n for n in names if n.startswith('neck.')]
  decoder = [n for n in names if not n.startswith('encoder.') and not n.startswith('neck.')]
  return [encoder, decoder, list(KENDALL)]


def _config(*, per_epoch=True, frozen=False, num_epochs=4, num_train_steps=0):
  config = default.get_config()
  config.num_epochs, config.num_train_steps, config.optimizer.lr_per_epoch = num_epochs, num_train_steps, per_epoch
  config.freeze_encoder_epochs = 2 if frozen else 0  # still frozen at the next step: no encoder state
  config.optimizer.encoder_lr, config.optimizer.decoder_lr, config.optimizer.kendall_lr = 1e-3, 2e-3, 5e-3
  return config


def _torch_name(path) -> str:
  dotted = convert._dotted(path)
  top, ours = dotted.split('.', 1)
  return ours if top == 'kendall' else convert.torch_key(ours)


def _to_torch(path, value):
  """A leaf of the trained pytree in the torch layout (conv kernels transposed)."""
  ours = convert._dotted(path).split('.', 1)[1]
  value = np.asarray(value)
  if value.ndim == 4 and path[0].key == 'model':
    return value.transpose(convert._TO_TORCH[convert._kind(ours)])
  return value


def _signature_grads(trainable, order: dict[str, int], scale: float = 1e-6):
  """Gradients constant per parameter, the constant tied to its name's place in the fixture: a
  moment that lands on another parameter shows, whatever its shape."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: np.full(x.shape, scale * (1 + order[_torch_name(p)]), np.float32), trainable)


def _random_grads(rng, tree, scale):
  return jax.tree.map(lambda x: (scale * rng.standard_normal(x.shape)).astype(np.float32), tree)


@pytest.fixture(scope='module')
def start():
  """(trainable pytree, BatchNorm statistics) of a fresh model, made once for the module."""
  model = model_lib.create(seed=1)
  trainable = {'model': nnx.state(model, nnx.Param), 'kendall': checkpointing.default_kendall()}
  trainable = jax.tree.map(np.asarray, trainable)
  return trainable, checkpointing.model_trees(model)[1]


def _train_and_convert(tmp_path, start, config, grads_fn, *, steps=STEPS_PER_EPOCH, total_steps=8, plan=True):
  """`steps` optimiser steps with `grads_fn(trainable)` (none when grads_fn is None: the checkpoint
  of step `steps` then holds a fresh optimiser state), saved as train.py saves a checkpoint (without
  its plan, `steps_per_epoch` / `num_steps`, when `plan` is False), then `orbax-to-torch
  --with-optimizer`. Returns (trainable, opt_state, jitted tx.update, loaded .pt or None if refused)."""
  trainable, batch_stats = start
  tx = optimizer_lib.make_optimizer(config, steps_per_epoch=STEPS_PER_EPOCH, total_steps=total_steps)
  opt_state = jax.jit(tx.init)(trainable)
  update = jax.jit(tx.update)
  for _ in range(steps if grads_fn else 0):
    updates, opt_state = update(grads_fn(trainable), opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
  ckpt = checkpointing.Checkpoint(
      params=checkpointing.state_to_tree(trainable['model']), batch_stats=batch_stats,
      kendall={k: np.asarray(v) for k, v in trainable['kendall'].items()},
      meta={'step': steps, 'epoch': steps // STEPS_PER_EPOCH, 'config': config.to_dict(), 'num_batches_tracked': {},
            'metrics': {'val/nyu/rmse': 0.75, 'val/nyu/miou': 0.25, 'val/nyu/loss': 1.5},
            **({'steps_per_epoch': STEPS_PER_EPOCH, 'num_steps': total_steps} if plan else {})})
  ckptr = checkpointing.TrainCheckpointer(tmp_path / 'w', keep=1, async_save=False)
  ckptr.save(steps, ckpt, opt_state, {'step': steps})
  ckptr.close()
  (tmp_path / 'w' / 'metrics.jsonl').write_text('{"step": 1, "val/nyu/rmse": 0.5, "val/nyu/miou": 0.125, '
                                                 '"val/nyu/loss": 1.25}\n'
                                                 '{"step": 9, "val/nyu/rmse": 0.25, "val/nyu/loss": 0.5}\n')
  pt = tmp_path / 'resume.pt'
  if convert.main(['orbax-to-torch', str(tmp_path / 'w'), str(pt), '--with-optimizer']):
    assert not pt.exists()
    return trainable, opt_state, update, None
  return trainable, opt_state, update, torch.load(pt, weights_only=True)


@pytest.mark.parametrize('frozen', [False, pytest.param(True, marks=pytest.mark.e2e)])
def test_optimizer_state_follows_the_reference_order_and_shapes(tmp_path, start, frozen):
  params = _fixture_parameters()
  shapes = {**dict(params), **{k: (1,) for k in KENDALL}}
  groups = _reference_groups([n for n, _ in params])
  order = {n: i for i, n in enumerate(n for g in groups for n in g)}
  _, opt_state, _, pt = _train_and_convert(tmp_path, start, _config(frozen=frozen),
                                           lambda t: _signature_grads(t, order))

  saved = pt['optimizer']
  assert [g['name'] for g in saved['param_groups']] == ['encoder', 'decoder', 'kendall']
  assert [g['param_names'] for g in saved['param_groups']] == groups
  assert [g['params'] for g in saved['param_groups']] == [[order[n] for n in g] for g in groups]
  # Every moment is its parameter's: its shape, and the value of that parameter's gradient alone.
  mu_per_unit = (1 - optimizer_lib.ADAM_B1) * 1e-6  # after one epoch of 2 steps: mu = (1 - b1^2) g
  mu_per_unit *= 1 + optimizer_lib.ADAM_B1
  stepped = [g for g, trained in zip(groups, (not frozen, True, True)) if trained]
  assert sorted(saved['state']) == sorted(order[n] for g in stepped for n in g)
  for name, i in order.items():
    if i not in saved['state']:
      continue
    state = saved['state'][i]
    assert tuple(state['exp_avg'].shape) == tuple(state['exp_avg_sq'].shape) == shapes[name], name
    np.testing.assert_allclose(state['exp_avg'].numpy(), mu_per_unit * (1 + i), rtol=1e-5, err_msg=name)
    assert float(state['step']) == STEPS_PER_EPOCH
  encoder_count = int(optimizer_lib.adam_state(opt_state, 'encoder').count)
  assert encoder_count == (0 if frozen else STEPS_PER_EPOCH)
  assert (pt['scheduler']['T_max'], pt['scheduler']['last_epoch'], pt['epoch']) == (4, 1, 0)

  # The recipe in the reference's Config names, and the metric fields under its names.
  assert pt['config']['FREEZE_ENCODER_EPOCHS'] == (2 if frozen else 0)
  assert pt['config']['EPOCHS'] == 4 and pt['config']['BACKBONE'] == 'efficientvit_b1'
  assert pt['config']['LR'] * pt['config']['ENCODER_LR_SCALE'] == pytest.approx(1e-3)
  assert pt['config']['KENDALL_LR'] == 5e-3 and pt['config']['USE_KENDALL'] is True
  assert (pt['val_depth_rmse'], pt['val_seg_miou']) == (0.75, 0.25)
  assert (pt['best_depth_rmse'], pt['best_seg_miou']) == (0.5, 0.25)  # metrics.jsonl up to step 2 + this step
  assert (pt['val_loss'], pt['best_val_loss']) == (1.5, 1.25)  # the same rows; step 9 is after this one


@pytest.mark.e2e
@pytest.mark.parametrize('per_epoch,t_max', [(False, 4), (True, 200)])
def test_scheduler_describes_the_run(tmp_path, start, per_epoch, t_max):
  """num_epochs 200 overridden by num_train_steps 7: EPOCHS is the planned ceil(7 / 2) = 4 epochs;
  T_max the length of the cosine the run used: those 4 epochs for the per-step cosine, which spans
  the planned steps, and num_epochs for the per-epoch one."""
  config = _config(per_epoch=per_epoch, num_epochs=200, num_train_steps=7)
  _, _, _, pt = _train_and_convert(tmp_path, start, config, None, total_steps=7)
  sched = pt['scheduler']
  assert sched['T_max'] == t_max and sched['last_epoch'] == 1 and pt['epoch'] == 0
  assert pt['config']['EPOCHS'] == 4
  cosine = (1 + math.cos(math.pi * 1 / t_max)) / 2
  for group, base in zip(pt['optimizer']['param_groups'], (1e-3, 2e-3, 5e-3)):
    assert group['initial_lr'] == base
    assert group['lr'] == pytest.approx(base * cosine, rel=1e-12)
  assert sched['base_lrs'] == [1e-3, 2e-3, 5e-3]
  assert pt['optimizer']['state'] == {}  # no step taken: torch keeps no state either


@pytest.mark.e2e
def test_unknown_plan_is_refused(tmp_path, start, capsys):
  """A per-step run whose num_train_steps overrode num_epochs, checkpointed without its plan: the
  cosine's length in epochs is unknown, and the conversion says so rather than guess."""
  config = _config(per_epoch=False, num_epochs=200, num_train_steps=7)
  capsys.readouterr()
  assert _train_and_convert(tmp_path, start, config, None, total_steps=7, plan=False)[3] is None
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'steps_per_epoch' in err and err.count('\n') == 1


def _reference_resume(pt, named_values):
  """The reference train.py's resume, from its source: AdamW over its three groups built from the
  Config (here: the .pt's `config`), CosineAnnealingLR(T_max=EPOCHS), then the .pt's states loaded;
  the encoder and neck frozen while `start_epoch < FREEZE_ENCODER_EPOCHS`."""
  cfg = pt['config']
  named = [(n, torch.nn.Parameter(v.clone())) for n, v in named_values]
  criterion = [torch.nn.Parameter(pt['criterion'][k].clone()) for k in KENDALL]
  encoder = [p for n, p in named if n.startswith('encoder.')] + [p for n, p in named if n.startswith('neck.')]
  decoder = [p for n, p in named if not n.startswith('encoder.') and not n.startswith('neck.')]
  groups = [{'params': encoder, 'lr': cfg['LR'] * cfg['ENCODER_LR_SCALE'], 'name': 'encoder'},
            {'params': decoder, 'lr': cfg['LR'], 'name': 'decoder'}]
  if cfg['USE_KENDALL']:
    groups.append({'params': criterion, 'lr': cfg['KENDALL_LR'], 'name': 'kendall'})
  optimizer = torch.optim.AdamW(groups, weight_decay=cfg['WEIGHT_DECAY'])
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg['EPOCHS'])
  optimizer.load_state_dict(pt['optimizer'])
  scheduler.load_state_dict(pt['scheduler'])
  start_epoch = pt['epoch'] + 1
  if cfg['FREEZE_ENCODER_EPOCHS'] > 0 and start_epoch < cfg['FREEZE_ENCODER_EPOCHS']:
    for p in encoder:
      p.requires_grad = False
  return dict(named) | dict(zip(KENDALL, criterion)), optimizer, cfg


@pytest.mark.e2e
@pytest.mark.parametrize('frozen', [False, True])
def test_one_reference_step_equals_ours(tmp_path, start, frozen):
  rng = np.random.default_rng(0)
  trainable, opt_state, update, pt = _train_and_convert(
      tmp_path, start, _config(frozen=frozen), lambda t: _random_grads(rng, t, 1e-4))
  assert pt['epoch'] == 0  # epoch 0 finished; the reference resumes at epoch + 1 = 1
  names = [n for n, _ in _fixture_parameters()]
  params, optimizer, cfg = _reference_resume(pt, [(n, pt['model'][n]) for n in names])

  # The same gradients for the next step, in both layouts; the reference's clipping, then its step.
  grads = _random_grads(rng, trainable, 1e-4)
  updates, next_state = update(grads, opt_state, trainable)
  expected = optax.apply_updates(trainable, updates)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    p = params[_torch_name(path)]
    p.grad = torch.from_numpy(np.ascontiguousarray(_to_torch(path, g))) if p.requires_grad else None
  torch.nn.utils.clip_grad_norm_([p for p in params.values() if p.grad is not None], cfg['GRAD_CLIP_NORM'])
  optimizer.step()

  for group, ours in zip(optimizer.param_groups, optimizer_lib.GROUPS):
    trained = not (frozen and ours == 'encoder')
    lr = float(optimizer_lib.learning_rates(next_state)[f'lr/{ours}'])
    assert lr == (pytest.approx(group['lr'], rel=1e-6) if trained else 0.0)
  worst = 0.0
  for path, value in jax.tree_util.tree_flatten_with_path(expected)[0]:
    got = params[_torch_name(path)].detach().numpy()
    worst = max(worst, float(np.max(np.abs(got - _to_torch(path, value)))))
  assert worst < 1e-6
  # The step moved every trained parameter (the comparison is not vacuous), and no frozen one.
  before = {_torch_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(trainable)[0]}
  for path, value in jax.tree_util.tree_flatten_with_path(expected)[0]:
    name = _torch_name(path)
    changed = np.max(np.abs(np.asarray(value) - before[name])) > 0
    assert changed != (frozen and name.startswith(('encoder.', 'neck.'))), name
