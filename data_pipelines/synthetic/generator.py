"""Synthetic two-domain data in the real on-disk layouts (docs/data.md), deterministic per seed.

What is written, the raw LILocBench timing design and the sizes: the package docstring
(`data_pipelines/synthetic/__init__.py`). Here: the plan (everything decided before rendering),
the sensor and teacher models, the per-frame render jobs and `generate`, which writes it all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import pathlib
import random
import shutil
import sys
import time

import numpy as np
import scipy.ndimage
from PIL import Image

from data_pipelines import lilocbench
from data_pipelines import readers
from data_pipelines.synthetic import scenes
from efficientvit_jax import console

KINECT = (518.86, 519.47, 325.58, 253.74)
FEMTO = (605.0, 605.0, 640.0, 360.0)
NYU_SIZE = (640, 480)
LIL_SIZE = (640, 480)
FEMTO_SIZE = (1280, 720)
DA3_SIZE_43 = (504, 378)
DA3_SIZE_169 = (672, 378)
DA3_LOG_SCALE_STD = 0.05
DA3_NOISE_STD = 0.02
SAM2_MAX_SHIFT = 3
CORRIDOR_INVALID = 0.78
LIL_MAX_RANGE = 15.0
SEQUENCE = 'dynamics_0'
ROBOT_SPEED = 0.8  # m/s

# (folder, colour dir, depth dir, intrinsics.yaml form, yaw, fx, fy, cx, cy)
LIL_CAMERAS = (
  ('camera_back', 'color', 'depth', 'default', math.pi, 386.0, 386.0, 320.0, 240.0),
  ('camera_front', 'color/images', 'depth/images', 'K', 0.0, 386.12, 385.87, 321.05, 239.41),
  ('camera_left', 'color_images', 'depth_images', 'camera_matrix', -0.8, 385.64, 385.4, 318.77, 241.93),
  ('camera_right', 'rgb', 'depth', 'fx_fy_cx_cy', 0.8, 386.71, 386.52, 320.62, 238.15),
)


@dataclasses.dataclass(frozen=True)
class Size:
  nyu: int  # NYU frames
  lil_samples: int  # 2 Hz samples per LILocBench camera
  corridor: int  # Femto Bolt corridor frames
  workers: int  # default worker processes (0 = all cores)


SIZES = {
  'tiny': Size(nyu=5, lil_samples=2, corridor=1, workers=1),
  'small': Size(nyu=16, lil_samples=16, corridor=4, workers=0),
  'default': Size(nyu=48, lil_samples=50, corridor=16, workers=0),
  # `make demo`'s: default with 200 rooms. From 38 training rooms a network trained from scratch
  # learns those rooms (NYU-like RMSE 0.27-0.31 m on them, 0.52-0.77 m on new ones; docs/decisions.md).
  'demo': Size(nyu=200, lil_samples=50, corridor=16, workers=0),
}


def to_six(nyu40: np.ndarray) -> np.ndarray:
  """Raw NYU40 ids [...] (0..40) -> 6-class uint8 (0 -> 255), as the NYU reader maps them."""
  return readers.NYU40_TO_6[nyu40]


# ----------------------------------------------------------------------------------------------
# Plan: everything decided before rendering (pure function of seed and size)
# ----------------------------------------------------------------------------------------------

def nyu_split(n: int) -> tuple[list[int], list[int]]:
  """The reference split: random.Random(42).shuffle(range(n)), first 80 % train."""
  idx = list(range(n))
  random.Random(42).shuffle(idx)
  k = int(0.8 * n)
  return idx[:k], idx[k:]


@dataclasses.dataclass
class Burst:
  """One 2 Hz sample of one camera: colour frames (ns, role) and depth frames (ns)."""
  kind: str
  time_ns: int  # render time (the kept frame, or the burst's first frame when lost)
  colour: list[tuple[int, str, int | None]]  # (t, 'kept'|'skipped'|'dropped', partner or nearest)
  depth: list[int]


def _camera_bursts(rng: np.random.Generator, start_ns: int, n: int, cam_index: int) -> list[Burst]:
  """Timestamps of one camera. The kind schedule puts every special kind into small sizes."""
  frame = 66_666_667
  schedule = {0: 'drop', 1: 'edge', 2: 'exact', 3: 'lost'}
  bursts: list[Burst] = []
  last_kept = None
  anchor = start_ns

  def jit(lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))

  for j in range(n):
    if j == 0:
      kind = 'normal'
    elif j == 1 and cam_index in schedule:
      kind = schedule[cam_index]
    else:
      kind = str(rng.choice(['normal', 'drop', 'edge', 'exact', 'lost'], p=[0.73, 0.12, 0.06, 0.06, 0.03]))
    if kind == 'exact' and (last_kept is None or bursts[-1].kind == 'lost'):
      kind = 'normal'
    if kind == 'exact':
      k = last_kept + 500_000_000
      d = k + jit(-15_000_000, 15_000_000)
      b = Burst(kind, k, [(k - 1, 'skipped', d), (k, 'kept', d)], [d])
    elif kind == 'normal':
      k = anchor
      d0, d1 = k + jit(-20_000_000, 20_000_000), k + frame + jit(-15_000_000, 15_000_000)
      b = Burst(kind, k, [(k, 'kept', d0), (k + frame + jit(-500_000, 500_000), 'skipped', d1)], [d0, d1])
    elif kind == 'drop':
      k = anchor + frame
      d0 = k + jit(-10_000_000, 20_000_000)  # >= 56.7 ms from the dropped frame
      c0 = k - frame + jit(-500_000, 500_000)
      c2 = k + frame + jit(-500_000, 500_000)
      d2 = c2 + jit(-15_000_000, 15_000_000)
      b = Burst(kind, k, [(c0, 'dropped', d0), (k, 'kept', d0), (c2, 'skipped', d2)], [d0, d2])
    elif kind == 'edge':
      k = anchor + 100_000_000
      a, d0 = k - 50_000_000, k + 49_999_999
      b = Burst(kind, k, [(k - 100_000_000, 'dropped', a), (k, 'kept', d0)], [a, d0])
    else:  # lost
      c0 = anchor
      d = c0 + jit(55_000_000, 80_000_000)
      b = Burst(kind, c0, [(c0, 'dropped', d)], [d])
    kept = [t for t, role, _ in b.colour if role == 'kept']
    if kept:
      last_kept = kept[0]
    # Now and then an orphan depth frame between bursts, >= 100 ms from every colour frame.
    if j % 3 == 1:
      b.depth.append(max(t for t, _, _ in b.colour) + 250_000_000 + jit(-10_000_000, 10_000_000))
    bursts.append(b)
    anchor = (last_kept if kept else b.time_ns) + 8 * frame + jit(-2_000_000, 2_000_000)
  return bursts


def _check_design(bursts: list[Burst]) -> None:
  """Asserts the burst design is what its roles say (nearest partners, 50 ms, 0.5 s spacing)."""
  depth = sorted(d for b in bursts for d in b.depth)
  colour = [t for b in bursts for t, _, _ in b.colour]
  assert colour == sorted(set(colour)), 'colour frames out of order'
  last = None
  for b in bursts:
    for t, role, partner in b.colour:
      nearest = min(depth, key=lambda d: (abs(d - t), d))
      assert nearest == partner, (t, nearest, partner)
      ok = abs(partner - t) < lilocbench.MAX_DT_NS
      assert ok == (role != 'dropped'), (t, role)
      if role == 'kept':
        assert last is None or t - last >= 500_000_000
        last = t
      elif role == 'skipped':
        assert t - last < 500_000_000


def plan(seed: int, size: str) -> dict:
  """The frame plan of a generation, without rendering: counts, split and raw timestamps."""
  sz = SIZES[size]
  rng = np.random.default_rng([seed, 7])
  base = 1_733_375_656_000_000_000 + int(rng.integers(0, 10**9))
  cams = {}
  for k, cam in enumerate(LIL_CAMERAS):
    start = base + int(rng.integers(0, 66_000_000))
    bursts = _camera_bursts(np.random.default_rng([seed, 8, k]), start, sz.lil_samples, k)
    _check_design(bursts)
    cams[cam[0]] = bursts
  train, val = nyu_split(sz.nyu)
  n_lil = sum(1 for bs in cams.values() for b in bs if b.kind != 'lost')
  # LILocBench split (docs/data.md#extracted-layout): the last 20 % of each camera's time span is validation.
  lil_train = 0
  for bs in cams.values():
    t = [b.time_ns for b in bs if b.kind != 'lost']
    if t:
      cut = t[0] + 0.8 * (t[-1] - t[0])
      lil_train += sum(1 for x in t if x <= cut)
  return {
    'base_ns': base, 'cameras': cams,
    'counts': {'nyu': sz.nyu, 'nyu_train': len(train), 'nyu_val': len(val),
               'lilocbench': n_lil, 'lilocbench_train': lil_train, 'lilocbench_val': n_lil - lil_train,
               'lilocbench_raw_color': sum(len(b.colour) for bs in cams.values() for b in bs),
               'lilocbench_raw_depth': sum(len(b.depth) for bs in cams.values() for b in bs),
               'corridor': sz.corridor},
  }


# ----------------------------------------------------------------------------------------------
# Sensor and teacher models
# ----------------------------------------------------------------------------------------------

def _smooth_noise(shape: tuple[int, int], cell: int, rng: np.random.Generator) -> np.ndarray:
  """Smooth noise [H, W] with unit standard deviation and correlation length ~cell px."""
  h, w = shape
  coarse = rng.normal(size=(h // cell + 2, w // cell + 2)).astype(np.float32)
  size = (coarse.shape[1] * cell, coarse.shape[0] * cell)
  fine = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC))[:h, :w]
  return fine / max(float(fine.std()), 1e-6)


def _occlusion_shadow(z: np.ndarray, fb: float) -> np.ndarray:
  """Pixels [H, W] the projector / second camera (to the right, baseline b) cannot see: a nearer
  surface within its disparity to the right hides them. fb = focal length (px) * baseline (m)."""
  col = np.arange(z.shape[1], dtype=np.float64)[None]
  key = col - fb / np.maximum(z, 1e-3)
  after = np.minimum.accumulate(key[:, ::-1], axis=1)[:, ::-1]
  after = np.concatenate([after[:, 1:], np.full((z.shape[0], 1), np.inf)], 1)
  return after < key - 0.5


def _depth_edges(z: np.ndarray, width: int) -> np.ndarray:
  """Pixels [H, W] within `width` px of a depth jump of more than 5 %."""
  jump = np.zeros(z.shape, bool)
  jump[:, 1:] |= np.abs(np.diff(z, axis=1)) > 0.05 * z[:, 1:]
  jump[1:, :] |= np.abs(np.diff(z, axis=0)) > 0.05 * z[1:, :]
  return scipy.ndimage.binary_dilation(jump, iterations=width)


def kinect_depth(r: dict, rng: np.random.Generator) -> np.ndarray:
  """Kinect-v1-like depth [H, W] float32 m from a render: axial noise, 1/8-px disparity
  quantisation, projector shadows, holes on mirrors, windows, screens, grazing surfaces, along
  depth edges and in small speckles."""
  z = r['depth'].astype(np.float64)
  fb = 580.0 * 0.075
  sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2
  z = z + sigma * rng.normal(size=z.shape)
  z = fb / (np.rint(fb / np.maximum(z, 0.3) * 8) / 8)
  holes = _occlusion_shadow(r['depth'], fb)
  special = np.isin(r['label'], (scenes.MIRROR, scenes.WINDOW, scenes.TV))  # specular or black
  holes |= special & (_smooth_noise(z.shape, 16, rng) > -1.0)
  holes |= r['cos'] < 0.12
  holes |= _depth_edges(r['depth'], 2) & (rng.random(z.shape) < 0.5)
  holes |= _smooth_noise(z.shape, 10, rng) > 2.8
  holes |= (z < 0.5) | (z > 8.0)
  return np.where(holes, 0.0, z).astype(np.float32)


def d455_depth(r: dict, rng: np.random.Generator) -> np.ndarray:
  """RealSense-D455-like depth [H, W] uint16 mm: stereo noise growing with z^2 (spatially
  correlated), occlusion shadows, glass seen through or lost, holes on lights, 15 m range."""
  z = np.where(r['kind'] == 'glass', r['behind'], r['depth']).astype(np.float64)
  fb = 386.0 * 0.095
  sigma = 0.08 * z * z / fb
  z = z + sigma * (0.7 * _smooth_noise(z.shape, 12, rng) + 0.3 * rng.normal(size=z.shape))
  holes = _occlusion_shadow(r['depth'], fb)
  holes |= (r['kind'] == 'glass') & (_smooth_noise(z.shape, 24, rng) > 0.0)
  holes |= r['kind'] == 'emissive'
  holes |= r['cos'] < 0.08
  holes |= _smooth_noise(z.shape, 10, rng) > 2.7
  holes |= (z < 0.3) | (z > LIL_MAX_RANGE)
  return np.where(holes, 0, np.rint(z * 1000.0)).astype(np.uint16)


def femto_depth(r: dict, rng: np.random.Generator,
                invalid_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Orbbec-Femto-Bolt-like ToF depth registered to colour: (depth [H, W] float32 m with exactly
  `invalid_fraction` of pixels 0, confidence [H, W] float32 in [0, 1]). Validity is a score: inside
  the narrower depth field of view (an octagon), strong return (reflectance * cos / z^2), not glass
  or lights; the lowest-scoring pixels are invalid; confidence falls below 0.5 near that threshold."""
  h, w = r['depth'].shape
  z = r['depth'].astype(np.float64)
  yy, xx = np.mgrid[0:h, 0:w]
  u, v = np.abs(xx - w / 2) / (w / 2), np.abs(yy - h / 2) / (h / 2)
  fov = (u < 0.72) & (v < 0.95) & (u + v < 1.35)
  lum = r['radiance'].mean(-1)
  score = np.log(np.clip(lum, 1e-3, None)) + np.log(r['cos'] + 0.05) - 2.0 * np.log(z)
  score += 0.6 * _smooth_noise((h, w), 24, rng) + 0.3 * rng.normal(size=(h, w))
  score[(r['kind'] == 'glass') | (r['kind'] == 'emissive') | (z > 5.5)] -= 5.0
  score[~fov] = -np.inf
  thr = np.quantile(score, invalid_fraction)
  valid = score > thr
  top = np.quantile(score[valid], 0.95)
  conf = np.where(valid, 0.3 + 0.7 * np.clip((score - thr) / (top - thr + 1e-9), 0, 1),
                  0.3 * np.clip(1 + (score - thr) / 3.0, 0, 1))
  conf = np.where(np.isfinite(score), conf, 0.0)
  z = z + (0.002 + 0.0015 * z) * rng.normal(size=z.shape)
  return np.where(valid, z, 0.0).astype(np.float32), conf.astype(np.float32)


def da3_teacher(z: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, float]:
  """DA3-like depth: true depth [H, W] resized (bilinear) to size = (W', H'), times a per-frame
  scale exp(N(0, DA3_LOG_SCALE_STD^2)), times 1 + N(0, DA3_NOISE_STD^2). Returns (depth, scale)."""
  scale = float(np.exp(rng.normal(0.0, DA3_LOG_SCALE_STD)))
  small = np.asarray(Image.fromarray(z.astype(np.float32)).resize(size, Image.BILINEAR))
  noise = 1.0 + DA3_NOISE_STD * rng.normal(size=small.shape)
  return (small * scale * noise).astype(np.float32), scale


def sam2_teacher(six: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """SAM2-like labels [H, W] uint8: the true 6-class map sampled at a smooth integer offset of at
  most SAM2_MAX_SHIFT px per axis, so only pixels within that distance of a boundary change."""
  h, w = six.shape
  dy = np.clip(np.rint(1.5 * _smooth_noise((h, w), 24, rng)), -SAM2_MAX_SHIFT, SAM2_MAX_SHIFT).astype(int)
  dx = np.clip(np.rint(1.5 * _smooth_noise((h, w), 24, rng)), -SAM2_MAX_SHIFT, SAM2_MAX_SHIFT).astype(int)
  yy, xx = np.mgrid[0:h, 0:w]
  return six[np.clip(yy + dy, 0, h - 1), np.clip(xx + dx, 0, w - 1)].astype(np.uint8)


def human_labels(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """NYU-annotation-like raw NYU40 ids [H, W] int32: the true ids with 0 (unlabelled) on ~40 % of
  the pixels next to a label boundary and, in some frames, on every small prop."""
  out = label.astype(np.int32).copy()
  edge = np.zeros(label.shape, bool)
  edge[:, 1:] |= label[:, 1:] != label[:, :-1]
  edge[1:, :] |= label[1:, :] != label[:-1, :]
  out[edge & (rng.random(label.shape) < 0.4)] = 0
  if rng.random() < 0.3:
    out[label == scenes.OTHERPROP] = 0
  return out


# ----------------------------------------------------------------------------------------------
# Writers (one task = one file group; run in worker processes)
# ----------------------------------------------------------------------------------------------

def _save_png(path: pathlib.Path, arr: np.ndarray) -> None:
  Image.fromarray(arr).save(path, format='PNG', compress_level=1)


def _nyu_frame(out: pathlib.Path, seed: int, i: int) -> dict:
  rng = np.random.default_rng([seed, 1, i])
  scene, cam = scenes.room_scene(rng, KINECT, NYU_SIZE, with_person=(i % 3 == 0) or rng.random() < 0.4,
                                 with_mirror=(i % 2 == 1) or rng.random() < 0.3)
  r = scenes.render(scene, cam)
  stem = f'{i:05d}'
  cache = out / 'nyu' / 'nyu_cache'
  _save_png(cache / 'rgb' / f'{stem}.png', scenes.to_srgb(r['radiance'], rng))
  depth = kinect_depth(r, rng)
  np.save(cache / 'depth' / f'{stem}.npy', depth)
  np.save(cache / 'seg' / f'{stem}.npy', human_labels(r['label'], rng))
  entry = {'stem': stem, 'da3_depth': None, 'sam2_seg': None}
  da3, scale = da3_teacher(r['depth'], DA3_SIZE_43, rng)
  six = to_six(r['label'])
  sam2 = sam2_teacher(six, rng)
  teacher = out / 'nyu' / 'teacher'
  if i % 11 != 5:
    np.save(teacher / 'da3_depth' / f'{stem}.npy', da3)
    entry['da3_depth'] = f'da3_depth/{stem}.npy'
  if i % 7 != 3:
    np.save(teacher / 'sam2_seg' / f'{stem}_sam2_seg.npy', sam2)
    entry['sam2_seg'] = f'sam2_seg/{stem}_sam2_seg.npy'
  valid = depth > 0
  return {'entry': entry, 'valid': int(valid.sum()), 'pixels': depth.size,
          'in_1_4': int(((depth >= 1) & (depth <= 4) & valid).sum()),
          'classes': np.bincount(six[six < 6], minlength=6).tolist(),
          'da3_scale': scale, 'sam2_changed': int((sam2 != six).sum())}


def _robot_pose(time_s: float, seed: int) -> tuple[float, float, float]:
  """Robot (x, z, yaw) at time_s of the LILocBench sequence: driving along +z, weaving a little."""
  return (0.15 * math.sin(0.3 * time_s + seed), 1.0 + ROBOT_SPEED * time_s,
          0.06 * math.sin(0.21 * time_s + 2 * seed))


def _corridor_world(seed: int, which: int, length: float, people: int) -> scenes.Corridor:
  return scenes.corridor_scene(np.random.default_rng([seed, 2, which]), length, people)


def _lil_burst(out: pathlib.Path, seed: int, cam_index: int, j: int, burst: Burst, t0_ns: int,
               length: float) -> dict:
  name, cdir, ddir, _, yaw, fx, fy, cx, cy = LIL_CAMERAS[cam_index]
  rng = np.random.default_rng([seed, 3, cam_index, j])
  time_s = (burst.time_ns - t0_ns) / 1e9
  x, z, ryaw = _robot_pose(time_s, seed)
  world = _corridor_world(seed, 0, length, people=max(4, int(length / 5)))
  cam = scenes.Camera(*LIL_SIZE, fx, fy, cx, cy, (x, 1.1, z), yaw=yaw + ryaw, pitch=0.04)
  r = scenes.render(world.scene(time_s, (x, z)), cam)
  raw = out / 'lilocbench_raw' / SEQUENCE / name
  image = scenes.tonemap(r['radiance'])
  for t, _, _ in burst.colour:
    _save_png(raw / cdir / f'{lilocbench.format_stamp(t)}.png', scenes.quantise(image, rng))
  sensor = None
  for t in burst.depth:
    d = d455_depth(r, rng)
    sensor = d if sensor is None else sensor
    _save_png(raw / ddir / f'{lilocbench.format_stamp(t)}.png', d)
  stats = {'camera': name, 'kind': burst.kind}
  if burst.kind == 'lost':
    return stats
  staging = out / '.staging' / name
  da3, scale = da3_teacher(r['depth'], DA3_SIZE_43, rng)
  six = to_six(r['label'])
  np.save(staging / f'{burst.time_ns}_da3.npy', da3)
  np.save(staging / f'{burst.time_ns}_seg.npy', sam2_teacher(six, rng))
  valid = sensor > 0
  zv = sensor[valid] / 1000.0
  wall = valid & (six == 1)
  return {**stats, 'da3_scale': scale, 'valid': int(valid.sum()), 'pixels': sensor.size,
          'max_depth': float(zv.max()) if zv.size else 0.0,
          'p95_depth': float(np.percentile(zv, 95)) if zv.size else 0.0,
          'wall_span': float(np.ptp(sensor[wall]) / 1000.0) if wall.any() else 0.0,
          'classes': np.bincount(six[six < 6], minlength=6).tolist()}


def _corridor_frame(out: pathlib.Path, seed: int, i: int, n: int) -> dict:
  rng = np.random.default_rng([seed, 4, i])
  length = 30.0
  world = _corridor_world(seed, 1, length, people=6)
  z = length * (i + rng.uniform(0.1, 0.9)) / max(n, 1)
  x = rng.uniform(-0.3, 0.3)
  yaw = rng.uniform(-0.3, 0.3) + (math.pi if rng.random() < 0.3 else 0.0)
  cam = scenes.Camera(*FEMTO_SIZE, *FEMTO, (x, rng.uniform(0.8, 1.1), z), yaw=yaw, pitch=rng.uniform(0.0, 0.1))
  r = scenes.render(world.scene(rng.uniform(0, 60), (x, z)), cam)
  stem = f'{i:06d}'
  root = out / 'corridor'
  _save_png(root / 'rgb' / f'{stem}.png', scenes.to_srgb(r['radiance'], rng))
  depth, conf = femto_depth(r, rng, CORRIDOR_INVALID + rng.uniform(-0.01, 0.01))
  np.save(root / 'depth' / f'{stem}.npy', depth)
  np.save(root / 'confidence' / f'{stem}.npy', conf)
  da3, scale = da3_teacher(r['depth'], DA3_SIZE_169, rng)
  np.save(root / 'da3_depth' / f'{stem}.npy', da3)
  np.save(root / 'sam2_seg' / f'{stem}.npy', sam2_teacher(to_six(r['label']), rng))
  # `sensor_depth` is the key the reference's corridor evaluation reads; `depth` ours (docs/data.md#corridor-set).
  entry = {'stem': stem, 'rgb': f'rgb/{stem}.png', 'depth': f'depth/{stem}.npy', 'sensor_depth': f'depth/{stem}.npy',
           'confidence': f'confidence/{stem}.npy', 'da3_depth': f'da3_depth/{stem}.npy',
           'sam2_seg': f'sam2_seg/{stem}.npy',
           'intrinsics': dict(zip(('fx', 'fy', 'cx', 'cy'), FEMTO))}
  return {'entry': entry, 'invalid': float((depth == 0).mean()), 'da3_scale': scale,
          'low_conf_valid': float(((conf < 0.5) & (depth > 0)).sum() / max((depth > 0).sum(), 1))}


def _run(job: tuple[int, tuple]) -> tuple[int, dict]:
  k, task = job
  fn = {'nyu': _nyu_frame, 'lil': _lil_burst, 'corridor': _corridor_frame}[task[0]]
  return k, fn(*task[1:])


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def _write_yaml(path: pathlib.Path, form: str, fx: float, fy: float, cx: float, cy: float) -> None:
  if form == 'K':
    path.write_text(f'# D455 colour intrinsics\nK: [{fx}, 0.0, {cx}, 0.0, {fy}, {cy}, 0.0, 0.0, 1.0]\n')
  elif form == 'camera_matrix':
    path.write_text('image_width: 640\nimage_height: 480\ncamera_name: d455\ncamera_matrix:\n'
                    f'  rows: 3\n  cols: 3\n  data: [{fx}, 0.0, {cx}, 0.0, {fy}, {cy}, 0.0, 0.0, 1.0]\n'
                    'distortion_model: plumb_bob\n')
  elif form == 'fx_fy_cx_cy':
    path.write_text(f'width: 640\nheight: 480\nfx: {fx}\nfy: {fy}\ncx: {cx}\ncy: {cy}\n')


def _extraction_truth(p: dict) -> dict:
  cams = {}
  frames = []
  for name, cdir, ddir, form, _, fx, fy, cx, cy in LIL_CAMERAS:
    bursts = p['cameras'][name]
    rows = [(t, role, partner) for b in bursts for t, role, partner in b.colour]

    def pairs(which: str, rows=rows) -> list[list[str]]:
      return [[lilocbench.format_stamp(t), lilocbench.format_stamp(d)] for t, role, d in rows if role == which]

    kept = pairs('kept')
    cams[name] = {
      'color_dir': cdir, 'depth_dir': ddir, 'intrinsics_form': form,
      'intrinsics': {'fx': fx, 'fy': fy, 'cx': cx, 'cy': cy},
      'num_color': len(rows), 'num_depth': sum(len(b.depth) for b in bursts),
      'kept': kept,
      'skipped': pairs('skipped'),
      'dropped': pairs('dropped'),
      'burst_kinds': [b.kind for b in bursts],
    }
    frames += [{'index': len(frames) + k, 'camera': name, 'color': c, 'depth': d}
               for k, (c, d) in enumerate(kept)]
  return {'sequence': SEQUENCE, 'target_fps': 2.0, 'max_dt_ms': 50.0, 'cameras': cams, 'frames': frames}


def _lil_length(p: dict) -> float:
  """Corridor length covering the robot's path over the sequence."""
  t_end = max(b.time_ns for bs in p['cameras'].values() for b in bs)
  return _robot_pose((t_end - p['base_ns']) / 1e9, 0)[1] + 2.0


def _clear(out: pathlib.Path, overwrite: bool) -> None:
  """Removes a previous generation in `out`, or refuses to without `overwrite`."""
  parts = ('nyu', 'lilocbench_raw', 'lilocbench', 'corridor', '.staging', 'synthetic_info.json')
  if out.exists() and any((out / x).exists() for x in parts):
    if not overwrite:
      raise FileExistsError(f'{out}: holds a previous generation; pass overwrite=True (--overwrite)')
    for x in parts:
      if (out / x).is_dir():
        shutil.rmtree(out / x)
      elif (out / x).exists():
        (out / x).unlink()


def _make_dirs(out: pathlib.Path, raw: pathlib.Path) -> None:
  """Creates the output folders and writes each LILocBench camera's intrinsics file."""
  for d in ('nyu/nyu_cache/rgb', 'nyu/nyu_cache/depth', 'nyu/nyu_cache/seg', 'nyu/teacher/da3_depth',
            'nyu/teacher/sam2_seg', 'corridor/rgb', 'corridor/depth', 'corridor/confidence',
            'corridor/da3_depth', 'corridor/sam2_seg'):
    (out / d).mkdir(parents=True, exist_ok=True)
  for name, cdir, ddir, form, _, fx, fy, cx, cy in LIL_CAMERAS:
    (raw / name / cdir).mkdir(parents=True, exist_ok=True)
    (raw / name / ddir).mkdir(parents=True, exist_ok=True)
    (out / '.staging' / name).mkdir(parents=True, exist_ok=True)
    _write_yaml(raw / name / 'intrinsics.yaml', form, fx, fy, cx, cy)


def _render(tasks: list[tuple], workers: int) -> list[dict]:
  """Runs every render task (in `workers` spawned processes if > 1); results in task order."""
  if workers > 1:
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      done = dict(console.iterate(pool.imap_unordered(_run, enumerate(tasks), chunksize=1), 'synthetic data',
                                  total=len(tasks), unit='frame'))
  else:
    done = dict(console.iterate(map(_run, enumerate(tasks)), 'synthetic data', total=len(tasks), unit='frame'))
  return [done[k] for k in range(len(tasks))]


def _write_manifest(path: pathlib.Path, entries: list[dict]) -> None:
  with open(path, 'w') as f:
    for e in entries:
      f.write(json.dumps(e) + '\n')


def _write_nyu_split(out: pathlib.Path, n: int, nyu: list[dict]) -> None:
  """NYU train/val index files, the cache-complete marker and the teacher manifest."""
  train, val = nyu_split(n)
  cache = out / 'nyu' / 'nyu_cache'
  (cache / 'train_indices.txt').write_text(''.join(f'{i}\n' for i in train))
  (cache / 'val_indices.txt').write_text(''.join(f'{i}\n' for i in val))
  (cache / '.download_complete').touch()  # the reference's loader reads a cache only with this marker
  _write_manifest(out / 'nyu' / 'teacher' / 'manifest.jsonl', [r['entry'] for r in nyu])


def _extract_lilocbench(out: pathlib.Path, raw: pathlib.Path, p: dict) -> None:
  """The ground truth of a correct extraction, the extraction, then the staged teachers moved in."""
  truth = _extraction_truth(p)
  (out / 'lilocbench_raw' / 'extraction_truth.json').write_text(json.dumps(truth, indent=1) + '\n')
  lil_root = out / 'lilocbench'
  lilocbench.extract(raw, lil_root, target_fps=2.0)
  lines = [json.loads(x) for x in (lil_root / 'manifest.jsonl').read_text().splitlines()]
  (lil_root / 'da3_depth').mkdir()
  (lil_root / 'seg').mkdir()
  for line in lines:
    staged = out / '.staging' / line['camera'] / f'{line["timestamp_ns"]}'
    os.replace(f'{staged}_da3.npy', lil_root / 'da3_depth' / f'{line["stem"]}.npy')
    os.replace(f'{staged}_seg.npy', lil_root / 'seg' / f'{line["stem"]}.npy')
    line['da3_depth'] = f'da3_depth/{line["stem"]}.npy'
    line['seg'] = f'seg/{line["stem"]}.npy'
  _write_manifest(lil_root / 'manifest.jsonl', lines)
  shutil.rmtree(out / '.staging')


def _measured(nyu: list[dict], lil: list[dict], corridor: list[dict]) -> dict:
  """The summary's statistics measured on the rendered frames."""
  classes = np.sum([r['classes'] for r in nyu], 0)
  nyu_scales = np.log([r['da3_scale'] for r in nyu])
  return {
    'nyu_valid_fraction': sum(r['valid'] for r in nyu) / sum(r['pixels'] for r in nyu),
    'nyu_valid_depth_in_1_4m': sum(r['in_1_4'] for r in nyu) / max(sum(r['valid'] for r in nyu), 1),
    'nyu_class_pixel_fractions': (classes / classes.sum()).round(4).tolist(),
    'nyu_da3_log_scale_std': float(nyu_scales.std()),
    'nyu_sam2_changed_fraction': sum(r['sam2_changed'] for r in nyu) / sum(r['pixels'] for r in nyu),
    'lilocbench_valid_fraction': sum(r['valid'] for r in lil) / max(sum(r['pixels'] for r in lil), 1),
    'lilocbench_max_depth_m': max((r['max_depth'] for r in lil), default=0.0),
    'lilocbench_median_p95_depth_m': float(np.median([r['p95_depth'] for r in lil])) if lil else 0.0,
    'lilocbench_median_wall_depth_span_m': float(np.median([r['wall_span'] for r in lil])) if lil else 0.0,
    'corridor_invalid_fraction': float(np.mean([r['invalid'] for r in corridor])) if corridor else 0.0,
    'corridor_low_confidence_valid_fraction':
      float(np.mean([r['low_conf_valid'] for r in corridor])) if corridor else 0.0,
  }


def generate(out: str | os.PathLike, seed: int = 0, size: str = 'default', workers: int | None = None,
             overwrite: bool = False) -> dict:
  """Writes the synthetic data set under `out` and returns its summary (= synthetic_info.json).

  workers: processes for rendering (default: 1 for tiny, all cores otherwise); the files do not
  depend on it. Workers are spawned, so a script calling this with workers > 1 needs the usual
  `if __name__ == '__main__':` guard. overwrite: replace a previous generation in `out`.
  """
  if size not in SIZES:
    raise ValueError(f'size must be one of {", ".join(SIZES)}, got {size!r}')
  out = pathlib.Path(out)
  _clear(out, overwrite)
  sz = SIZES[size]
  p = plan(seed, size)
  raw = out / 'lilocbench_raw' / SEQUENCE
  _make_dirs(out, raw)

  length = _lil_length(p)
  tasks = [('corridor', out, seed, i, sz.corridor) for i in range(sz.corridor)]
  tasks += [('lil', out, seed, k, j, b, p['base_ns'], length)
            for k, cam in enumerate(LIL_CAMERAS) for j, b in enumerate(p['cameras'][cam[0]])]
  tasks += [('nyu', out, seed, i) for i in range(sz.nyu)]
  results = _render(tasks, workers or sz.workers or os.cpu_count() or 1)
  nyu = [r for t, r in zip(tasks, results) if t[0] == 'nyu']
  corridor = [r for t, r in zip(tasks, results) if t[0] == 'corridor']
  lil = [r for t, r in zip(tasks, results) if t[0] == 'lil' and 'valid' in r]

  _write_nyu_split(out, sz.nyu, nyu)
  _extract_lilocbench(out, raw, p)
  _write_manifest(out / 'corridor' / 'manifest.jsonl', [r['entry'] for r in corridor])
  info = {
    'seed': seed, 'size': size, 'counts': p['counts'],
    'intrinsics': {
      'nyu': dict(zip(('fx', 'fy', 'cx', 'cy'), KINECT)),
      'lilocbench': {c[0]: dict(zip(('fx', 'fy', 'cx', 'cy'), c[5:])) for c in LIL_CAMERAS},
      'corridor': dict(zip(('fx', 'fy', 'cx', 'cy'), FEMTO)),
    },
    'resolutions': {'nyu': NYU_SIZE, 'lilocbench': LIL_SIZE, 'corridor': FEMTO_SIZE,
                    'da3_nyu_lilocbench': DA3_SIZE_43, 'da3_corridor': DA3_SIZE_169},
    'teacher_model': {'da3_log_scale_std': DA3_LOG_SCALE_STD, 'da3_pixel_noise_rel_std': DA3_NOISE_STD,
                      'sam2_max_boundary_shift_px': SAM2_MAX_SHIFT},
    'nyu_da3_scales': {r['entry']['stem']: r['da3_scale'] for r in nyu},
    'measured': _measured(nyu, lil, corridor),
  }
  (out / 'synthetic_info.json').write_text(json.dumps(info, indent=1) + '\n')
  return info


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m data_pipelines.synthetic', description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='output data root (docs/data.md#data-root)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--size', choices=sorted(SIZES), default='default')
  parser.add_argument('--workers', type=int, default=None, help='render processes (default: all cores; tiny: 1)')
  parser.add_argument('--overwrite', action='store_true', help='replace a previous generation in --out')
  args = parser.parse_args(argv)
  t0 = time.time()
  try:
    info = generate(args.out, args.seed, args.size, args.workers, args.overwrite)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps({'counts': info['counts'], 'measured': info['measured']}, indent=1))
  print(f'wrote {args.out} in {time.time() - t0:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
