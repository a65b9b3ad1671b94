"""TFDS ArrayRecord datasets, built and read without TensorFlow, equal the file readers."""

import sys

import numpy as np
import pytest

pytest.importorskip('tensorflow_datasets')  # the `tfds` extra

from data_pipelines import datasets
from data_pipelines import readers
from data_pipelines import tfds_builders
from efficientvit_jax.configs import quickstart


@pytest.fixture(scope='module')
def root(synthetic_tiny):
  return str(synthetic_tiny)


@pytest.fixture(scope='module')
def built(root, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('tfds'))
  tfds_builders.main(['--root', root, '--out', out])
  return out


def config_for(root, fmt, tfds_dir=''):
  c = quickstart.get_config()
  c.data.root, c.data.format, c.data.tfds_dir = root, fmt, tfds_dir
  c.data.input_size = (48, 64)
  c.data.num_threads = 2
  c.batch_size, c.num_train_steps = 4, 2
  return c


def test_built_without_tensorflow(built):
  del built
  assert 'tensorflow' not in sys.modules


@pytest.mark.parametrize('set_name,split', [('nyu', 'train'), ('nyu', 'val'), ('nyu', 'all'),
                                            ('lilocbench', 'train'), ('lilocbench', 'val'),
                                            ('corridor', 'all')])
def test_tfds_frames_equal_file_frames(root, built, set_name, split):
  paths = datasets.resolve_paths(config_for(root, 'files').data)
  files = readers.make_file_reader(set_name, split, paths)
  tfds = datasets.make_reader(dict(paths, format='tfds', tfds_dir=built), set_name, split)
  assert len(files) == len(tfds) > 0
  for i in range(len(files)):
    a, b = files.read(i), tfds.read(i)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f'{set_name} {split} {i} {k}')


def test_tfds_pipeline_equals_files(root, built):
  a = list(datasets.train_iterator(config_for(root, 'files'), num_steps=2))
  b = list(datasets.train_iterator(config_for(root, 'tfds', built), num_steps=2))
  assert len(a) == len(b) == 2
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
  ev = list(datasets.eval_iterator(config_for(root, 'tfds', built), 'corridor', 'all', 2))
  assert ev[0]['frame_mask'].tolist() == [True, False]


def test_missing_tfds_dir_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='data.tfds_dir'):
    tfds_builders.TfdsReader(str(tmp_path), 'nyu', 'train')


def test_a_bucket_url_is_refused_with_the_workaround():
  with pytest.raises(ValueError, match='gcsfuse'):
    tfds_builders.TfdsReader('gs://bucket/evit_tfds', 'nyu', 'train')
