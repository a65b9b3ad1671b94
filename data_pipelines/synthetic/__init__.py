"""Synthetic two-domain data in the real on-disk layouts (docs/data.md), deterministic per seed.

  python -m data_pipelines.synthetic --out DIR [--seed S] [--size tiny|small|default|demo] [--workers N]

Scenes are ray-cast (`scenes.py`) so RGB, depth and labels agree, and depth can be
learnt from appearance (perspective, Lambertian shading with light falloff, world-space textures,
real object sizes). Under DIR:

- `nyu/nyu_cache/{rgb,depth,seg}/{i:05d}.{png,npy,npy}` + `train_indices.txt` / `val_indices.txt`
  (`random.Random(42).shuffle`, first 80 % train): NYU-like rooms at 640x480 with Kinect intrinsics,
  depth mostly 1-4 m, furniture, people, mirrors, pictures (all six classes); depth float32 m with
  Kinect noise, disparity quantisation and holes (0: projector shadows, mirrors, windows, screens,
  grazing surfaces, depth edges, speckle); labels int32 raw NYU40 ids with 0 (unlabelled) on part of
  the label boundaries and on some small props.
- `nyu/teacher/manifest.jsonl` + `da3_depth/{stem}.npy` (DA3-like: the true depth resized to
  504x378, times a per-frame scale exp(N(0, 0.05^2)), times 1 + N(0, 0.02^2) per pixel) and
  `sam2_seg/{stem}_sam2_seg.npy` (SAM2-like: the true 6-class map, uint8, whose pixels are resampled
  at a smooth random offset of at most 3 px, so it differs from the truth only within 3 px of a
  class boundary). A few lines have `null` for one of them.
- `lilocbench_raw/dynamics_0/camera_{back,front,left,right}/`: one robot driving down a long
  corridor (long parallel walls, fluorescent panels every ~3 m, walkers, glass doors) with four
  D455-like cameras (640x480, fx ~386, depth range 15 m) looking back, ahead, left and right;
  colour and uint16-mm depth PNGs named by timestamp, the alternative folder names and the three
  `intrinsics.yaml` forms (and one camera without it, so the D455 default applies);
  `extraction_truth.json`: what a correct 2 Hz extraction keeps, skips and drops, built from the
  timing design below, not by running the extractor.
- `lilocbench/`: the raw sequence extracted by `data_pipelines.lilocbench.extract`, plus DA3-like
  `da3_depth/` and SAM2-like `seg/` (keys `da3_depth`, `seg` in `manifest.jsonl`).
- `corridor/manifest.jsonl`: a Femto-Bolt-like deployment set in another corridor, 1280x720
  (fx 605), depth float32 m with ~78 % invalid ToF pixels, `confidence` float32 in [0, 1],
  `da3_depth` (672x378) and `sam2_seg`.
- `synthetic_info.json`: seed, size, counts, intrinsics and measured statistics.

Raw LILocBench timing design. Rendering every 15 Hz frame of a sequence long enough for ~200 frames
at 2 Hz would take minutes, so the raw sequence holds only short bursts of colour frames around each
2 Hz sample (1-3 frames on the 15 Hz grid, bursts ~0.53 s apart), each colour frame with a depth
frame jittered by up to 20 ms, plus now and then an orphan depth frame between bursts. Burst kinds:
`normal` (keep the first frame, skip the next: < 0.5 s), `drop` (the first colour frame has no depth
frame within 50 ms; keep the second), `edge` (a colour frame whose nearest depth frame is exactly
50 ms away: dropped; the next one's is 49.999999999 ms away, 1 ns nearer than the other candidate:
kept), `exact` (a frame 499.999999999 ms after the last kept one: skipped; one exactly 500 ms
after: kept) and `lost` (no depth within 50 ms: the sample yields no frame). The edge cases need
nanosecond arithmetic. Each camera's second burst is of a special kind so that even `tiny` holds
all of them. Frames of one burst share one render (the robot moves ~5 cm in 1/15 s) with fresh
sensor noise, so every file differs. The extraction's ground truth follows from this design
(`generator.plan`), checked against its own rules, not from running the extractor.

Sizes (frames): tiny = 5 NYU, 4 cameras x 2 samples, 1 corridor (seconds, one process, for tests);
small = 16, 4 x 16, 4; default = 48 NYU (38 train), 4 x 50 samples (~190 frames, ~150 train: NYU :
LILocBench train ~ 1 : 4), 16 corridor frames (about a minute on 2 cores, ~1.1 GB); demo (`make
demo`) = default with 200 NYU rooms (160 train, 40 validation): a network trained from scratch on
38 rooms learns those rooms, not rooms (docs/decisions.md).
"""

from data_pipelines.synthetic.generator import SIZES
from data_pipelines.synthetic.generator import Size
from data_pipelines.synthetic.generator import generate
from data_pipelines.synthetic.generator import main
from data_pipelines.synthetic.generator import plan

__all__ = ['SIZES', 'Size', 'generate', 'main', 'plan']
