"""Input-pipeline throughput: training images/s per format, `data.mode`, worker processes and
thread count, as a table.

  python benchmarks/input_pipeline.py [--root ROOT] [--modes joint,nyu] [--threads 1,2,4]
      [--workers 0,1,2] [--repeats 1] [--batches 20] [--batch-size 16] [--size 240x320]
      [--format files,decoded,tfds] [--json F]

Without `--root` it generates synthetic data (`data_pipelines.synthetic`, size `--synthetic-size`)
into a temporary folder; the decode-once folder (`data_pipelines.decoded`) and the TFDS datasets
are written there when asked for (their write time is printed). The first batch of every run
(thread start-up, first reads), or with `data.num_workers` = W > 0 the first W batches (one from
each worker process, so that their start-up is not timed), is not timed. What is timed is the
whole host side of training: the batches train.py transfers (uint8 images, geometry done; flip and
jitter run on the device). With `--repeats R` every configuration is measured R times, the
configurations taking turns (so that load from elsewhere hits them alike), and the median is shown.
Also printed: how fast one thread merely decodes the RGB PNGs of the training frames (PIL), the
floor of any pipeline that decodes per sample.
"""

import argparse
import itertools
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step

from data_pipelines import datasets
from data_pipelines import readers
from efficientvit_jax import images
from efficientvit_jax.configs import default


def measure(root: str, mode: str, threads: int, batches: int, batch_size: int,
            size: tuple[int, int], fmt: str, workers: int = 0) -> float:
  """Training images/s over `batches` batches after max(1, workers) warm-up batches."""
  config = default.get_config()
  config.data.root, config.data.mode, config.data.format = root, mode, fmt
  config.data.input_size = size
  config.data.num_threads, config.data.num_workers = threads, workers
  warmup = max(1, workers)
  config.batch_size, config.num_train_steps = batch_size, batches + warmup
  it = datasets.train_iterator(config, num_steps=config.num_train_steps)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  n = sum(len(batch['image']) for batch in it)
  seconds = time.perf_counter() - start
  it.close()
  return n / seconds


def png_decode_rate(root: str, frames: int = 40) -> float:
  """RGB frames/s of one thread decoding the training PNGs (NYU and LILocBench, alternating)."""
  config = default.get_config()
  config.data.root = root
  paths = datasets.resolve_paths(config.data)
  files = []
  for name in ('nyu', 'lilocbench'):
    reader = readers.make_file_reader(name, 'train', paths)
    files.append([reader.refs[i].files['rgb'] for i in range(min(len(reader), frames // 2))])
  blobs = [open(p, 'rb').read() for pair in zip(*files) for p in pair]
  start = time.perf_counter()
  for b in blobs:
    readers.decode_rgb(b, 'png')
  return len(blobs) / (time.perf_counter() - start)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', default='', help='data root; default: synthetic data in a temp dir')
  parser.add_argument('--synthetic-size', default='default', choices=('tiny', 'small', 'default'))
  parser.add_argument('--modes', default='nyu,lilocbench,joint,downsample,concat')
  parser.add_argument('--threads', default='1,2,4,8', help='comma-separated data.num_threads values')
  parser.add_argument('--workers', default='0', help='comma-separated data.num_workers values (grain processes)')
  parser.add_argument('--repeats', type=int, default=1, help='measurements per configuration (median shown)')
  parser.add_argument('--batches', type=int, default=20)
  parser.add_argument('--batch-size', type=int, default=16)
  parser.add_argument('--size', default=(240, 320), type=images.parse_size, help='input size HxW')
  parser.add_argument('--format', default='files,decoded', help='comma-separated: files, decoded, tfds')
  parser.add_argument('--json', default='', help='also write the results as JSON here')
  return parser


def _write_formats(root: str, formats: list[str], size: tuple[int, int]) -> None:
  """Writes the tfds and decode-once folders under `root` that `formats` need and it lacks."""
  if 'tfds' in formats and not os.path.isdir(os.path.join(root, 'tfds')):
    from data_pipelines import tfds_builders

    tfds_builders.main(['--root', root, '--sets', 'nyu,lilocbench'])
  if 'decoded' in formats and not os.path.isdir(os.path.join(root, 'decoded')):
    from data_pipelines import decoded

    t = time.perf_counter()
    decoded.main(['--root', root, '--sets', 'nyu,lilocbench', '--input-size', f'{size[0]}x{size[1]}'])
    print(f'decode-once folder written in {time.perf_counter() - t:.1f} s')


def _measure_all(root: str, configs: list[tuple[str, str, int, int]],
                 args: argparse.Namespace) -> dict[tuple[str, str, int, int], list[float]]:
  """images/s of each (format, mode, workers, threads), --repeats times in turn; NaN where the mode
  does not fit the data."""
  runs = {c: [] for c in configs}
  for _ in range(args.repeats):
    for c in configs:
      fmt, mode, w, t = c
      if runs[c] and math.isnan(runs[c][-1]):  # the mode does not fit the data
        continue
      try:
        runs[c].append(measure(root, mode, t, args.batches, args.batch_size, args.size, fmt, w))
      except ValueError as e:  # a set too small for one batch of this mode
        print(f'{mode}: {e}')
        runs[c].append(float('nan'))
  return runs


def main(argv: list[str] | None = None) -> None:
  parser = _parser()
  args = parser.parse_args(argv)
  size = args.size
  threads = train_step.batch_sizes(parser, '--threads', args.threads)
  workers = train_step.batch_sizes(parser, '--workers', args.workers, minimum=0)
  if args.repeats < 1:
    parser.error(f'--repeats must be >= 1, got {args.repeats}')
  with tempfile.TemporaryDirectory() as tmp:
    root = args.root
    if not root:
      from data_pipelines import synthetic

      root = os.path.join(tmp, 'data')
      t = time.perf_counter()
      synthetic.generate(root, seed=0, size=args.synthetic_size)
      print(f'synthetic data ({args.synthetic_size}) in {time.perf_counter() - t:.1f} s')
    formats = args.format.split(',')
    for fmt in formats:
      if fmt not in ('files', 'decoded', 'tfds'):
        parser.error(f'--format: unknown format {fmt!r}')
    _write_formats(root, formats, size)
    decode_rate = png_decode_rate(root)
    print(f'\none thread decoding the training RGB PNGs alone: {decode_rate:.1f} frames/s')
    modes = args.modes.split(',')
    configs = list(itertools.product(formats, modes, workers, threads))
    runs = _measure_all(root, configs, args)
    ips = {c: statistics.median(v) for c, v in runs.items()}
    results = [{'format': fmt, 'mode': mode, 'workers': w, 'threads': t, 'images_per_s': ips[fmt, mode, w, t],
                'runs': runs[fmt, mode, w, t]} for fmt, mode, w, t in configs]
    repeats = f', median of {args.repeats}' if args.repeats > 1 else ''
    print(f'\ntraining images/s, batch {args.batch_size}, {size[0]}x{size[1]}, {os.cpu_count()} CPUs{repeats}')
    print('| format | mode | workers |' + ''.join(f' {t} thr |' for t in threads))
    print('|---|---|---|' + '---|' * len(threads))
    for fmt, mode, w in itertools.product(formats, modes, workers):
      print(f'| {fmt} | {mode} | {w} |' + ''.join(f' {ips[fmt, mode, w, t]:.1f} |' for t in threads))
  if args.json:
    train_step.write_json(args.json, {
        'batch_size': args.batch_size, 'size': list(size), 'formats': formats, 'repeats': args.repeats,
        'cpus': os.cpu_count(), 'png_decode_frames_per_s': decode_rate, 'results': results})


if __name__ == '__main__':
  main()
