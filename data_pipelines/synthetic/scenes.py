"""A small vectorised numpy ray-caster for indoor scenes: rooms (NYU-like) and corridors.

World frame: x right, y up (floor at y = 0), z forward; metres. A `Camera` casts one ray per pixel
with direction `right * (u - cx) / fx + down * (v - cy) / fy + forward`, so the ray parameter of a
hit is its z-depth (what depth sensors report). Surfaces are axis-aligned quads and boxes, vertical
cylinders and spheres, each carrying a raw NYU40 label id and a procedural material. Shading is
Lambertian under point lights with inverse-square falloff plus ambient light, with contact
shadows under objects; mirrors reflect one bounce and glass shows what lies behind it. Textures
live in world coordinates (tiles, planks, wood grain, paint mottling), so their image-space
frequency follows perspective: appearance carries depth cues.

`render(scene, camera)` returns linear radiance, z-depth, labels and the geometry a sensor model
needs; `to_srgb` applies auto-exposure, gamma and sensor noise. Scene builders: `room_scene` (one NYU-like room and
camera per call) and `corridor_scene` (one long corridor shared by every frame of a sequence).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Raw NYU40 ids used by the builders (their 6 classes: `readers.NYU40_TO_6`, docs/data.md).
WALL, FLOOR, CABINET, BED, CHAIR, SOFA, TABLE, DOOR, WINDOW = 1, 2, 3, 4, 5, 6, 7, 8, 9
BOOKSHELF, PICTURE, COUNTER, DESK, PILLOW, MIRROR, FLOOR_MAT, CEILING = 10, 11, 12, 14, 18, 19, 20, 22
TV, BOX, WHITEBOARD, PERSON, NIGHTSTAND, LAMP, OTHERPROP = 25, 29, 30, 31, 32, 35, 40

_EPS = 1e-4


# ----------------------------------------------------------------------------------------------
# Camera
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Camera:
  """Pinhole camera. yaw turns left-right about +y (0 looks along +z), pitch > 0 looks down."""
  width: int
  height: int
  fx: float
  fy: float
  cx: float
  cy: float
  position: tuple[float, float, float]
  yaw: float = 0.0
  pitch: float = 0.0
  roll: float = 0.0

  def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, down, forward) unit vectors in world coordinates."""
    cy_, sy_ = math.cos(self.yaw), math.sin(self.yaw)
    cp, sp = math.cos(self.pitch), math.sin(self.pitch)
    forward = np.array([sy_ * cp, -sp, cy_ * cp])
    right0 = np.array([cy_, 0.0, -sy_])
    down0 = np.cross(right0, forward)
    cr, sr = math.cos(self.roll), math.sin(self.roll)
    return cr * right0 + sr * down0, -sr * right0 + cr * down0, forward

  def rays(self) -> tuple[np.ndarray, np.ndarray]:
    """Origin [3] and directions [H, W, 3] float32 whose forward component is 1 (t = z-depth)."""
    right, down, forward = self.axes()
    a = (np.arange(self.width) - self.cx) / self.fx
    b = (np.arange(self.height) - self.cy) / self.fy
    d = (a[None, :, None] * right + b[:, None, None] * down + forward).astype(np.float32)
    return np.asarray(self.position, np.float32), d

  def screen_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice] | None:
    """Pixel rectangle covering an axis-aligned box; None when it is behind the camera."""
    right, down, forward = self.axes()
    corners = np.stack(np.meshgrid(*zip(lo, hi), indexing='ij'), -1).reshape(-1, 3)
    rel = corners - np.asarray(self.position)
    z = rel @ forward
    if np.all(z <= 0.0):
      return None
    if np.any(z <= 0.05):
      return slice(0, self.height), slice(0, self.width)
    u = self.fx * (rel @ right) / z + self.cx
    v = self.fy * (rel @ down) / z + self.cy
    u0, u1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 2, self.width)
    v0, v1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 2, self.height)
    if u0 >= u1 or v0 >= v1:
      return None
    return slice(v0, v1), slice(u0, u1)


# ----------------------------------------------------------------------------------------------
# Materials and textures
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Material:
  """kind: paint | tiles | planks | wood | fabric | books | picture | emissive | mirror | glass.

  color: base albedo RGB in [0, 1] (radiance for emissive); scale: texture period in metres;
  color2: second colour (grout, frame, stripes); seed: texture seed.
  """
  kind: str
  color: tuple[float, float, float]
  scale: float = 0.5
  color2: tuple[float, float, float] = (0.2, 0.2, 0.2)
  amp: float = 0.08
  seed: int = 0


def _hash(i: np.ndarray, j: np.ndarray, seed: int) -> np.ndarray:
  """Integer lattice hash -> float in [0, 1)."""
  h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (seed * 83492791 + 17)
  h = (h * 2654435761) & 0xFFFFFFFF
  h = h ^ (h >> 15)
  h = (h * 2246822519) & 0xFFFFFFFF
  return (h ^ (h >> 13)).astype(np.float64) / 4294967296.0


def _value_noise(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
  """Smooth 2-D value noise in [-1, 1] with unit lattice spacing."""
  i, j = np.floor(u), np.floor(v)
  fu, fv = u - i, v - j
  fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
  n00, n10 = _hash(i, j, seed), _hash(i + 1, j, seed)
  n01, n11 = _hash(i, j + 1, seed), _hash(i + 1, j + 1, seed)
  n = (n00 * (1 - fu) + n10 * fu) * (1 - fv) + (n01 * (1 - fu) + n11 * fu) * fv
  return 2.0 * n - 1.0


def _surface_uv(p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """In-plane coordinates [P] of points [P, 3] on the plane of their dominant normal axis.

  u is horizontal, v is the second axis (y for walls, z for floors)."""
  axis = np.argmax(np.abs(n), axis=1)
  u = np.where(axis == 0, p[:, 2], p[:, 0])
  v = np.where(axis == 1, p[:, 2], p[:, 1])
  return u, v


def albedo(m: Material, p: np.ndarray, n: np.ndarray) -> np.ndarray:
  """Albedo [P, 3] float32 of material m at points p [P, 3] with normals n [P, 3]."""
  return _albedo(m, p, n).astype(np.float32, copy=False)


def _albedo(m: Material, p: np.ndarray, n: np.ndarray) -> np.ndarray:
  c = np.asarray(m.color)
  c2 = np.asarray(m.color2)
  u, v = _surface_uv(p, n)
  s = m.scale
  if m.kind in ('paint', 'emissive', 'mirror', 'glass'):
    k = 1.0 + m.amp * (0.7 * _value_noise(u / s, v / s, m.seed)
                       + 0.3 * _value_noise(u / (0.13 * s), v / (0.13 * s), m.seed + 1))
    return c * k[:, None]
  if m.kind == 'fabric':
    k = 1.0 + m.amp * (_value_noise(u / s, v / s, m.seed)
                       + 0.6 * _value_noise(u / 0.01, v / 0.01, m.seed + 1))
    return c * k[:, None]
  if m.kind == 'tiles':
    gu, gv = u / s, v / s
    iu, iv = np.floor(gu), np.floor(gv)
    tint = 1.0 + m.amp * (2 * _hash(iu, iv, m.seed) - 1)
    grout = (gu - iu < 0.03) | (gv - iv < 0.03)
    out = c * tint[:, None]
    out[grout] = c2
    return out
  if m.kind == 'planks':  # planks of width s along u, 8 s long, staggered
    row = np.floor(v / s)
    along = u / (8 * s) + 0.37 * row
    col = np.floor(along)
    tint = 1.0 + m.amp * (2 * _hash(row, col, m.seed) - 1)
    grain = 0.06 * np.sin(40.0 * v / s + 3.0 * _value_noise(u / (0.5 * s), row, m.seed + 2))
    seam = (v / s - row < 0.04) | (along - col < 0.005)
    out = c * (tint + grain)[:, None]
    out[seam] *= 0.55
    return out
  if m.kind == 'wood':  # streaks of width ~s, stretched 20x along v
    grain = (0.6 * _value_noise(u / s, v / (20 * s), m.seed)
             + 0.4 * _value_noise(u / (4 * s), v / (40 * s), m.seed + 1))
    return c * (1.0 + m.amp * grain)[:, None]
  if m.kind == 'books':  # vertical spines of width ~s along u, shelves every 0.35 m in v
    spine = np.floor(u / s)
    h1, h2 = _hash(spine, np.floor(v / 0.35), m.seed), _hash(spine, np.floor(v / 0.35), m.seed + 5)
    out = np.stack([0.2 + 0.6 * h1, 0.15 + 0.5 * h2, 0.15 + 0.5 * (1 - h1)], -1)
    shelf = (v % 0.35) < 0.03
    out[shelf] = c
    return out
  if m.kind == 'picture':
    cu, cv = np.floor(u / s), np.floor(v / s)
    h1, h2, h3 = (_hash(cu, cv, m.seed + k) for k in range(3))
    return np.stack([h1, h2, h3], -1) * 0.8 + 0.1
  raise ValueError(f'unknown material kind {m.kind!r}')


# ----------------------------------------------------------------------------------------------
# Primitives
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Quad:
  """Axis-aligned rectangle: coordinate `c` on `axis`, bounds lo/hi [3] on the other two axes."""
  axis: int
  c: float
  lo: tuple[float, float, float]
  hi: tuple[float, float, float]
  label: int
  material: Material

  def bounds(self) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.array(self.lo, float), np.array(self.hi, float)
    lo[self.axis] = hi[self.axis] = self.c
    return lo, hi

  def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    a = self.axis
    with np.errstate(divide='ignore', invalid='ignore'):
      t = (self.c - o[..., a]) / d[..., a]
    ok = t > _EPS
    for b in range(3):
      if b != a:
        x = o[..., b] + t * d[..., b]
        ok &= (x >= self.lo[b]) & (x <= self.hi[b])
    return np.where(ok, t, np.inf)

  def normal(self, p: np.ndarray, d: np.ndarray) -> np.ndarray:
    n = np.zeros_like(p)
    n[:, self.axis] = -np.sign(d[:, self.axis])
    return n


@dataclasses.dataclass(frozen=True)
class Box:
  """Axis-aligned box [lo, hi], seen from outside."""
  lo: tuple[float, float, float]
  hi: tuple[float, float, float]
  label: int
  material: Material

  def bounds(self) -> tuple[np.ndarray, np.ndarray]:
    return np.array(self.lo, float), np.array(self.hi, float)

  def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    with np.errstate(divide='ignore', invalid='ignore'):
      inv = 1.0 / d
      t1 = (np.asarray(self.lo, np.float32) - o) * inv
      t2 = (np.asarray(self.hi, np.float32) - o) * inv
    t1, t2 = np.nan_to_num(t1, nan=-np.inf), np.nan_to_num(t2, nan=np.inf)
    tmin = np.minimum(t1, t2).max(-1)
    tmax = np.maximum(t1, t2).min(-1)
    return np.where((tmax >= tmin) & (tmin > _EPS), tmin, np.inf)

  def normal(self, p: np.ndarray, d: np.ndarray) -> np.ndarray:
    lo, hi = np.asarray(self.lo, np.float32), np.asarray(self.hi, np.float32)
    dist = np.concatenate([np.abs(p - lo), np.abs(p - hi)], 1)
    k = np.argmin(dist, 1)
    n = np.zeros_like(p)
    n[np.arange(len(p)), k % 3] = np.where(k < 3, -1.0, 1.0)
    return n


@dataclasses.dataclass(frozen=True)
class Cylinder:
  """Vertical capped cylinder: axis (x, z), radius r, from y0 to y1."""
  x: float
  z: float
  r: float
  y0: float
  y1: float
  label: int
  material: Material

  def bounds(self) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([self.x - self.r, self.y0, self.z - self.r]),
            np.array([self.x + self.r, self.y1, self.z + self.r]))

  def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    ox, oz = o[..., 0] - self.x, o[..., 2] - self.z
    dx, dz = d[..., 0], d[..., 2]
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - self.r * self.r
    disc = b * b - a * c
    with np.errstate(divide='ignore', invalid='ignore'):
      t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    y = o[..., 1] + t * d[..., 1]
    side = np.where((disc >= 0) & (t > _EPS) & (y >= self.y0) & (y <= self.y1), t, np.inf)
    best = side
    for yc in (self.y0, self.y1):
      with np.errstate(divide='ignore', invalid='ignore'):
        tc = (yc - o[..., 1]) / d[..., 1]
      px, pz = ox + tc * dx, oz + tc * dz
      cap = np.where((tc > _EPS) & (px * px + pz * pz <= self.r * self.r), tc, np.inf)
      best = np.minimum(best, cap)
    return best

  def normal(self, p: np.ndarray, d: np.ndarray) -> np.ndarray:
    n = np.stack([p[:, 0] - self.x, np.zeros(len(p)), p[:, 2] - self.z], 1) / self.r
    top = p[:, 1] >= self.y1 - 1e-6
    bottom = p[:, 1] <= self.y0 + 1e-6
    n[top] = (0.0, 1.0, 0.0)
    n[bottom] = (0.0, -1.0, 0.0)
    return n


@dataclasses.dataclass(frozen=True)
class Sphere:
  center: tuple[float, float, float]
  r: float
  label: int
  material: Material

  def bounds(self) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(self.center, float)
    return c - self.r, c + self.r

  def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    oc = o - np.asarray(self.center, np.float32)
    a = np.sum(d * d, -1)
    b = np.sum(oc * d, -1)
    c = np.sum(oc * oc, -1) - self.r * self.r
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)

  def normal(self, p: np.ndarray, d: np.ndarray) -> np.ndarray:
    return (p - np.asarray(self.center, np.float32)) / np.float32(self.r)


Primitive = Quad | Box | Cylinder | Sphere


@dataclasses.dataclass
class Light:
  position: tuple[float, float, float]
  power: tuple[float, float, float]  # radiance scale at 1 m


@dataclasses.dataclass
class Scene:
  prims: list[Primitive]
  lights: list[Light]  # sorted by z when nearest_lights is set
  ambient: float = 0.15
  nearest_lights: int = 0

  def labels(self) -> np.ndarray:
    """[num_prims] int32 raw NYU40 ids."""
    return np.array([p.label for p in self.prims], np.int32)


# ----------------------------------------------------------------------------------------------
# Tracing and shading
# ----------------------------------------------------------------------------------------------

def _trace(prims: list[Primitive], o: np.ndarray, d: np.ndarray,
           exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Nearest hit of rays o [P, 3] + t d [P, 3]: t [P] (inf = miss), primitive index [P] (-1)."""
  t_best = np.full(d.shape[0], np.inf)
  i_best = np.full(d.shape[0], -1, np.int32)
  for i, prim in enumerate(prims):
    t = prim.intersect(o, d)
    if exclude is not None:
      t = np.where(exclude == i, np.inf, t)
    m = t < t_best
    t_best[m] = t[m]
    i_best[m] = i
  return t_best, i_best


def _trace_image(prims: list[Primitive], cam: Camera) -> tuple[np.ndarray, ...]:
  """Primary rays with screen-space culling: t [H, W] and primitive index [H, W] of the nearest
  hit, and of the nearest hit that is not glass (what glass lets through)."""
  o, d = cam.rays()
  t_best = np.full(d.shape[:2], np.inf)
  i_best = np.full(d.shape[:2], -1, np.int32)
  t_opaque = np.full(d.shape[:2], np.inf)
  i_opaque = np.full(d.shape[:2], -1, np.int32)
  for i, prim in enumerate(prims):
    sl = cam.screen_box(*prim.bounds())
    if sl is None:
      continue
    t = prim.intersect(o, d[sl])
    for tb, ib in ((t_best[sl], i_best[sl]), (t_opaque[sl], i_opaque[sl])):
      m = t < tb
      tb[m] = t[m]
      ib[m] = i
      if prim.material.kind == 'glass':
        break
  return t_best, i_best, t_opaque, i_opaque


def _surface(prims: list[Primitive], p: np.ndarray, d: np.ndarray,
             idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Normals [P, 3] (facing the ray), albedo [P, 3] and emission [P, 3] at hits p [P, 3]."""
  n = np.zeros_like(p)
  alb = np.zeros_like(p)
  emit = np.zeros_like(p)
  order = np.argsort(idx, kind='stable')
  ids, starts = np.unique(idx[order], return_index=True)
  ends = np.append(starts[1:], len(idx))
  for i, a, b in zip(ids, starts, ends):
    if i < 0:
      continue
    m = order[a:b]
    prim = prims[i]
    ni = prim.normal(p[m], d[m])
    flip = np.sum(ni * d[m], 1) > 0
    ni[flip] *= -1
    n[m] = ni
    if prim.material.kind == 'emissive':
      emit[m] = albedo(prim.material, p[m], ni)
    else:
      alb[m] = albedo(prim.material, p[m], ni)
  return n, alb, emit


def _irradiance(scene: Scene, p: np.ndarray, n: np.ndarray) -> np.ndarray:
  """Lambertian irradiance [P, 3]: ambient + point lights with soft inverse-square falloff.

  With `scene.nearest_lights` = k, each point sees only the k lights nearest to it along z (a row
  of ceiling lights: the same light everywhere at the cost of k lights)."""
  e = np.full(p.shape, scene.ambient, np.float32)
  if not scene.lights:
    return e
  pos = np.array([l.position for l in scene.lights], np.float32)
  power = np.array([l.power for l in scene.lights], np.float32)
  if scene.nearest_lights:
    k = scene.nearest_lights
    first = np.clip(np.searchsorted(pos[:, 2], p[:, 2]) - k // 2, 0, max(len(pos) - k, 0))
    sel = [np.minimum(first + j, len(pos) - 1) for j in range(min(k, len(pos)))]
  else:
    sel = [np.full(len(p), j) for j in range(len(pos))]
  px, py, pz = p[:, 0], p[:, 1], p[:, 2]
  nx, ny, nz = n[:, 0], n[:, 1], n[:, 2]
  same_colour = bool(np.all(power == power[0]))
  total = np.zeros(len(p), np.float32)
  for j in sel:
    lx, ly, lz = pos[j, 0] - px, pos[j, 1] - py, pos[j, 2] - pz
    r2 = lx * lx + ly * ly + lz * lz
    cos = np.maximum(lx * nx + ly * ny + lz * nz, 0.0) / np.sqrt(r2 + 1e-12)
    wgt = cos / (r2 + 0.25)
    if same_colour:
      total += wgt
    else:
      e += wgt[:, None] * power[j]
  if same_colour:
    e += total[:, None] * power[0]
  return e


def _contact_shadow(scene: Scene, p: np.ndarray, n: np.ndarray) -> np.ndarray:
  """Ambient-occlusion-like darkening [P] of floor points near and under the footprints of boxes
  and cylinders below 1.2 m, so that objects look grounded."""
  ao = np.ones(len(p), np.float32)
  floor = np.nonzero((n[:, 1] > 0.9) & (p[:, 1] < 0.01))[0]
  if len(floor) == 0:
    return ao
  fx, fz = p[floor, 0], p[floor, 2]
  occ = np.ones(len(floor), np.float32)
  for prim in scene.prims:
    if isinstance(prim, Quad):
      continue
    lo, hi = prim.bounds()
    if lo[1] > 1.2:
      continue
    # Standing on the floor: dark contact; raised (table tops, seats): a softer shadow below.
    amp, fall = (0.55, 0.12) if lo[1] < 0.05 else (0.35, 0.12 + 0.2 * lo[1])
    dx = np.maximum(np.maximum(lo[0] - fx, fx - hi[0]), 0.0)
    dz = np.maximum(np.maximum(lo[2] - fz, fz - hi[2]), 0.0)
    near = np.nonzero((dx < 4 * fall) & (dz < 4 * fall))[0]
    if len(near):
      d = np.sqrt(dx[near] ** 2 + dz[near] ** 2)
      occ[near] *= 1.0 - amp * np.exp(-d / fall)
  ao[floor] = occ
  return ao


def _shade(scene: Scene, o: np.ndarray, d: np.ndarray, t: np.ndarray, idx: np.ndarray,
           bounce: bool) -> tuple[np.ndarray, np.ndarray]:
  """Radiance [P, 3] and normals [P, 3] of rays o + t d (flat arrays); mirrors reflect once when
  bounce is set.

  Glass is shaded as plain tinted surface here; `render` composes it with what lies behind."""
  p = o + t[:, None] * d
  n, alb, emit = _surface(scene.prims, p, d, idx)
  rad = alb * (_irradiance(scene, p, n) * _contact_shadow(scene, p, n)[:, None]) + emit
  kinds = np.array([q.material.kind for q in scene.prims] + ['none'])
  mirror = np.nonzero(kinds[idx] == 'mirror')[0]
  if len(mirror) == 0:
    return rad, n
  if not bounce:
    rad[mirror] = alb[mirror] * 0.5
    return rad, n
  pm, nm, dm = p[mirror], n[mirror], d[mirror]
  dn = dm / np.linalg.norm(dm, axis=1, keepdims=True)
  refl = dn - 2 * np.sum(dn * nm, 1, keepdims=True) * nm
  o2 = pm + 1e-3 * nm
  t2, i2 = _trace(scene.prims, o2, refl)
  r_rad, _ = _shade(scene, o2, refl, np.where(np.isfinite(t2), t2, 0.0), i2, bounce=False)
  rad[mirror] = 0.85 * r_rad * alb[mirror]
  return rad, n


def render(scene: Scene, cam: Camera) -> dict[str, np.ndarray]:
  """Ray-cast one frame.

  Returns radiance [H, W, 3] float32 (linear), depth [H, W] float32 z-depth in m, label [H, W]
  int32 raw NYU40 id, cos [H, W] float32 |cos| between view ray and normal, kind [H, W] material
  kind (str), behind [H, W] float32 z-depth of what glass lets through (= depth elsewhere).
  """
  h, w = cam.height, cam.width
  t, idx, t_op, i_op = _trace_image(scene.prims, cam)
  if np.any(i_op < 0):
    raise ValueError('scene is not closed: some rays hit nothing')
  o, d = cam.rays()
  df, tf, idf = d.reshape(-1, 3), t.reshape(-1), idx.reshape(-1)
  rad, n = _shade(scene, o[None], df, tf, idf, bounce=True)
  kinds = np.array([q.material.kind for q in scene.prims])
  kind = kinds[idf]
  g = np.nonzero(kind == 'glass')[0]
  if len(g):
    through, _ = _shade(scene, o[None], df[g], t_op.reshape(-1)[g], i_op.reshape(-1)[g], bounce=False)
    tint = np.array([scene.prims[i].material.color for i in idf[g]])
    rad[g] = 0.8 * through * tint + 0.04 + 0.03 * np.abs(np.sin(3.0 * df[g, 0] + 2.0 * df[g, 1]))[:, None]
  cos = np.abs(np.sum(n * df, 1)) / np.linalg.norm(df, axis=1)
  return {
    'radiance': rad.reshape(h, w, 3).astype(np.float32),
    'depth': t.astype(np.float32),
    'label': scene.labels()[idx],
    'cos': cos.reshape(h, w).astype(np.float32),
    'kind': kind.reshape(h, w),
    'behind': t_op.astype(np.float32),
  }


def tonemap(radiance: np.ndarray, exposure_percentile: float = 97.0) -> np.ndarray:
  """Auto-exposure, mild lens blur, vignetting and gamma: [H, W, 3] float32 in [0, 255]."""
  lum = radiance @ np.array([0.2126, 0.7152, 0.0722], np.float32)
  x = radiance * np.float32(0.85 / max(float(np.percentile(lum, exposure_percentile)), 1e-6))
  x = 0.25 * (np.roll(x, 1, 0) + np.roll(x, -1, 0)) + 0.5 * x  # [1, 2, 1] blur, both axes
  x = 0.25 * (np.roll(x, 1, 1) + np.roll(x, -1, 1)) + 0.5 * x
  h, w = x.shape[:2]
  yy, xx = np.mgrid[0:h, 0:w]
  r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
  x = x * (1.0 - 0.25 * r2).astype(np.float32)[..., None]
  return np.clip(x, 0.0, 1.0) ** np.float32(1 / 2.2) * np.float32(255.0)


def quantise(x: np.ndarray, rng: np.random.Generator, noise: float = 1.0) -> np.ndarray:
  """Sensor noise (std `noise` grey levels) and 8-bit quantisation of a tonemapped image."""
  x = x + np.float32(noise) * rng.standard_normal(x.shape, dtype=np.float32)
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def to_srgb(radiance: np.ndarray, rng: np.random.Generator, noise: float = 1.0) -> np.ndarray:
  """Linear radiance [H, W, 3] -> an 8-bit camera image [H, W, 3] uint8."""
  return quantise(tonemap(radiance), rng, noise)


# ----------------------------------------------------------------------------------------------
# Scene builders
# ----------------------------------------------------------------------------------------------

_WOODS = ((0.55, 0.38, 0.22), (0.35, 0.22, 0.12), (0.75, 0.6, 0.42), (0.22, 0.2, 0.19), (0.88, 0.87, 0.84),
          (0.62, 0.45, 0.3))


def _wood(rng: np.random.Generator) -> tuple:
  """A furniture finish: one of a few wood / laminate colours, brightness varied."""
  base = np.asarray(_WOODS[int(rng.integers(len(_WOODS)))]) * rng.uniform(0.8, 1.15)
  return tuple(float(x) for x in np.clip(base, 0.02, 0.95))


def _rgb(rng: np.random.Generator, lo: float, hi: float, sat: float = 0.25) -> tuple:
  base = rng.uniform(lo, hi)
  return tuple(float(np.clip(base * (1 + rng.uniform(-sat, sat)), 0.02, 0.95)) for _ in range(3))


def _room_shell(x0, x1, z0, z1, height, floor_m, wall_m, ceil_m) -> list[Primitive]:
  lo, hi = (x0, 0.0, z0), (x1, height, z1)
  return [
    Quad(1, 0.0, lo, hi, FLOOR, floor_m),
    Quad(1, height, lo, hi, CEILING, ceil_m),
    Quad(0, x0, lo, hi, WALL, wall_m),
    Quad(0, x1, lo, hi, WALL, wall_m),
    Quad(2, z0, lo, hi, WALL, wall_m),
    Quad(2, z1, lo, hi, WALL, wall_m),
  ]


def _wall_rect(side: str, room: tuple, a0: float, a1: float, y0: float, y1: float, label: int,
               mat: Material, offset: float = 0.01) -> Quad:
  """A rectangle on a room wall ('left' x0, 'right' x1, 'far' z1, 'near' z0), a = along the wall."""
  x0, x1, z0, z1 = room
  if side in ('left', 'right'):
    x = x0 + offset if side == 'left' else x1 - offset
    return Quad(0, x, (x, y0, a0), (x, y1, a1), label, mat)
  z = z1 - offset if side == 'far' else z0 + offset
  return Quad(2, z, (a0, y0, z), (a1, y1, z), label, mat)


def person(rng: np.random.Generator, x: float, z: float, heading: float = 0.0) -> list[Primitive]:
  """A standing person (legs, torso, arms, head, hair) of height ~1.6-1.9 m at (x, z)."""
  s = rng.uniform(0.9, 1.05)
  shirt = Material('fabric', _rgb(rng, 0.1, 0.8, 0.5), scale=0.2, amp=0.1, seed=int(rng.integers(1 << 20)))
  trousers = Material('fabric', _rgb(rng, 0.05, 0.4, 0.3), scale=0.2, amp=0.1, seed=int(rng.integers(1 << 20)))
  skin = Material('paint', tuple(np.array([0.85, 0.62, 0.5]) * rng.uniform(0.45, 1.0)), amp=0.03)
  hair = Material('fabric', _rgb(rng, 0.03, 0.25, 0.2), scale=0.05, amp=0.2)
  ca, sa = math.cos(heading), math.sin(heading)

  def at(side: float) -> tuple[float, float]:  # offset sideways from the body axis
    return x + side * ca, z - side * sa

  out: list[Primitive] = []
  for side in (-0.1 * s, 0.1 * s):
    lx, lz = at(side)
    out.append(Cylinder(lx, lz, 0.075 * s, 0.0, 0.86 * s, PERSON, trousers))
  out.append(Cylinder(x, z, 0.19 * s, 0.82 * s, 1.45 * s, PERSON, shirt))
  for side in (-0.25 * s, 0.25 * s):
    ax, az = at(side)
    out.append(Cylinder(ax, az, 0.055 * s, 0.8 * s, 1.42 * s, PERSON, shirt))
  out.append(Cylinder(x, z, 0.05 * s, 1.45 * s, 1.53 * s, PERSON, skin))
  out.append(Sphere((x, 1.62 * s, z), 0.105 * s, PERSON, skin))
  out.append(Sphere((x - 0.015 * sa, 1.66 * s, z - 0.015 * ca), 0.1 * s, PERSON, hair))
  return out


def _table(rng, x, z, w, d, h, label, mat) -> list[Primitive]:
  leg = 0.05
  out = [Box((x, h - 0.04, z), (x + w, h, z + d), label, mat)]
  for lx, lz in ((x, z), (x + w - leg, z), (x, z + d - leg), (x + w - leg, z + d - leg)):
    out.append(Box((lx, 0.0, lz), (lx + leg, h - 0.04, lz + leg), label, mat))
  return out


_Footprint = tuple[float, float, float, float]  # x0, z0, x1, z1


def _dims(w: float, d: float, along_x: bool) -> tuple[float, float]:
  return (w, d) if along_x else (d, w)


def _table_with_props(rng: np.random.Generator, x: float, z: float, along_x: bool, wood: Material,
                      cloth: Material) -> tuple[list[Primitive], _Footprint]:
  """A table or desk with 0-2 cylindrical props on its top."""
  w, d = _dims(rng.uniform(0.8, 1.6), rng.uniform(0.6, 0.9), along_x)
  prims = _table(rng, x, z, w, d, rng.uniform(0.7, 0.78), rng.choice([TABLE, DESK]), wood)
  top = prims[0]
  props = []
  for _ in range(int(rng.integers(0, 3))):
    px, pz = x + rng.uniform(0.1, w - 0.15), z + rng.uniform(0.1, d - 0.15)
    props.append(Cylinder(px, pz, rng.uniform(0.03, 0.07), top.hi[1], top.hi[1] + rng.uniform(0.08, 0.25),
                          OTHERPROP, Material('paint', _rgb(rng, 0.2, 0.9, 0.6), amp=0.05)))
  return prims + props, (x, z, x + w, z + d)


def _chair(rng: np.random.Generator, x: float, z: float, along_x: bool, wood: Material,
           cloth: Material) -> tuple[list[Primitive], _Footprint]:
  w = d = rng.uniform(0.42, 0.5)
  prims = _table(rng, x, z, w, d, rng.uniform(0.42, 0.48), CHAIR, wood)
  seat_h = prims[0].hi[1]
  back = (Box((x, seat_h, z + d - 0.05), (x + w, seat_h + 0.45, z + d), CHAIR, wood) if along_x
          else Box((x + w - 0.05, seat_h, z), (x + w, seat_h + 0.45, z + d), CHAIR, wood))
  return prims + [back], (x, z, x + w, z + d)


def _cabinet(rng: np.random.Generator, x: float, z: float, along_x: bool, wood: Material,
             cloth: Material) -> tuple[list[Primitive], _Footprint]:
  """A cabinet; a low one may be labelled nightstand or counter."""
  w, d = _dims(rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.6), along_x)
  h = rng.uniform(0.6, 1.9)
  label = rng.choice([CABINET, CABINET, NIGHTSTAND, COUNTER]) if h < 1.0 else CABINET
  return [Box((x, 0.0, z), (x + w, h, z + d), int(label), wood)], (x, z, x + w, z + d)


def _bookshelf(rng: np.random.Generator, x: float, z: float, along_x: bool, wood: Material,
               cloth: Material) -> tuple[list[Primitive], _Footprint]:
  w, d = _dims(rng.uniform(0.6, 1.2), 0.35, along_x)
  h = rng.uniform(1.2, 2.0)
  books = Material('books', wood.color, scale=0.035, seed=int(rng.integers(1 << 20)))
  return [Box((x, 0.0, z), (x + w, h, z + d), BOOKSHELF, books)], (x, z, x + w, z + d)


def _sofa(rng: np.random.Generator, x: float, z: float, along_x: bool, wood: Material,
          cloth: Material) -> tuple[list[Primitive], _Footprint]:
  """Seat, back along the far long side and one pillow."""
  w, d = _dims(rng.uniform(1.4, 2.1), rng.uniform(0.8, 0.95), along_x)
  prims = [Box((x, 0.0, z), (x + w, 0.42, z + d), SOFA, cloth)]
  if along_x:
    prims.append(Box((x, 0.42, z + d - 0.2), (x + w, 0.85, z + d), SOFA, cloth))
  else:
    prims.append(Box((x + w - 0.2, 0.42, z), (x + w, 0.85, z + d), SOFA, cloth))
  pil = Material('fabric', _rgb(rng, 0.3, 0.9, 0.5), scale=0.1, amp=0.1)
  cx = x + rng.uniform(0.2, max(w - 0.6, 0.25))
  cz = z + rng.uniform(0.2, max(d - 0.6, 0.25))
  prims.append(Box((cx, 0.42, cz), (cx + 0.35, 0.62, cz + 0.35), PILLOW, pil))
  return prims, (x, z, x + w, z + d)


def _bed(rng: np.random.Generator, x: float, z: float, along_x: bool, wood: Material,
         cloth: Material) -> tuple[list[Primitive], _Footprint]:
  w, d = _dims(rng.uniform(1.9, 2.1), rng.uniform(1.0, 1.6), along_x)
  sheet = Material('fabric', _rgb(rng, 0.5, 0.9, 0.3), scale=0.3, amp=0.06)
  prims = [Box((x, 0.0, z), (x + w, 0.5, z + d), BED, sheet)]
  px, pz = (x + 0.1, z + 0.1)
  prims.append(Box((px, 0.5, pz), (px + 0.5, 0.62, pz + 0.5), PILLOW, cloth))
  return prims, (x, z, x + w, z + d)


def _box(rng: np.random.Generator, x: float, z: float, along_x: bool, wood: Material,
         cloth: Material) -> tuple[list[Primitive], _Footprint]:
  s = rng.uniform(0.25, 0.5)
  mat = Material('paint', (0.55, 0.42, 0.28), amp=0.05)
  return [Box((x, 0.0, z), (x + s, s * rng.uniform(0.6, 1.2), z + s), BOX, mat)], (x, z, x + s, z + s)


def _lamp(rng: np.random.Generator, x: float, z: float, along_x: bool, wood: Material,
          cloth: Material) -> tuple[list[Primitive], _Footprint]:
  """A floor lamp: pole and shade."""
  pole = Material('paint', (0.2, 0.2, 0.2), amp=0.02)
  shade = Material('fabric', (0.9, 0.85, 0.7), scale=0.1, amp=0.05)
  h = rng.uniform(1.3, 1.7)
  return ([Cylinder(x + 0.2, z + 0.2, 0.02, 0.0, h, LAMP, pole),
           Cylinder(x + 0.2, z + 0.2, 0.18, h, h + 0.25, LAMP, shade)], (x, z, x + 0.4, z + 0.4))


_FURNITURE = {'table': _table_with_props, 'chair': _chair, 'cabinet': _cabinet, 'bookshelf': _bookshelf,
              'sofa': _sofa, 'bed': _bed, 'box': _box, 'lamp': _lamp}


def _furniture(rng: np.random.Generator, kind: str, x: float, z: float,
               along_x: bool) -> tuple[list[Primitive], _Footprint]:
  """One piece of furniture (a key of _FURNITURE) with its footprint. along_x: long side along x."""
  wood = Material('wood', _wood(rng), scale=0.01, amp=0.12, seed=int(rng.integers(1 << 20)))
  cloth = Material('fabric', _rgb(rng, 0.15, 0.7, 0.5), scale=0.3, amp=0.08, seed=int(rng.integers(1 << 20)))
  if kind not in _FURNITURE:
    raise ValueError(kind)
  return _FURNITURE[kind](rng, x, z, along_x, wood, cloth)


def room_scene(rng: np.random.Generator, intrinsics: tuple[float, float, float, float],
               size: tuple[int, int], with_person: bool, with_mirror: bool) -> tuple[Scene, Camera]:
  """One NYU-like room (3-5 m wide, 3.4-5 m deep) with furniture, a camera near one wall looking
  in, optional people in view and an optional mirror on the far wall. size = (W, H)."""
  width, depth, height = rng.uniform(3.0, 5.0), rng.uniform(3.4, 4.8), rng.uniform(2.4, 2.8)
  room = (0.0, width, 0.0, depth)
  prims = _room_shell(0.0, width, 0.0, depth, height, *_room_materials(rng))

  cam_x = rng.uniform(0.35, 0.65) * width
  cam_z = rng.uniform(0.15, 0.45)
  fx, fy, cx, cy = intrinsics
  cam = Camera(size[0], size[1], fx, fy, cx, cy, (cam_x, rng.uniform(1.1, 1.6), cam_z),
               yaw=rng.uniform(-0.35, 0.35), pitch=rng.uniform(0.1, 0.35), roll=rng.uniform(-0.03, 0.03))
  prims += _wall_decorations(rng, room, cam, with_mirror)
  # Furniture along the walls and in the middle, clear of the camera.
  taken: list[tuple[float, float, float, float]] = [(cam_x - 0.7, -1.0, cam_x + 0.7, cam_z + 0.9)]
  prims += _room_furniture(rng, room, taken)
  if with_person:
    prims += _people_in_view(rng, room, cam, taken)

  lights = []
  for _ in range(int(rng.integers(1, 3))):
    lx, lz = rng.uniform(0.25, 0.75) * width, rng.uniform(0.3, 0.8) * depth
    power = rng.uniform(2.5, 4.0) * np.array(_rgb(rng, 0.85, 1.0, 0.08))
    lights.append(Light((lx, height - 0.15, lz), tuple(power)))
  return Scene(prims, lights, ambient=float(rng.uniform(0.12, 0.25))), cam


def _room_materials(rng: np.random.Generator) -> tuple[Material, Material, Material]:
  """The floor (tiles, planks or fabric), wall and ceiling materials of a room."""
  floor_kind = rng.choice(['tiles', 'planks', 'fabric'])
  floor_m = {  # all three drawn, one kept: the random stream does not depend on the kind
    'tiles': Material('tiles', _rgb(rng, 0.4, 0.85, 0.15), scale=rng.uniform(0.3, 0.6),
                      color2=_rgb(rng, 0.2, 0.4, 0.1), amp=0.08, seed=int(rng.integers(1 << 20))),
    'planks': Material('planks', _rgb(rng, 0.3, 0.6, 0.35), scale=rng.uniform(0.1, 0.2), amp=0.12,
                       seed=int(rng.integers(1 << 20))),
    'fabric': Material('fabric', _rgb(rng, 0.2, 0.6, 0.4), scale=0.4, amp=0.1, seed=int(rng.integers(1 << 20))),
  }[str(floor_kind)]
  wall_m = Material('paint', _rgb(rng, 0.55, 0.9, 0.15), scale=rng.uniform(0.3, 1.0), amp=0.06,
                    seed=int(rng.integers(1 << 20)))
  ceil_m = Material('paint', _rgb(rng, 0.8, 0.95, 0.05), scale=1.0, amp=0.03)
  return floor_m, wall_m, ceil_m


def _wall_decorations(rng: np.random.Generator, room: tuple[float, float, float, float], cam: Camera,
                      with_mirror: bool) -> list[Primitive]:
  """Door, window, pictures, whiteboard / TV on the walls of `room` (x0, x1, z0, z1); a mirror on
  the far wall inside the camera's horizontal field of view."""
  _, width, _, depth = room
  prims = []
  if rng.random() < 0.7:
    side = str(rng.choice(['left', 'right', 'far']))
    span = depth if side != 'far' else width
    a = rng.uniform(0.3, span - 1.2)
    door_m = Material('wood', _wood(rng), scale=0.01, amp=0.12, seed=int(rng.integers(1 << 20)))
    prims.append(_wall_rect(side, room, a, a + 0.9, 0.0, 2.05, DOOR, door_m))
  if rng.random() < 0.5:
    side = str(rng.choice(['left', 'right', 'far']))
    span = depth if side != 'far' else width
    a = rng.uniform(0.3, span - 1.5)
    prims.append(_wall_rect(side, room, a, a + 1.2, 0.9, 2.1, WINDOW,
                            Material('emissive', (2.2, 2.4, 2.7), scale=0.5, amp=0.15)))
  for _ in range(int(rng.integers(0, 3))):
    side = str(rng.choice(['left', 'right', 'far']))
    span = depth if side != 'far' else width
    wpic = rng.uniform(0.3, 1.0)
    a = rng.uniform(0.2, span - wpic - 0.2)
    y0 = rng.uniform(1.1, 1.6)
    label = int(rng.choice([PICTURE, PICTURE, WHITEBOARD, TV]))
    mat = {PICTURE: Material('picture', (0.5, 0.5, 0.5), scale=wpic / 3, seed=int(rng.integers(1 << 20))),
           WHITEBOARD: Material('paint', (0.92, 0.92, 0.92), amp=0.02),
           TV: Material('paint', (0.04, 0.04, 0.05), amp=0.05)}[label]
    prims.append(_wall_rect(side, room, a, a + wpic, y0, y0 + wpic * 0.7, label, mat, offset=0.02))
  if with_mirror:
    cam_x, _, cam_z = cam.position
    view_x = cam_x + math.tan(cam.yaw) * (depth - cam_z)
    w_m = rng.uniform(0.5, 1.0)
    a = float(np.clip(view_x + rng.uniform(-0.8, 0.8) - w_m / 2, 0.1, width - w_m - 0.1))
    y0 = rng.uniform(0.6, 1.2)
    prims.append(_wall_rect('far', room, a, a + w_m, y0, y0 + rng.uniform(0.6, 1.1), MIRROR,
                            Material('mirror', (0.9, 0.92, 0.95), amp=0.0), offset=0.03))
  return prims


def _free(taken: list[tuple[float, float, float, float]], fp: tuple[float, float, float, float],
          margin: float = 0.05) -> bool:
  """Whether footprint `fp` (x0, z0, x1, z1) keeps `margin` metres from every footprint `taken`."""
  return all(fp[2] + margin < t[0] or fp[0] - margin > t[2] or fp[3] + margin < t[1] or fp[1] - margin > t[3]
             for t in taken)


def _room_furniture(rng: np.random.Generator, room: tuple[float, float, float, float],
                    taken: list[tuple[float, float, float, float]]) -> list[Primitive]:
  """3-6 pieces along the walls and in the middle of `room`, each clear of the footprints `taken`
  (to which it adds its own); a piece that finds no place in 10 tries is left out."""
  _, width, _, depth = room
  prims = []
  kinds = ['table', 'chair', 'chair', 'cabinet', 'bookshelf', 'sofa', 'bed', 'box', 'lamp', 'cabinet']
  for _ in range(int(rng.integers(3, 7))):
    kind = str(rng.choice(kinds))
    for _ in range(10):
      along_x = bool(rng.random() < 0.6)
      wall = rng.choice(['left', 'right', 'far', 'middle'])
      if wall == 'far':
        x, z = rng.uniform(0.05, width - 1.5), depth - rng.uniform(0.35, 0.7)
      elif wall == 'left':
        x, z = 0.05, rng.uniform(0.8, depth - 1.0)
      elif wall == 'right':
        x, z = width - rng.uniform(0.6, 1.0), rng.uniform(0.8, depth - 1.0)
      else:
        x, z = rng.uniform(0.5, width - 1.5), rng.uniform(1.2, depth - 1.5)
      new, fp = _furniture(rng, kind, x, z, along_x)
      if fp[2] < width - 0.02 and fp[3] < depth - 0.02 and _free(taken, fp):
        prims += new
        taken.append(fp)
        break
  return prims


def _people_in_view(rng: np.random.Generator, room: tuple[float, float, float, float], cam: Camera,
                    taken: list[tuple[float, float, float, float]]) -> list[Primitive]:
  """1-2 people in front of the camera, each on a free footprint (added to `taken`); 20 tries each."""
  _, width, _, depth = room
  cam_x, _, cam_z = cam.position
  prims = []
  for _person in range(int(rng.integers(1, 3))):
    for _ in range(20):
      dist = rng.uniform(1.4, max(depth - cam_z - 0.5, 1.5))
      ang = cam.yaw + rng.uniform(-0.45, 0.45)
      px, pz = cam_x + dist * math.sin(ang), cam_z + dist * math.cos(ang)
      fp = (px - 0.3, pz - 0.3, px + 0.3, pz + 0.3)
      if 0.3 < px < width - 0.3 and 0.3 < pz < depth - 0.3 and _free(taken, fp, 0.0):
        prims += person(rng, px, pz, heading=rng.uniform(-math.pi, math.pi))
        taken.append(fp)
        break
  return prims


@dataclasses.dataclass
class Corridor:
  """One long corridor along +z (x in [x0, x1], z in [z0, z1]): the static scene and the people
  walking in it. Robots travel along z in [travel_lo, travel_hi], clear of crossing doors."""
  x0: float
  x1: float
  z0: float
  z1: float
  height: float
  static: list[Primitive]
  lights: list[Light]  # sorted by z
  walkers: list[tuple[float, float, float, float, int]]  # x, z at t = 0, speed along z, heading, seed
  walk_hi: float  # walkers stay below this z (the glass door)

  def scene(self, time_s: float, camera_xz: tuple[float, float]) -> Scene:
    """The corridor at time_s; walkers pace between the end walls and keep 1 m from the camera."""
    prims = list(self.static)
    lo, span = self.z0 + 1.0, self.walk_hi - self.z0 - 2.0
    for x, z, v, heading, seed in self.walkers:
      s = (z - lo + v * time_s) % (2 * span)
      zt = lo + (s if s < span else 2 * span - s)
      if math.hypot(x - camera_xz[0], zt - camera_xz[1]) > 1.0:
        prims += person(np.random.default_rng(seed), x, zt, heading if s < span else heading + math.pi)
    return Scene(prims, self.lights, ambient=0.3, nearest_lights=4)


def _corridor_materials(rng: np.random.Generator) -> dict[str, Material]:
  """floor, wall, ceiling, baseboard, glass and door-frame materials of one corridor."""
  return {
    'floor': Material('tiles', _rgb(rng, 0.45, 0.8, 0.1), scale=float(rng.choice([0.3, 0.5, 0.6])),
                      color2=_rgb(rng, 0.3, 0.5, 0.05), amp=0.05, seed=int(rng.integers(1 << 20))),
    'wall': Material('paint', _rgb(rng, 0.6, 0.9, 0.12), scale=0.8, amp=0.05, seed=int(rng.integers(1 << 20))),
    'ceiling': Material('tiles', (0.85, 0.85, 0.82), scale=0.6, color2=(0.5, 0.5, 0.5), amp=0.02),
    'base': Material('paint', _rgb(rng, 0.1, 0.35, 0.1), amp=0.02),
    'glass': Material('glass', (0.8, 0.9, 0.88), amp=0.0),
    'frame': Material('paint', _rgb(rng, 0.2, 0.5, 0.2), amp=0.02),
  }


def _ceiling_lights(rng: np.random.Generator, z0: float, z1: float,
                    height: float) -> tuple[list[Primitive], list[Light]]:
  """Fluorescent panels every ~3 m along the corridor's centre line, each with its light."""
  prims, lights = [], []
  z = z0 + 1.0
  while z < z1:
    prims.append(Quad(1, height - 0.01, (-0.3, height, z - 0.6), (0.3, height, z + 0.6), CEILING,
                      Material('emissive', (3.0, 3.0, 2.9), amp=0.02)))
    lights.append(Light((0.0, height - 0.05, z), (2.2, 2.2, 2.1)))
    z += rng.uniform(2.8, 3.4)
  return prims, lights


def _side_opening(side: str, xw: float, sgn: float, room: tuple[float, float, float, float], height: float,
                  wall_from: float, za: float, m: dict[str, Material]) -> list[Primitive]:
  """An opening 1.6 m wide from za, closed by a glass door, onto a room 3 m deep; with the wall
  (and its baseboard) from wall_from up to the opening."""
  zb, xr = za + 1.6, xw + sgn * 3.0
  prims = [Quad(0, xw, (xw, 0.0, wall_from), (xw, height, za), WALL, m['wall']),
           Quad(0, xw, (xw, 2.2, za), (xw, height, zb), WALL, m['wall']),
           Quad(0, xw, (xw, 0.0, za + 0.06), (xw, 2.2, zb - 0.06), MIRROR, m['glass'])]
  xs = (min(xw, xr), max(xw, xr))
  prims.append(Quad(0, xr, (xr, 0.0, za - 2.0), (xr, height, zb + 2.0), WALL, m['wall']))
  for zz in (za - 2.0, zb + 2.0):
    prims.append(Quad(2, zz, (xs[0], 0.0, zz), (xs[1], height, zz), WALL, m['wall']))
  prims.append(Quad(1, 0.0, (xs[0], 0.0, za - 2.0), (xs[1], 0.0, zb + 2.0), FLOOR, m['floor']))
  prims.append(Quad(1, height, (xs[0], height, za - 2.0), (xs[1], height, zb + 2.0), CEILING, m['ceiling']))
  prims.append(_wall_rect(side, room, wall_from, za, 0.0, 0.1, WALL, m['base'], offset=0.015))
  return prims


def _side_wall(rng: np.random.Generator, side: str, xw: float, sgn: float, room: tuple[float, float, float, float],
               height: float, z_door: float, m: dict[str, Material]) -> list[Primitive]:
  """One side wall of the corridor at x = xw (sgn: which way is outside) with what stands along
  it: glass-door openings, doors, notice boards, benches and bins."""
  x0, x1, z0, z1 = room
  prims = []
  wall_from = z0
  z = z0 + rng.uniform(1.0, 3.0)
  while z < z1 - 3.0:
    r = rng.random()
    if r < 0.12 and abs(z + 0.8 - z_door) > 2.5:
      prims += _side_opening(side, xw, sgn, room, height, wall_from, z, m)
      wall_from = z + 1.6
      z = wall_from + 2.5
    elif r < 0.5:
      door_m = Material('wood', _wood(rng), scale=0.01, amp=0.12, seed=int(rng.integers(1 << 20)))
      prims.append(_wall_rect(side, room, z, z + 1.0, 0.0, 2.1, DOOR, door_m))
      z += 1.0
    elif r < 0.65:
      prims.append(_wall_rect(side, room, z, z + 1.2, 1.0, 1.9, PICTURE,
                              Material('picture', (0.5, 0.5, 0.5), scale=0.3, seed=int(rng.integers(1 << 20))),
                              offset=0.02))
      z += 1.2
    elif r < 0.75:
      xb = x0 + 0.02 if side == 'left' else x1 - 0.47
      bench = Material('wood', _wood(rng), scale=0.01, amp=0.12)
      prims += _table(rng, xb, z, 0.45, 1.5, 0.45, CHAIR, bench)
      z += 1.5
    elif r < 0.83:
      xb = x0 + 0.25 if side == 'left' else x1 - 0.25
      prims.append(Cylinder(xb, z + 0.2, 0.2, 0.0, 0.7, OTHERPROP,
                            Material('paint', _rgb(rng, 0.1, 0.6, 0.6), amp=0.03)))
      z += 0.5
    z += rng.uniform(1.0, 4.0)
  prims.append(Quad(0, xw, (xw, 0.0, wall_from), (xw, height, z1), WALL, m['wall']))
  prims.append(_wall_rect(side, room, wall_from, z1, 0.0, 0.1, WALL, m['base'], offset=0.015))
  return prims


def _glass_double_door(x0: float, x1: float, z_door: float, height: float,
                       m: dict[str, Material]) -> list[Primitive]:
  """The glass double door across the corridor at z_door: posts, lintel and glass leaves."""
  return [Box((x0, 0.0, z_door), (x0 + 0.12, height, z_door + 0.08), DOOR, m['frame']),
          Box((x1 - 0.12, 0.0, z_door), (x1, height, z_door + 0.08), DOOR, m['frame']),
          Box((-0.03, 0.0, z_door), (0.03, 2.15, z_door + 0.08), DOOR, m['frame']),
          Box((x0, 2.15, z_door), (x1, height, z_door + 0.08), DOOR, m['frame']),
          Quad(2, z_door + 0.04, (x0 + 0.12, 0.0, 0), (x1 - 0.12, 2.15, 0), MIRROR, m['glass'])]


def corridor_scene(rng: np.random.Generator, length: float, people: int) -> Corridor:
  """A straight corridor 1.8-3 m wide whose robot path is z in [0, length]: painted walls with
  baseboards, wooden doors, side openings closed by glass doors onto rooms, notice boards,
  benches and bins, a glass double door across the corridor ~6-10 m past the path's end with more
  corridor behind it, linoleum tiles, ceiling tiles with fluorescent panels every ~3 m (uniform
  light), and `people` walkers."""
  width, height = rng.uniform(1.8, 3.0), rng.uniform(2.6, 3.1)
  z_door = length + rng.uniform(6.0, 10.0)
  x0, x1, z0, z1 = -width / 2, width / 2, -12.0, z_door + rng.uniform(4.0, 8.0)
  m = _corridor_materials(rng)
  lo, hi = (x0, 0.0, z0), (x1, height, z1)
  prims: list[Primitive] = [
    Quad(1, 0.0, lo, hi, FLOOR, m['floor']), Quad(1, height, lo, hi, CEILING, m['ceiling']),
    Quad(2, z0, lo, hi, WALL, m['wall']), Quad(2, z1, lo, hi, WALL, m['wall']),
  ]
  panels, lights = _ceiling_lights(rng, z0, z1, height)
  prims += panels
  for side, xw, sgn in (('left', x0, -1.0), ('right', x1, 1.0)):
    prims += _side_wall(rng, side, xw, sgn, (x0, x1, z0, z1), height, z_door, m)
  prims += _glass_double_door(x0, x1, z_door, height, m)
  walkers = []
  for _ in range(people):
    walkers.append((float(rng.uniform(x0 + 0.4, x1 - 0.4)), float(rng.uniform(z0 + 3, z_door - 1.0)),
                    float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.4)), float(rng.uniform(-math.pi, math.pi)),
                    int(rng.integers(1 << 30))))
  return Corridor(x0, x1, z0, z1, height, prims, lights, walkers, z_door - 1.0)
