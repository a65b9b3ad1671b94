"""PyTorch <-> orbax conversion: strict, bit-exact round trip, clear refusals, timm encoder weights."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import DATA
from conftest import backbone_fixture
from conftest import backbones
from conftest import random_checkpoint
from conftest import run_command
from flax import nnx

from efficientvit_jax import checkpointing
from efficientvit_jax import convert
from efficientvit_jax import model as model_lib
from efficientvit_jax import torch_model
from efficientvit_jax import trees

FIXTURE = DATA / 'student_random.pt'


def _fixture():
  return torch.load(FIXTURE, weights_only=True)


def _refused(tmp_path, capsys, obj_or_bytes, expect, *extra):
  src = tmp_path / 'bad.pt'
  if isinstance(obj_or_bytes, bytes):
    src.write_bytes(obj_or_bytes)
  else:
    torch.save(obj_or_bytes, src)
  dst = tmp_path / 'out'
  assert convert.main(['torch-to-orbax', str(src), str(dst), *extra]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and len(err.strip().splitlines()) == 1, err
  assert expect in err, err
  assert not dst.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['bad.pt']  # no temporary left behind
  return err


def test_round_trip_is_bit_exact(tmp_path):
  folder, back = tmp_path / 'ckpt', tmp_path / 'back.pt'
  assert convert.main(['torch-to-orbax', str(FIXTURE), str(folder)]) == 0
  assert convert.main(['orbax-to-torch', str(folder), str(back)]) == 0
  original, result = _fixture(), torch.load(back, weights_only=True)
  assert list(result['model']) == list(original['model'])  # all 358 keys, reference order
  assert len(result['model']) == 358
  for key, value in original['model'].items():
    assert result['model'][key].dtype == value.dtype, key
    assert torch.equal(result['model'][key], value), key
  for key in ('log_sigma_d', 'log_sigma_s'):
    assert torch.equal(result['criterion'][key], original['criterion'][key])
  assert result['epoch'] == original['epoch'] == 42
  twin = torch_model.DepthSegNet()
  twin.load_state_dict(result['model'], strict=True)


def test_converted_folder_keeps_metadata(reference_folder):
  ckpt = convert.load_any(reference_folder)
  assert ckpt.meta['epoch'] == 43  # the .pt's last finished epoch is 42 (0-based): 43 finished
  assert len(ckpt.meta['num_batches_tracked']) == 47
  assert set(ckpt.meta['num_batches_tracked'].values()) == {1000}
  assert ckpt.meta['metrics']['val_depth_rmse'] == pytest.approx(0.572)
  assert ckpt.meta['dropped'] == []
  np.testing.assert_array_equal(ckpt.kendall['log_sigma_d'], [0.25])


@pytest.mark.parametrize('form', ['model_state_dict', 'bare'])
def test_accepts_other_file_forms(tmp_path, form):
  original = _fixture()
  obj = {'model_state_dict': original['model'], 'epoch': 3} if form != 'bare' else original['model']
  torch.save(obj, tmp_path / 'in.pt')
  ckpt = convert.checkpoint_from_torch_file(tmp_path / 'in.pt')
  assert ckpt.meta['epoch'] == (4 if form != 'bare' else 0)
  ref = convert.checkpoint_from_torch_file(FIXTURE)
  for a, b in zip(jax.tree.leaves(ckpt.params), jax.tree.leaves(ref.params)):
    np.testing.assert_array_equal(a, b)


def test_wrong_shape_is_refused(tmp_path, capsys):
  obj = _fixture()
  obj['model']['neck.0.weight'] = torch.zeros(128, 255, 1, 1)
  err = _refused(tmp_path, capsys, obj, 'neck.0.weight')
  assert '(128, 255, 1, 1)' in err and '(128, 256, 1, 1)' in err


def test_missing_key_is_refused(tmp_path, capsys):
  obj = _fixture()
  del obj['model']['depth_d2.fuse.1.running_var']
  _refused(tmp_path, capsys, obj, 'missing key depth_d2.fuse.1.running_var')


def test_unexpected_key_is_refused(tmp_path, capsys):
  obj = _fixture()
  obj['model']['depth_head.1.weight'] = torch.zeros(1)
  _refused(tmp_path, capsys, obj, 'unexpected key depth_head.1.weight')


def test_junk_bytes_are_refused(tmp_path, capsys):
  _refused(tmp_path, capsys, np.random.default_rng(0).bytes(4096), 'not a PyTorch checkpoint')
  # A zip that is not a torch file.
  import io
  import zipfile

  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w') as z:
    z.writestr('x.txt', 'hello')
  _refused(tmp_path, capsys, buffer.getvalue(), 'not a readable PyTorch checkpoint')


def test_non_imagenet_normalisation_is_refused(tmp_path, capsys):
  obj = _fixture()
  obj['model']['img_mean'] = torch.full((1, 3, 1, 1), 0.5)
  _refused(tmp_path, capsys, obj, 'img_mean')


def test_pickled_objects_need_allow_pickle(tmp_path, capsys):
  obj = _fixture()
  obj['config'] = {'DATA_ROOT': pathlib.PurePosixPath('/data')}
  _refused(tmp_path, capsys, obj, '--allow-pickle')
  dst = tmp_path / 'ok'
  assert convert.main(['torch-to-orbax', str(tmp_path / 'bad.pt'), str(dst), '--allow-pickle']) == 0
  assert convert.load_any(dst).meta['config']['DATA_ROOT'] == "PurePosixPath('/data')"


def test_existing_destination_is_refused(tmp_path, capsys, reference_folder):
  assert convert.main(['torch-to-orbax', str(FIXTURE), str(reference_folder)]) == 2
  assert 'already exists' in capsys.readouterr().err


def _timm_state_dict():
  """The fixture's encoder under timm's plain names, plus a classifier head."""
  out = {}
  for key, value in _fixture()['model'].items():
    if not key.startswith('encoder.'):
      continue
    name = key[len('encoder.'):]
    name = name.replace('stem_in_conv.', 'stem.in_conv.').replace('stem_res0.', 'stem.res0.')
    for i in range(4):
      name = name.replace(f'stages_{i}.', f'stages.{i}.')
    out[name] = value
  out['head.in_conv.conv.weight'] = torch.zeros(2304, 256, 1, 1)
  out['head.classifier.4.weight'] = torch.zeros(1000, 2560)
  return out


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_timm_encoder(tmp_path, reference_io, fmt):
  sd = _timm_state_dict()
  src = tmp_path / f'timm.{fmt}'
  if fmt == 'pth':
    torch.save(sd, src)
  else:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, src)
  dst = tmp_path / 'encoder'
  assert convert.main(['timm-encoder', str(src), str(dst)]) == 0
  ckpt = convert.load_any(dst)
  assert set(ckpt.params) == {'encoder'}
  model = model_lib.create(seed=1)
  copied = checkpointing.load_into_model(model, ckpt.params, ckpt.batch_stats, partial=True)
  assert len(copied) == len(trees.flatten(ckpt.params)) + len(trees.flatten(ckpt.batch_stats))
  graphdef, state = nnx.split(model)
  feats = jax.jit(lambda s, x: nnx.merge(graphdef, s).features(x))(state, jnp.asarray(reference_io['image']))
  for i in range(4):
    np.testing.assert_allclose(feats[i], reference_io[f'features_{i}'], atol=1e-4, rtol=0)
  # An encoder-only checkpoint cannot become a full reference .pt.
  with pytest.raises(checkpointing.CheckpointError, match='encoder-only'):
    convert.save_torch(ckpt, tmp_path / 'x.pt')


def test_batchnorm_counters(reference_ckpt):
  stats = reference_ckpt.batch_stats
  zeros = convert.start_counters(stats)
  assert len(zeros) == 47 and set(zeros.values()) == {0}
  init = convert.start_counters(stats, init_from=reference_ckpt.meta)  # the fixture's counters: 1000
  assert set(init.values()) == {1000}
  meta = convert.counters_meta(init, 12, frozen_steps=5)
  assert meta['init_num_batches_tracked'] == init
  assert meta['num_batches_tracked']['neck.1'] == 1007 and meta['num_batches_tracked']['depth_d1.bn'] == 1012
  assert convert.start_counters(stats, resumed={**reference_ckpt.meta, **meta}) == init


@pytest.mark.e2e
@pytest.mark.parametrize('case', ['read_only', 'float16', 'bfloat16', 'pickle_opcode'])
def test_command_line_refusals(tmp_path, read_only_dir, case):
  """Through the command line, one line and exit 2: a destination in a read-only place (before the
  source is read: it does not exist); a half-precision .pt named by its dtype before anything
  else is checked; a file the weights-only unpickler refuses for something other than a class
  (a pickle-protocol-5 opcode) still gets the --allow-pickle hint."""
  obj = _fixture()
  src, dst = tmp_path / f'{case}.pt', tmp_path / 'out'
  if case == 'read_only':
    src, dst = tmp_path / 'none.pt', read_only_dir / 'out'
    expect = f'cannot write {dst}: {read_only_dir}'
  elif case == 'pickle_opcode':
    torch.save({**obj, 'notes': bytearray(b'x')}, src, pickle_protocol=5)
    expect = 'refuses; if you trust the file, rerun with --allow-pickle'
  else:
    dtype = getattr(torch, case)
    torch.save({**obj, 'model': {k: v.to(dtype) if v.is_floating_point() else v for k, v in obj['model'].items()}}, src)
    expect = f'has dtype {case}, expected float32'
  _, line = run_command(['-m', 'efficientvit_jax.convert', 'torch-to-orbax', src, dst], 2)
  assert line.startswith('error: ') and expect in line, line
  assert not dst.exists() and not any(read_only_dir.iterdir())
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted({src.name, 'read_only'} - {'none.pt'})


# --------------------------------------------------------------------------------------------------
# Every backbone


@pytest.mark.parametrize('backbone', ['efficientvit_b0', 'mobilenet_v3_small'])
def test_backbone_fixture_round_trip_is_bit_exact(tmp_path, backbone):
  fixture = backbone_fixture(backbone)
  folder, back = tmp_path / 'ckpt', tmp_path / 'back.pt'
  assert convert.main(['torch-to-orbax', str(fixture['path']), str(folder)]) == 0
  meta = convert.load_any(folder).meta
  assert meta['backbone'] == backbone and meta['input_size'] == [240, 320]
  assert convert.main(['orbax-to-torch', str(folder), str(back)]) == 0
  original, result = fixture['pt'], torch.load(back, weights_only=True)
  assert list(result['model']) == list(original['model'])  # every key, in the reference's order
  for key, value in original['model'].items():
    assert result['model'][key].dtype == value.dtype and torch.equal(result['model'][key], value), key
  assert result['config']['BACKBONE'] == backbone and result['config']['INPUT_HEIGHT'] == 240
  assert {k: v for k, v in result['config'].items() if k != 'CLASS_NAMES'} == \
      {k: v for k, v in original['config'].items() if k != 'CLASS_NAMES'}
  torch_model.load_reference(back)  # strictly, with the backbone its config names


@pytest.mark.parametrize('backbone', backbones(*model_lib.BACKBONES))
def test_every_backbone_round_trip_from_ours_is_bit_exact(tmp_path, backbone):
  ckpt = random_checkpoint(backbone, step=7, epoch=2, input_size=[96, 128])
  folder, pt, again = tmp_path / 'a', tmp_path / 'a.pt', tmp_path / 'b'
  checkpointing.write_folder(folder, ckpt)
  assert convert.main(['orbax-to-torch', str(folder), str(pt)]) == 0
  obj = torch.load(pt, weights_only=True)
  assert obj['config'] == {'BACKBONE': backbone, 'INPUT_HEIGHT': 96, 'INPUT_WIDTH': 128}  # no training config
  twin = torch_model.DepthSegNet(backbone=backbone)
  twin.load_state_dict(obj['model'], strict=True)
  del obj['config']  # found from the shapes alone, too
  torch.save(obj, pt)
  assert convert.main(['torch-to-orbax', str(pt), str(again)]) == 0
  back = convert.load_any(again)
  assert back.meta['backbone'] == backbone
  for tree, tree_back in ((ckpt.params, back.params), (ckpt.batch_stats, back.batch_stats)):
    flat, flat_back = trees.flatten(tree), trees.flatten(tree_back)
    assert set(flat) == set(flat_back)
    for k, v in flat.items():
      np.testing.assert_array_equal(np.asarray(flat_back[k]), v, err_msg=k)


def test_backbone_named_in_config_wins_and_is_checked(tmp_path, capsys):
  obj = dict(backbone_fixture('efficientvit_b0')['pt'])
  obj['config'] = {**obj['config'], 'BACKBONE': 'efficientvit_b0.r224_in1k'}  # timm's tag is ignored
  assert convert.checkpoint_from_torch(obj, 'tagged').meta['backbone'] == 'efficientvit_b0'
  err = _refused(tmp_path, capsys, {**obj, 'config': {'BACKBONE': 'resnet50'}}, "config.BACKBONE is 'resnet50'")
  assert 'mobilenet_v3_small' in err  # the choices
  _refused(tmp_path, capsys, {**obj, 'config': {'BACKBONE': 'efficientvit_b1'}},
           "config.BACKBONE is 'efficientvit_b1', but key depth_d1.fuse.0.weight has shape (64, 128, 3, 3), "
           'expected (64, 192, 3, 3); its shapes are those of efficientvit_b0')


@pytest.mark.parametrize('backbone', ['efficientvit_b0', 'mobilenet_v3_small'])
def test_backbone_found_from_shapes(backbone):
  ckpt = convert.checkpoint_from_torch(backbone_fixture(backbone)['pt']['model'], 'bare')  # no config
  assert ckpt.meta['backbone'] == backbone and 'input_size' not in ckpt.meta
  old = checkpointing.Checkpoint(ckpt.params, ckpt.batch_stats, ckpt.kendall, {'step': 1})  # meta without it
  assert convert.checkpoint_backbone(old) == backbone


def test_state_dict_of_no_backbone_is_refused(tmp_path, capsys):
  sd = dict(backbone_fixture('efficientvit_b0')['pt']['model'])
  sd['neck.0.weight'] = torch.zeros(128, 100, 1, 1)
  err = _refused(tmp_path, capsys, sd, 'fits none of the backbones')
  assert 'nearest efficientvit_b0: key neck.0.weight has shape (128, 100, 1, 1), expected (128, 128, 1, 1)' in err


def _imagenet_state_dict(backbone):
  """A model's encoder under timm's plain names (EfficientViT) or torchvision's (`features.N`),
  with the classifier those files carry."""
  sd = convert.state_dict_from_checkpoint(random_checkpoint(backbone, seed=2, step=7, epoch=2, input_size=[96, 128]))
  out = {}
  for key, value in sd.items():
    if not key.startswith('encoder.'):
      continue
    name = key[len('encoder.'):]
    if backbone == 'mobilenet_v3_small':
      out['features.' + name] = value
    else:
      out[re.sub(r'^stages_(\d)\.', r'stages.\1.', re.sub(r'^stem_(in_conv|res0)\.', r'stem.\1.', name))] = value
  if backbone == 'mobilenet_v3_small':
    out.update({'classifier.0.weight': torch.zeros(1024, 576), 'classifier.3.weight': torch.zeros(1000, 1024)})
  else:
    out.update({'head.in_conv.conv.weight': torch.zeros(8, 8, 1, 1), 'head.classifier.4.weight': torch.zeros(1000, 8)})
  return sd, out


@pytest.mark.parametrize('backbone', backbones(*model_lib.BACKBONES))
def test_imagenet_encoder_of_every_backbone(tmp_path, capsys, backbone):
  sd, imagenet = _imagenet_state_dict(backbone)
  torch.save(imagenet, tmp_path / 'in1k.pth')
  assert convert.main(['timm-encoder', str(tmp_path / 'in1k.pth'), str(tmp_path / 'enc')]) == 0
  ckpt = convert.load_any(tmp_path / 'enc')
  assert ckpt.meta['backbone'] == backbone and convert.checkpoint_backbone(ckpt) == backbone
  model = model_lib.create(backbone=backbone, seed=5)  # init_from: the encoder's weights replace these
  checkpointing.load_into_model(model, ckpt.params, ckpt.batch_stats, partial=True)
  params, _ = checkpointing.model_trees(model)
  for path, value in trees.flatten(params).items():
    if path.startswith('encoder.'):
      want = sd[convert.torch_key(path)].numpy()
      if want.ndim == 4:
        want = want.transpose(convert._TO_JAX[convert._kind(path)])
      np.testing.assert_array_equal(value, want)
  # A file without one of its encoder's keys fits no backbone: refused naming the key.
  first = next(iter(imagenet))
  del imagenet[first]
  torch.save(imagenet, tmp_path / 'cut.pth')
  capsys.readouterr()
  assert convert.main(['timm-encoder', str(tmp_path / 'cut.pth'), str(tmp_path / 'x')]) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and not (tmp_path / 'x').exists()
  assert 'fits none of the backbones' in err and f'nearest {backbone}: missing key encoder.' in err, err


def test_input_size_recorded():
  meta = lambda **m: checkpointing.Checkpoint({}, {}, {}, m)
  assert convert.input_size_of(meta(input_size=[96, 128])) == (96, 128)
  assert convert.input_size_of(meta(config={'data': {'input_size': [48, 64]}})) == (48, 64)  # older checkpoints
  assert convert.input_size_of(meta(config={'INPUT_HEIGHT': 240, 'INPUT_WIDTH': 320})) == (240, 320)  # a .pt's
  assert convert.input_size_of(meta(config={})) is None
