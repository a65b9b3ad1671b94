"""A .pt written with --with-optimizer resumes in the reference's way: torch.optim.AdamW over the
three groups and CosineAnnealingLR load its state, and the next update equals the JAX optimiser's."""

import jax
import ml_collections
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from configs import default
from efficientvit_jax import checkpointing
from efficientvit_jax import convert
from efficientvit_jax import model as model_lib
from efficientvit_jax import optimizer as optimizer_lib
from efficientvit_jax import torch_model

pytestmark = pytest.mark.e2e
STEPS_PER_EPOCH = 2


def _grads(rng, tree, scale):
  return jax.tree.map(lambda x: (scale * rng.standard_normal(x.shape)).astype(np.float32), tree)


@pytest.mark.parametrize('frozen', [False, True])
def test_pt_with_optimizer_continues_with_the_same_update(tmp_path, frozen):
  config = default.get_config()
  config.num_epochs, config.optimizer.lr_per_epoch = 4, True
  config.freeze_encoder_epochs = 2 if frozen else 0  # still frozen at the next step: no encoder state
  config.optimizer.encoder_lr, config.optimizer.decoder_lr, config.optimizer.kendall_lr = 1e-3, 2e-3, 5e-3
  tx = optimizer_lib.make_optimizer(config, steps_per_epoch=STEPS_PER_EPOCH, total_steps=8)
  model = model_lib.create(seed=1)
  trainable = {'model': nnx.state(model, nnx.Param), 'kendall': checkpointing.default_kendall()}
  trainable = jax.tree.map(np.asarray, trainable)
  opt_state = tx.init(trainable)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(0)
  for _ in range(STEPS_PER_EPOCH):  # one epoch; the global gradient norm stays below clip_norm
    updates, opt_state = update(_grads(rng, trainable, 1e-4), opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)

  # A training workdir's checkpoint of this state, as train.py writes it.
  step = STEPS_PER_EPOCH
  ckpt = checkpointing.Checkpoint(
      params=checkpointing.state_to_tree(trainable['model']), batch_stats=checkpointing.model_trees(model)[1],
      kendall={k: np.asarray(v) for k, v in trainable['kendall'].items()},
      meta={'step': step, 'epoch': step // STEPS_PER_EPOCH, 'config': config.to_dict(), 'metrics': {},
            'num_batches_tracked': {}})
  ckptr = checkpointing.TrainCheckpointer(tmp_path / 'w', keep=1, async_save=False)
  ckptr.save(step, ckpt, opt_state, {'step': step})
  ckptr.close()
  pt = tmp_path / 'resume.pt'
  assert convert.main(['orbax-to-torch', str(tmp_path / 'w'), str(pt), '--with-optimizer']) == 0

  # The reference's resume: build model, criterion, AdamW (3 groups) and scheduler, load the state.
  obj = torch.load(pt, weights_only=True)
  assert obj['epoch'] == 0  # epoch 0 finished; the reference resumes at epoch + 1 = 1
  twin = torch_model.DepthSegNet()
  twin.load_state_dict(obj['model'])
  kendall = [torch.nn.Parameter(obj['criterion'][k].clone()) for k in ('log_sigma_d', 'log_sigma_s')]
  optimizer, scheduler = convert.reference_optimizer(twin, kendall, ml_collections.ConfigDict(config.to_dict()))
  optimizer.load_state_dict(obj['optimizer'])
  scheduler.load_state_dict(obj['scheduler'])
  groups = obj['optimizer']['param_groups']
  assert len(groups) == 3 and scheduler.last_epoch == 1
  sizes = [len(g['params']) for g in groups]
  assert sizes[2] == 2 and sum(sizes) == len(list(twin.parameters())) + 2
  state = obj['optimizer']['state']
  assert len(state) == (sizes[1] + 2 if frozen else sum(sizes))
  assert all(float(s['step']) == STEPS_PER_EPOCH for s in state.values())

  # The same gradients for the next step, in both layouts.
  grads = _grads(rng, trainable, 1e-4)
  updates, _ = update(grads, opt_state, trainable)
  expected = optax.apply_updates(trainable, updates)
  flat_grads = {convert.torch_key(convert._dotted(p).split('.', 1)[1]) if not convert._dotted(p).startswith('kendall')
                else convert._dotted(p).split('.', 1)[1]: (convert._dotted(p), v)
                for p, v in jax.tree_util.tree_flatten_with_path(grads)[0]}
  params = {**dict(twin.named_parameters()), 'log_sigma_d': kendall[0], 'log_sigma_s': kendall[1]}
  for key, p in params.items():
    dotted, g = flat_grads[key]
    ours = dotted.split('.', 1)[1]
    layout = convert._TO_TORCH[convert._kind(ours)] if g.ndim == 4 and not dotted.startswith('kendall') else None
    if frozen and dotted.split('.')[1] in ('encoder', 'neck'):
      p.grad = None  # requires_grad=False in the reference while frozen
    else:
      p.grad = torch.from_numpy(np.ascontiguousarray(g.transpose(layout) if layout else g))
  optimizer.step()
  worst = 0.0
  for path, value in jax.tree_util.tree_flatten_with_path(expected)[0]:
    dotted = convert._dotted(path)
    ours = dotted.split('.', 1)[1]
    key = ours if dotted.startswith('kendall') else convert.torch_key(ours)
    got = params[key].detach().numpy()
    if value.ndim == 4 and not dotted.startswith('kendall'):
      got = got.transpose(convert._TO_JAX[convert._kind(ours)])
    worst = max(worst, float(np.max(np.abs(got - np.asarray(value)))))
  assert worst < 1e-6
  # And the step moved every trained parameter (the comparison is not vacuous).
  before = dict((convert._dotted(p), v) for p, v in jax.tree_util.tree_flatten_with_path(trainable)[0])
  for path, value in jax.tree_util.tree_flatten_with_path(expected)[0]:
    dotted = convert._dotted(path)
    if not (frozen and dotted.split('.')[1] in ('encoder', 'neck')):
      assert np.max(np.abs(np.asarray(value) - np.asarray(before[dotted]))) > 0, dotted
