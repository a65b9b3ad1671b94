"""The timm-free PyTorch twin against the reference fixture made with real timm (docs/model.md#reference-fixture)."""

import argparse
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from efficientvit_jax import torch_model  # noqa: E402

torch.set_num_threads(2)
DATA = pathlib.Path(__file__).parent / 'data'


@pytest.fixture(scope='module')
def checkpoint() -> dict:
  return torch.load(DATA / 'student_random.pt', map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def io() -> dict[str, np.ndarray]:
  return dict(np.load(DATA / 'student_random_io.npz'))


def _nchw(image: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(image).permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> np.ndarray:
  return x.detach().permute(0, 2, 3, 1).numpy()


def test_state_dict_layout_matches_reference():
  expected = []
  for line in (DATA / 'student_state_dict_keys.txt').read_text().splitlines():
    key, shape, dtype = line.split('\t')
    expected.append((key, shape, dtype))
  got = [(k, str(tuple(v.shape)), str(v.dtype).removeprefix('torch.'))
         for k, v in torch_model.DepthSegNet().state_dict().items()]
  assert len(got) == 358
  assert got == expected


def test_parameter_counts():
  model = torch_model.DepthSegNet()
  assert sum(p.numel() for p in model.parameters()) == 5_312_919
  assert sum(p.numel() for p in model.encoder.parameters()) == 4_643_936


def test_default_buffers_hold_imagenet_stats(checkpoint):
  model = torch_model.DepthSegNet()
  for name in ('img_mean', 'img_std'):
    torch.testing.assert_close(getattr(model, name), checkpoint['model'][name], rtol=0, atol=0)


@pytest.mark.parametrize('form', ['model', 'model_state_dict', 'bare', 'path'])
def test_load_reference_forms(checkpoint, form):
  state = checkpoint['model']
  source = {'model': checkpoint, 'model_state_dict': {'model_state_dict': state, 'epoch': 3},
            'bare': state, 'path': DATA / 'student_random.pt'}[form]
  model = torch_model.load_reference(source)
  assert not model.training
  for key, value in model.state_dict().items():
    assert torch.equal(value, state[key]), key


def test_load_reference_strict_names_missing_key(checkpoint):
  state = dict(checkpoint['model'])
  del state['seg_head.bias']
  with pytest.raises(RuntimeError, match='seg_head.bias'):
    torch_model.load_reference(state)
  torch_model.load_reference(state, strict=False)


def test_load_reference_pickle_needs_opt_in(checkpoint, tmp_path):
  path = tmp_path / 'pickled.pt'
  torch.save({'model': checkpoint['model'], 'config': argparse.Namespace(lr=1e-4)}, path)
  with pytest.raises(RuntimeError, match='allow_pickle'):
    torch_model.load_reference(path)
  torch_model.load_reference(path, allow_pickle=True)


def test_eval_outputs_match_reference(checkpoint, io):
  model = torch_model.load_reference(checkpoint)
  x = _nchw(io['image'])
  with torch.no_grad():
    depth, seg_logits = model(x)
    features = model.forward_features(x)
  assert depth.shape == (1, 1, 240, 320) and seg_logits.shape == (1, 6, 240, 320)
  np.testing.assert_allclose(depth[:, 0].numpy(), io['depth'], rtol=0, atol=1e-4)
  np.testing.assert_allclose(_nhwc(seg_logits), io['seg_logits'], rtol=0, atol=1e-4)
  for i, f in enumerate(features):
    np.testing.assert_allclose(_nhwc(f), io[f'features_{i}'], rtol=0, atol=1e-4, err_msg=f'features_{i}')


def test_train_mode_outputs_match_reference(checkpoint, io):
  model = torch_model.load_reference(checkpoint).train()
  with torch.no_grad():
    depth, seg_logits = model(_nchw(io['image']))
  np.testing.assert_allclose(depth[:, 0].numpy(), io['depth_train_mode'], rtol=0, atol=1e-3)
  np.testing.assert_allclose(_nhwc(seg_logits), io['seg_logits_train_mode'], rtol=0, atol=1e-3)
  assert int(model.neck[1].num_batches_tracked) == int(checkpoint['model']['neck.1.num_batches_tracked']) + 1


def test_odd_input_size():
  model = torch_model.DepthSegNet().eval()
  with torch.no_grad():
    depth, seg_logits = model(torch.rand(2, 3, 33, 47))
    features = model.forward_features(torch.rand(1, 3, 33, 47))
  assert depth.shape == (2, 1, 33, 47) and seg_logits.shape == (2, 6, 33, 47)
  assert (depth >= 0).all()
  assert [tuple(f.shape[1:]) for f in features] == [(32, 9, 12), (64, 5, 6), (128, 3, 3), (256, 2, 2)]


@pytest.mark.parametrize('backbone', ['efficientvit_b0', 'mobilenet_v3_small'])
def test_backbone_fixtures(backbone):
  """timm's `efficientvit_b0` and torchvision's `mobilenet_v3_small().features` with the reference's
  decoder (tests/data/backbones/): the same keys and shapes, and the same eval-mode outputs."""
  from conftest import backbone_fixture

  fixture = backbone_fixture(backbone)
  state = fixture['pt']['model']
  twin = torch_model.DepthSegNet(backbone=backbone)
  assert {k: tuple(v.shape) for k, v in twin.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
  model = torch_model.load_reference(fixture['path'])  # the backbone its config names
  assert model.backbone == backbone
  with torch.no_grad():
    depth, seg_logits = model(_nchw(fixture['image']))
  np.testing.assert_allclose(depth[:, 0].numpy(), fixture['depth'], rtol=0, atol=1e-4)
  np.testing.assert_allclose(_nhwc(seg_logits), fixture['seg_logits'], rtol=0, atol=1e-4)


def test_unknown_backbone_is_refused():
  with pytest.raises(ValueError, match='one of efficientvit_b0'):
    torch_model.DepthSegNet(backbone='resnet50')
