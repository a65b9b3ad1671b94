"""The prediction CLI, end to end from a reference .pt, against the PyTorch twin; its refusals."""

import argparse

import numpy as np
import pytest
import torch
from conftest import DATA
from conftest import run_command
from PIL import Image

from efficientvit_jax import images
from efficientvit_jax import predict
from efficientvit_jax import torch_model


@pytest.fixture(scope='module')
def random_pt(tmp_path_factory):
  """A different random reference checkpoint (random weights and BN statistics)."""
  torch.manual_seed(123)
  twin = torch_model.DepthSegNet()
  with torch.no_grad():
    for name, buf in twin.named_buffers():
      if name.endswith('running_mean'):
        buf.normal_(0, 0.1)
      elif name.endswith('running_var'):
        buf.uniform_(0.5, 1.5)
    for name, p in twin.named_parameters():
      if name.endswith('norm.weight') or name.endswith('bn.weight') or name.endswith('.1.weight') and p.ndim == 1:
        p.uniform_(0.5, 1.5)
  path = tmp_path_factory.mktemp('pt') / 'random.pt'
  torch.save({'model': twin.state_dict(), 'criterion': {'log_sigma_d': torch.zeros(1), 'log_sigma_s': torch.zeros(1)},
              'epoch': 1}, path)
  return path, twin.eval()


def _twin_outputs(twin, rgb_uint8):
  x = torch.from_numpy(rgb_uint8.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
  with torch.no_grad():
    depth, seg = twin(x)
  return depth[0, 0].numpy(), seg[0].permute(1, 2, 0).numpy()


def test_cli_matches_twin_at_another_size(tmp_path, random_pt):
  path, twin = random_pt
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (96, 160, 3), np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'frame.png')
  out = tmp_path / 'out'
  assert predict.main(['--checkpoint', str(path), '--out', str(out), '--size', '96x160', '--save-logits',
                       '--depth-png', str(tmp_path / 'frame.png')]) == 0
  depth, logits = _twin_outputs(twin, rgb)
  np.testing.assert_allclose(np.load(out / 'frame_depth.npy'), depth, atol=1e-3, rtol=0)
  with Image.open(out / 'frame_depth_mm.png') as png:
    assert png.mode == 'I;16' and png.size == (160, 96)
    np.testing.assert_array_equal(np.asarray(png), np.rint(np.load(out / 'frame_depth.npy') * 1000))
  np.testing.assert_allclose(np.load(out / 'frame_seg_logits.npy'), logits, atol=1e-3, rtol=0)
  seg = np.asarray(Image.open(out / 'frame_seg.png'))
  assert seg.shape == (96, 160) and seg.max() < 6
  assert (out / 'frame_panel.png').stat().st_size > 0


@pytest.mark.e2e
def test_resize_native_size_and_modes(tmp_path, random_pt):
  path, _ = random_pt
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (70, 90, 3), np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'rgb.png')
  Image.fromarray(rgb).convert('L').save(tmp_path / 'grey.png')
  Image.fromarray(rgb).convert('RGBA').save(tmp_path / 'rgba.png')
  out = tmp_path / 'out'
  images = [str(tmp_path / n) for n in ('rgb.png', 'grey.png', 'rgba.png')]
  assert predict.main(['--checkpoint', str(path), '--out', str(out), '--size', '64x96', *images]) == 0
  assert np.load(out / 'rgb_depth.npy').shape == (64, 96)
  # RGBA drops alpha: the same pixels as the RGB file.
  np.testing.assert_array_equal(np.load(out / 'rgb_depth.npy'), np.load(out / 'rgba_depth.npy'))
  native = tmp_path / 'native'
  assert predict.main(['--checkpoint', str(path), '--out', str(native), '--size', '64x96', '--native-size',
                       images[0]]) == 0
  assert np.load(native / 'rgb_depth.npy').shape == (70, 90)
  assert np.asarray(Image.open(native / 'rgb_seg.png')).shape == (70, 90)


def test_bad_images_are_refused(tmp_path, capsys, random_pt):
  path, _ = random_pt
  Image.fromarray(np.zeros((40, 50), np.uint16)).save(tmp_path / 'depth16.png')
  (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
  for name, expect in (('depth16.png', '16/32-bit'), ('broken.png', 'cannot be decoded'), ('none.png', 'no such file')):
    assert predict.main(['--checkpoint', str(path), '--out', str(tmp_path / 'o'), str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert name in err and expect in err, err
  Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / 'ok.png')
  assert predict.main(['--checkpoint', str(tmp_path / 'nothing.pt'), '--out', str(tmp_path / 'o'),
                       str(tmp_path / 'ok.png')]) == 2
  assert 'nothing.pt' in capsys.readouterr().err
  assert not (tmp_path / 'o').exists()


def test_depth_png_millimetres(tmp_path):
  depth = np.array([[0.0, 0.0004, 0.0006, 1.2344], [1.2346, 10.0, 65.535, 80.0]], np.float32)
  np.testing.assert_array_equal(predict.depth_to_uint16(depth), [[0, 0, 1, 1234], [1235, 10000, 65535, 65535]])
  predict.save_depth_png(tmp_path / 'd.png', depth)
  with Image.open(tmp_path / 'd.png') as png:
    assert png.mode == 'I;16'
  back = predict.read_depth_png(tmp_path / 'd.png')
  assert back.dtype == np.float32
  np.testing.assert_allclose(back[depth < 65], depth[depth < 65], atol=5e-4)
  assert back[1, 3] == np.float32(65.535)  # saturated, not wrapped


def test_python_api_on_uint8_images(tmp_path, random_pt):
  path, twin = random_pt
  predictor = predict.load(path, size=(64, 96))
  rng = np.random.default_rng(2)
  rgb = rng.integers(0, 256, (64, 96, 3), np.uint8)
  out = predictor(rgb)
  assert out['depth'].shape == (64, 96) and out['labels'].dtype == np.uint8
  depth, logits = _twin_outputs(twin, rgb)
  np.testing.assert_allclose(out['depth'], depth, atol=1e-3, rtol=0)
  np.testing.assert_array_equal(out['labels'], np.argmax(out['seg_logits'], -1))
  # A batch of another size: resized in, and back out with native_size; same pixels as one by one.
  frames = rng.integers(0, 256, (3, 70, 90, 3), np.uint8)
  batch = predictor(frames, native_size=True)
  assert batch['depth'].shape == (3, 70, 90) and batch['seg_logits'].shape == (3, 70, 90, 6)
  np.testing.assert_allclose(batch['depth'][1], predictor(frames[1], native_size=True)['depth'], atol=1e-6)
  with pytest.raises(ValueError, match='uint8'):
    predictor(frames.astype(np.float32) / 255)


def test_size_limits_are_stated_and_checked():
  assert images.parse_size(f'{images.MAX_SIDE}x{images.MIN_SIDE}') == (images.MAX_SIDE, images.MIN_SIDE)
  with pytest.raises(argparse.ArgumentTypeError, match=f'at most {images.MAX_SIDE}'):
    images.parse_size(f'240x{images.MAX_SIDE + 1}')
  images.check_batch_pixels((4096, 4096), 2)  # 2**25 pixels: at the limit
  with pytest.raises(ValueError, match='use --batch-size 436 or less'):
    images.check_batch_pixels((240, 320), 437)
  assert f'{images.MIN_SIDE} to {images.MAX_SIDE}' in images.SIZE_HELP


@pytest.mark.e2e
@pytest.mark.parametrize('case', ['batch_size_0', 'out_is_a_file', 'out_read_only', 'absurd_size', 'batch_too_big'])
def test_command_line_refusals_before_any_work(tmp_path, read_only_dir, case):
  """Each refusal: exit 2, one line naming the flag, nothing written. The checkpoint named does not
  exist, so a refusal seen proves the check came before loading anything; a read-only --out is
  found once the images and the checkpoint are read (they can fail without creating --out), before
  the prediction."""
  Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / 'a.png')
  (tmp_path / 'file').write_text('keep')
  out = tmp_path / 'out'
  args = {'batch_size_0': (['--batch-size', '0'], '--batch-size must be at least 1, got 0'),
          'out_is_a_file': (['--out', tmp_path / 'file'], 'is a file; predict writes a folder'),
          'out_read_only': (['--out', read_only_dir / 'sub', '--checkpoint', DATA / 'student_random.pt'],
                            'cannot write --out'),
          'absurd_size': (['--size', '100000x100000'], f'--size: each side must be at most {images.MAX_SIDE}'),
          'batch_too_big': (['--size', '4096x4096', '--batch-size', '4'], 'use --batch-size 2 or less')}[case]
  argv = {'--checkpoint': tmp_path / 'none.pt', '--out': out}
  argv.update(zip(args[0][::2], args[0][1::2]))
  images_in = [tmp_path / 'a.png'] * (3 if case == 'batch_too_big' else 1)
  _, line = run_command(['-m', 'efficientvit_jax.predict', *[x for kv in argv.items() for x in kv], *images_in], 2)
  assert args[1] in line, line
  assert not out.exists() and (tmp_path / 'file').read_text() == 'keep' and not any(read_only_dir.iterdir())
