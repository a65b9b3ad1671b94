"""The Flax model against the reference fixture (made with real timm) and the PyTorch twin."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from efficientvit_jax import checkpointing
from efficientvit_jax import convert
from efficientvit_jax import model as model_lib
from efficientvit_jax import torch_model
from efficientvit_jax import trees


def _forward(model, image, train):
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, image):
    m = nnx.merge(graphdef, state)
    return m(image, train=train), m.features(image, train=False), nnx.state(m)

  return run(state, jnp.asarray(image))


def test_parameter_counts():
  model = model_lib.create()
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(model) == 5_312_919
  assert count(model.encoder) == 4_643_936


@pytest.mark.parametrize('size', [(64, 64), (33, 47), (240, 320)])
def test_shapes(size):
  model = nnx.eval_shape(lambda: model_lib.create())
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=True), state,
                       jax.ShapeDtypeStruct((2, *size, 3), jnp.float32))
  assert out['depth'].shape == (2, *size) and out['seg_logits'].shape == (2, *size, 6)
  feats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).features(x), state,
                         jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
  h, w = size
  for i, f in enumerate(feats):
    stride = 4 * 2 ** i
    assert f.shape[1:3] == (-(-h // stride), -(-w // stride))


@pytest.mark.parametrize('train', [False, True])
def test_matches_reference_fixture(reference_ckpt, reference_io, train):
  model = model_lib.create()
  checkpointing.load_into_model(model, reference_ckpt.params, reference_ckpt.batch_stats)
  out, feats, _ = _forward(model, reference_io['image'], train)
  suffix, tol = ('_train_mode', 1e-3) if train else ('', 1e-4)
  np.testing.assert_allclose(out['depth'], reference_io['depth' + suffix], atol=tol, rtol=0)
  np.testing.assert_allclose(out['seg_logits'], reference_io['seg_logits' + suffix], atol=tol, rtol=0)
  if not train:
    for i in range(4):
      np.testing.assert_allclose(feats[i], reference_io[f'features_{i}'], atol=1e-4, rtol=0)


def test_batchnorm_statistics_follow_pytorch(reference_ckpt):
  """Train mode updates running stats as torch does: momentum 0.1, unbiased running variance."""
  torch.manual_seed(0)
  image = np.random.default_rng(0).random((2, 64, 96, 3), np.float32)
  twin = torch_model.DepthSegNet()
  twin.load_state_dict(convert.state_dict_from_checkpoint(reference_ckpt))
  twin.train()
  with torch.no_grad():
    twin(torch.from_numpy(image).permute(0, 3, 1, 2))
  expected = twin.state_dict()

  model = model_lib.create()
  checkpointing.load_into_model(model, reference_ckpt.params, reference_ckpt.batch_stats)
  _, _, state = _forward(model, image, train=True)
  stats = trees.flatten(checkpointing.state_to_tree(nnx.filter_state(state, nnx.BatchStat)))
  assert len(stats) == 94
  for path, value in stats.items():
    np.testing.assert_allclose(value, expected[convert.torch_key(path)].numpy(), rtol=1e-5, atol=1e-5,
                               err_msg=path)


def test_bfloat16_compute(reference_ckpt, reference_io):
  model = model_lib.create(dtype=jnp.bfloat16)
  checkpointing.load_into_model(model, reference_ckpt.params, reference_ckpt.batch_stats)
  image = reference_io['image'][:, :64, :96]
  out, _, state = _forward(model, image, train=False)
  assert out['depth'].dtype == jnp.float32 and out['seg_logits'].dtype == jnp.float32
  leaves = jax.tree.leaves(nnx.filter_state(state, nnx.Param))
  assert all(x.dtype == jnp.float32 for x in leaves)  # parameters stay float32

  ref = model_lib.create()
  checkpointing.load_into_model(ref, reference_ckpt.params, reference_ckpt.batch_stats)
  out32, _, _ = _forward(ref, image, train=False)
  rel = np.abs(out['depth'] - out32['depth']).mean() / np.abs(out32['depth']).mean()
  assert rel < 0.05
