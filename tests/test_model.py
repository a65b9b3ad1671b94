"""The Flax model against the reference fixtures (made with real timm / torchvision) and the PyTorch twin."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import backbone_fixture
from conftest import backbones
from conftest import random_checkpoint
from flax import nnx

from efficientvit_jax import checkpointing
from efficientvit_jax import convert
from efficientvit_jax import model as model_lib
from efficientvit_jax import torch_model
from efficientvit_jax import trees

# The reference's parameter counts (its model code with real timm / torchvision; B0 and
# MobileNetV3-Small: the fixtures' state dicts; B2, B3: 15.76 M and 39.89 M).
PARAMETERS = {'efficientvit_b0': 1_238_439, 'efficientvit_b1': 5_312_919, 'efficientvit_b2': 15_759_143,
              'efficientvit_b3': 39_892_727, 'mobilenet_v3_small': 1_507_927}

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


@pytest.mark.parametrize('backbone', model_lib.BACKBONES)
def test_parameter_counts_of_every_backbone(backbone):
  model = nnx.eval_shape(lambda: model_lib.create(backbone=backbone))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == PARAMETERS[backbone]
  assert round(PARAMETERS[backbone] / 1e6, 2) == {'efficientvit_b0': 1.24, 'efficientvit_b1': 5.31,
                                                   'efficientvit_b2': 15.76, 'efficientvit_b3': 39.89,
                                                   'mobilenet_v3_small': 1.51}[backbone]
  for b in ('efficientvit_b0', 'mobilenet_v3_small'):  # the fixtures' own state dicts
    sd = backbone_fixture(b)['pt']['model']
    stats = ('running_mean', 'running_var', 'num_batches_tracked')
    assert sum(v.numel() for k, v in sd.items()
               if not k.endswith(stats) and k not in ('img_mean', 'img_std')) == PARAMETERS[b]


@pytest.mark.parametrize('backbone', model_lib.BACKBONES)
def test_feature_strides_and_channels(backbone):
  model = nnx.eval_shape(lambda: model_lib.create(backbone=backbone))
  graphdef, state = nnx.split(model)
  feats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).features(x), state,
                         jax.ShapeDtypeStruct((1, 45, 61, 3), jnp.float32))
  assert [f.shape[1:] for f in feats] == [(-(-45 // s), -(-61 // s), c) for s, c in
                                          zip((4, 8, 16, 32), model_lib.encoder_channels(backbone))]


@pytest.mark.parametrize('backbone', ['efficientvit_b0', 'mobilenet_v3_small'])
def test_backbone_matches_reference_fixture(backbone):
  """Real timm / torchvision with the reference's decoder, eval mode, 120x160 (15 -> 8 rows at stride 32)."""
  fixture = backbone_fixture(backbone)
  ckpt = convert.checkpoint_from_torch(fixture['pt'], 'fixture')
  assert convert.checkpoint_backbone(ckpt) == backbone
  model = model_lib.create(backbone=backbone)
  checkpointing.load_into_model(model, ckpt.params, ckpt.batch_stats)
  out, _, _ = _forward(model, fixture['image'], False)
  np.testing.assert_allclose(out['depth'], fixture['depth'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out['seg_logits'], fixture['seg_logits'], atol=1e-4, rtol=0)


@pytest.mark.parametrize('backbone', backbones('efficientvit_b0', 'efficientvit_b2', 'efficientvit_b3',
                                                'mobilenet_v3_small'))
def test_every_backbone_matches_the_twin_at_an_odd_size(backbone):
  """Eval and train mode at 45x61 (every stride rounds up; B1: test_matches_reference_fixture). B2 and
  B3 have no fixture but share every block with B0 / B1 except the 32-channel attention heads."""
  torch.manual_seed(0)
  ckpt = random_checkpoint(backbone, seed=3)
  twin = torch_model.load_reference(convert.state_dict_from_checkpoint(ckpt), backbone=backbone)
  image = np.random.default_rng(1).random((2, 45, 61, 3), np.float32)
  model = model_lib.create(backbone=backbone)
  checkpointing.load_into_model(model, ckpt.params, ckpt.batch_stats)
  for train in (False, True):
    twin.train(train)
    with torch.no_grad():
      depth, logits = twin(torch.from_numpy(image).permute(0, 3, 1, 2))
    out, _, _ = _forward(model, image, train)
    tol = (1e-3 if train else 1e-4) * max(1.0, float(np.abs(logits.numpy()).max()))  # as the fixture tests
    np.testing.assert_allclose(out['depth'], depth[:, 0].numpy(), atol=tol, rtol=0, err_msg=f'train={train}')
    np.testing.assert_allclose(out['seg_logits'], logits.permute(0, 2, 3, 1).numpy(), atol=tol, rtol=0,
                               err_msg=f'train={train}')


def test_mobilenet_batchnorm_follows_torchvision():
  """torchvision's MobileNetV3 BatchNorm: eps 1e-3 and momentum 0.01 in the encoder, the decoder's 0.1."""
  fixture = backbone_fixture('mobilenet_v3_small')
  ckpt = convert.checkpoint_from_torch(fixture['pt'], 'fixture')
  twin = torch_model.load_reference(fixture['pt']).train()
  image = fixture['image'][:, :64, :96]
  with torch.no_grad():
    twin(torch.from_numpy(image).permute(0, 3, 1, 2))
  expected = twin.state_dict()
  model = model_lib.create(backbone='mobilenet_v3_small')
  checkpointing.load_into_model(model, ckpt.params, ckpt.batch_stats)
  assert model.encoder.features[0].norm.momentum == 0.01 and model.encoder.features[0].norm.eps == 1e-3
  _, _, state = _forward(model, image, train=True)
  stats = trees.flatten(checkpointing.state_to_tree(nnx.filter_state(state, nnx.BatchStat)))
  for path, value in stats.items():
    np.testing.assert_allclose(value, expected[convert.torch_key(path)].numpy(), rtol=1e-5, atol=1e-5, err_msg=path)


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


def test_bfloat16_compute_mobilenet():
  """The squeeze-excitation's mean and gates under the bf16 policy: close to float32, parameters float32."""
  fixture = backbone_fixture('mobilenet_v3_small')
  ckpt = convert.checkpoint_from_torch(fixture['pt'], 'fixture')
  outs = []
  for dtype in (jnp.bfloat16, jnp.float32):
    model = model_lib.create(backbone='mobilenet_v3_small', dtype=dtype)
    checkpointing.load_into_model(model, ckpt.params, ckpt.batch_stats)
    outs.append(_forward(model, fixture['image'], train=False)[0])
  assert outs[0]['depth'].dtype == jnp.float32
  rel = np.abs(outs[0]['depth'] - outs[1]['depth']).mean() / np.abs(outs[1]['depth']).mean()
  assert rel < 0.05


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


def test_presets_name_a_backbone_of_the_family():
  import importlib

  from conftest import ROOT

  presets = [p for p in sorted((ROOT / 'efficientvit_jax' / 'configs').glob('*.py')) if p.stem != '__init__']
  assert len(presets) >= 7
  for path in presets:
    config = importlib.import_module(f'efficientvit_jax.configs.{path.stem}').get_config()
    assert config.model.backbone in model_lib.BACKBONES, path.name
  v5, v5_b2 = (importlib.import_module(f'efficientvit_jax.configs.{n}').get_config() for n in ('v5', 'v5_b2'))
  assert v5_b2.model.backbone == 'efficientvit_b2' and v5.model.backbone == 'efficientvit_b1'
  v5_b2.model.backbone = v5.model.backbone
  assert v5_b2.to_dict() == v5.to_dict()  # the V5 recipe, only the encoder differs
