"""LILocBench extraction: raw "individual files" sequence -> frames at a target rate (docs/data.md#lilocbench).

Input `SEQ/camera_*/` with colour PNGs in one of `color/images`, `color_images`, `color`,
`rgb/images`, `rgb`, depth PNGs (uint16 millimetres) in one of `depth/images`, `depth_images`,
`depth`, file names = timestamps in seconds (`1733375656.696981258.png`), and an optional
`intrinsics.yaml` (`K: [9 numbers]`, `camera_matrix: {data: [9 numbers]}` or `fx/fy/cx/cy`; the
D455 default fx = fy = 386, cx = 320, cy = 240 when absent).

Per camera (sorted by folder name), every colour frame takes the nearest depth frame by timestamp
(ties: the earlier one) and the pair is kept when |dt| < 50 ms; a kept pair is then taken when it is
at least 1 / target_fps after the last taken pair of that camera. Timestamps are compared in
integer nanoseconds (float seconds lose ~240 ns at 1.7e9 s). One running index over all cameras:
`rgb/{idx:06d}.png` (a copy), `depth/{idx:06d}.npy` (float32 m = uint16 * 0.001, 0 = invalid),
`manifest.jsonl` (`stem`, `rgb`, `sensor_depth`, `source`, `sequence`, `camera`, `timestamp` float
seconds, `timestamp_ns` exact, `intrinsics`) and `extraction.json` (the summary, dropped pairs
included). The output is written to a temporary folder and renamed, so a failed run leaves nothing.

  python -m data_pipelines.lilocbench extract --input SEQ --output DIR [--target-fps 2] [--cameras a,b]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
from concurrent import futures
from typing import Any

import numpy as np
import yaml
from PIL import Image

from efficientvit_jax import console

COLOR_DIRS = ('color/images', 'color_images', 'color', 'rgb/images', 'rgb')
DEPTH_DIRS = ('depth/images', 'depth_images', 'depth')
D455_DEFAULT = {'fx': 386.0, 'fy': 386.0, 'cx': 320.0, 'cy': 240.0}
MAX_DT_NS = 50_000_000
_STAMP = re.compile(r'^(\d+)(?:\.(\d{1,9}))?$')


def parse_stamp(name: str) -> int:
  """'1733375656.696981258' (a file stem) -> integer nanoseconds, exactly."""
  m = _STAMP.match(name)
  if m is None:
    raise ValueError(f'not a timestamp file name (seconds with up to 9 decimals): {name!r}')
  frac = (m.group(2) or '').ljust(9, '0')
  return int(m.group(1)) * 1_000_000_000 + int(frac)


def format_stamp(ns: int) -> str:
  """Integer nanoseconds -> 'SSSSSSSSSS.NNNNNNNNN'."""
  return f'{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}'


def _find_dir(camera: pathlib.Path, names: tuple[str, ...], what: str) -> pathlib.Path:
  for name in names:
    d = camera / name
    if d.is_dir() and any(p.suffix.lower() == '.png' for p in d.iterdir()):
      return d
  raise FileNotFoundError(f'{camera}: no {what} folder with PNG files; tried {", ".join(names)}')


def _stamped_pngs(folder: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
  """[(timestamp ns, path)] of the PNGs in folder, sorted by time."""
  out = []
  for p in folder.iterdir():
    if p.suffix.lower() != '.png':
      continue
    try:
      out.append((parse_stamp(p.stem), p))
    except ValueError as e:
      raise ValueError(f'{p}: {e}') from None
  out.sort()
  for (a, pa), (b, pb) in zip(out, out[1:]):
    if a == b:
      raise ValueError(f'{folder}: two files with the same timestamp: {pa.name}, {pb.name}')
  return out


def read_intrinsics(camera: pathlib.Path) -> tuple[dict[str, float], str]:
  """({fx, fy, cx, cy}, form) from camera/intrinsics.yaml; form is 'K', 'camera_matrix',
  'fx_fy_cx_cy' or 'default' (file absent: the D455 default)."""
  path = camera / 'intrinsics.yaml'
  if not path.exists():
    return dict(D455_DEFAULT), 'default'
  try:
    doc = yaml.safe_load(path.read_text())
  except (yaml.YAMLError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: unreadable YAML: {e}') from None

  def from_matrix(values, key: str) -> dict[str, float]:
    k = np.asarray(values, dtype=np.float64).reshape(-1)
    if k.size != 9:
      raise ValueError(f'{path}: {key} must hold 9 numbers (a 3x3 matrix), found {k.size}')
    return {'fx': float(k[0]), 'fy': float(k[4]), 'cx': float(k[2]), 'cy': float(k[5])}

  if isinstance(doc, dict):
    try:
      if 'K' in doc:
        return from_matrix(doc['K'], 'K'), 'K'
      if isinstance(doc.get('camera_matrix'), dict) and 'data' in doc['camera_matrix']:
        return from_matrix(doc['camera_matrix']['data'], 'camera_matrix.data'), 'camera_matrix'
      if all(k in doc for k in ('fx', 'fy', 'cx', 'cy')):
        return {k: float(doc[k]) for k in ('fx', 'fy', 'cx', 'cy')}, 'fx_fy_cx_cy'
    except (TypeError, ValueError) as e:
      raise ValueError(f'{path}: bad intrinsics values: {e}') from None
  raise ValueError(f'{path}: no intrinsics found; expected `K: [9 numbers]`, '
                   '`camera_matrix: {data: [9 numbers]}` or `fx`, `fy`, `cx`, `cy`')


def match_camera(color: list[int], depth: list[int], target_fps: float) -> dict[str, list]:
  """Pairs colour and depth timestamps (ns, sorted) and subsamples them.

  Returns {'kept': [(c, d)], 'skipped': [(c, d)], 'dropped': [(c, nearest d or None)]}: kept =
  taken at the target rate, skipped = matched but too close to the last kept, dropped = no depth
  frame within 50 ms."""
  period = round(1e9 / target_fps)
  out: dict[str, list] = {'kept': [], 'skipped': [], 'dropped': []}
  last = None
  for c in color:
    i = bisect.bisect_left(depth, c)
    cands = [depth[j] for j in (i - 1, i) if 0 <= j < len(depth)]
    d = min(cands, key=lambda x: (abs(x - c), x)) if cands else None
    if d is None or abs(d - c) >= MAX_DT_NS:
      out['dropped'].append((c, d))
    elif last is None or c - last >= period:
      out['kept'].append((c, d))
      last = c
    else:
      out['skipped'].append((c, d))
  return out


def _colour_size(src: pathlib.Path) -> tuple[int, int]:
  """(height, width) of a colour PNG, decoded in full so that a truncated file fails here."""
  try:
    with Image.open(src) as im:
      im.load()
      return im.size[1], im.size[0]
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f'{src}: unreadable colour PNG: {e}') from None


def _depth_png_to_npy(src: pathlib.Path, dst: pathlib.Path, colour: pathlib.Path | None = None) -> None:
  """uint16 mm PNG -> float32 m .npy; with `colour`, the depth frame must have the colour frame's size."""
  try:
    with Image.open(src) as im:
      mode = im.mode
      arr = np.asarray(im)
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f'{src}: unreadable depth PNG: {e}') from None
  if arr.dtype != np.uint16 or arr.ndim != 2:
    raise ValueError(f'{src}: depth PNG must be single-channel uint16 millimetres, '
                     f'found mode {mode} ({arr.dtype}, shape {arr.shape})')
  if colour is not None and arr.shape != _colour_size(colour):
    raise ValueError(f'{src}: depth frame of {arr.shape[0]}x{arr.shape[1]} does not match its colour frame '
                     f'{colour} of {"x".join(map(str, _colour_size(colour)))}')
  np.save(dst, arr.astype(np.float32) * np.float32(0.001))


def extract(input_dir: str | os.PathLike, output_dir: str | os.PathLike, target_fps: float = 2.0,
            cameras: list[str] | None = None, num_threads: int = 4) -> dict:
  """Extracts a raw LILocBench sequence into `output_dir` (which must not exist or be empty).

  cameras: camera folder names (`camera_front` or `front`), default all `camera_*` folders.
  Returns the summary also written to `output_dir/extraction.json`: per camera the folders, the
  intrinsics and their form, counts, and the kept / dropped pairs as timestamp strings.
  """
  seq = pathlib.Path(input_dir)
  out = pathlib.Path(output_dir)
  found = _chosen_cameras(seq, out, target_fps, cameras)
  summary = {'sequence': seq.name, 'target_fps': target_fps,
             'max_dt_ms': MAX_DT_NS / 1e6, 'num_frames': 0, 'cameras': {}}
  jobs = []  # (index, colour png, depth png)
  lines = []
  for name in found:
    summary['cameras'][name] = _match_camera(seq, name, target_fps, jobs, lines)
  summary['num_frames'] = len(jobs)
  _write_extraction(out, seq.name, jobs, lines, summary, num_threads)
  return {**summary, 'input': str(seq), 'output': str(out)}


def _chosen_cameras(seq: pathlib.Path, out: pathlib.Path, target_fps: float, cameras: list[str] | None) -> list[str]:
  """The camera folders to extract, sorted, after checking the arguments (errors name the folder)."""
  if target_fps <= 0:
    raise ValueError(f'target_fps must be > 0, got {target_fps}')
  if not seq.is_dir():
    raise FileNotFoundError(f'{seq}: no such sequence folder')
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise FileExistsError(f'{out}: output exists and is not an empty folder')
  found = sorted(p.name for p in seq.iterdir() if p.is_dir() and p.name.startswith('camera_'))
  if not found:
    raise FileNotFoundError(f'{seq}: no camera_* folders')
  if cameras:
    chosen = []
    for c in cameras:
      name = c if c.startswith('camera_') else f'camera_{c}'
      if name not in found:
        raise ValueError(f'{seq}: no camera folder {name!r}; found {", ".join(found)}')
      chosen.append(name)
    found = sorted(set(chosen))
  return found


def _match_camera(seq: pathlib.Path, name: str, target_fps: float, jobs: list[tuple[int, pathlib.Path, pathlib.Path]],
                  lines: list[dict[str, Any]]) -> dict[str, Any]:
  """Pairs one camera's colour and depth frames; appends its frames to `jobs` and manifest `lines`
  (indices continue theirs) and returns its summary."""
  cam = seq / name
  cdir, ddir = _find_dir(cam, COLOR_DIRS, 'colour'), _find_dir(cam, DEPTH_DIRS, 'depth')
  intr, form = read_intrinsics(cam)
  colour = _stamped_pngs(cdir)
  depth = _stamped_pngs(ddir)
  cpath, dpath = dict(colour), dict(depth)
  m = match_camera([c for c, _ in colour], [d for d, _ in depth], target_fps)
  first = len(jobs)
  for c, d in m['kept']:
    idx = len(jobs)
    jobs.append((idx, cpath[c], dpath[d]))
    stem = f'{idx:06d}'
    lines.append({'stem': stem, 'rgb': f'rgb/{stem}.png', 'sensor_depth': f'depth/{stem}.npy',
                  'source': 'lilocbench', 'sequence': seq.name, 'camera': name,
                  'timestamp': c / 1e9, 'timestamp_ns': c, 'intrinsics': intr})
  return {
    'color_dir': str(cdir.relative_to(cam)), 'depth_dir': str(ddir.relative_to(cam)),
    'intrinsics': intr, 'intrinsics_form': form,
    'num_color': len(colour), 'num_depth': len(depth), 'num_kept': len(m['kept']),
    'num_skipped': len(m['skipped']), 'num_dropped': len(m['dropped']),
    'first_index': first,
    'kept': [[format_stamp(c), format_stamp(d)] for c, d in m['kept']],
    'dropped': [[format_stamp(c), None if d is None else format_stamp(d)] for c, d in m['dropped']],
  }


def _write_extraction(out: pathlib.Path, seq_name: str, jobs: list[tuple[int, pathlib.Path, pathlib.Path]],
                      lines: list[dict[str, Any]], summary: dict[str, Any], num_threads: int) -> None:
  """Writes the frames, manifest.jsonl and extraction.json into a temporary folder beside `out`,
  renamed to `out` when complete (removed on any error: no half-written output)."""
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
  try:
    (tmp / 'rgb').mkdir()
    (tmp / 'depth').mkdir()

    def one(job):
      idx, cp, dp = job
      shutil.copyfile(cp, tmp / 'rgb' / f'{idx:06d}.png')
      _depth_png_to_npy(dp, tmp / 'depth' / f'{idx:06d}.npy', colour=cp)

    with futures.ThreadPoolExecutor(num_threads) as pool:
      for f in console.iterate([pool.submit(one, j) for j in jobs], f'extract {seq_name}', unit='frame'):
        f.result()
    with open(tmp / 'manifest.jsonl', 'w') as f:
      for line in lines:
        f.write(json.dumps(line) + '\n')
    (tmp / 'extraction.json').write_text(json.dumps(summary, indent=1) + '\n')
    if out.exists():
      out.rmdir()
    tmp.rename(out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m data_pipelines.lilocbench', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  ex = sub.add_parser('extract', help='raw sequence -> rgb/, depth/, manifest.jsonl')
  ex.add_argument('--input', required=True, help='sequence folder holding camera_*/')
  ex.add_argument('--output', required=True, help='output folder (must not exist)')
  ex.add_argument('--target-fps', type=float, default=2.0)
  ex.add_argument('--cameras', default='', help='comma-separated camera folders (default: all)')
  args = parser.parse_args(argv)
  cams = [c for c in args.cameras.split(',') if c] or None
  try:
    s = extract(args.input, args.output, args.target_fps, cams)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for name, c in s['cameras'].items():
    src = 'D455 default (no intrinsics.yaml)' if c['intrinsics_form'] == 'default' else c['intrinsics_form']
    print(f'{name}: {c["num_color"]} colour, {c["num_depth"]} depth, {c["num_dropped"]} dropped '
          f'(no depth within 50 ms), {c["num_kept"]} kept at {s["target_fps"]} Hz; '
          f'colour {c["color_dir"]}, depth {c["depth_dir"]}; intrinsics {src}: {c["intrinsics"]}')
  print(f'{s["num_frames"]} frames -> {s["output"]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
