"""Default configuration: every key (docs/config.md) with the V5 recipe's values.

Presets (`quickstart.py`, `v5.py`, `v7.py`, `v8.py`, `v9.py`) import this and change a few fields.
Paths left empty are derived from `data.root` (see `data_pipelines.datasets.resolve_paths`).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  # efficientvit_b0 | efficientvit_b1 | efficientvit_b2 | efficientvit_b3 | mobilenet_v3_small
  c.model.backbone = 'efficientvit_b1'

  c.data = ml_collections.ConfigDict()
  c.data.root = 'data'  # the data root (docs/data.md): nyu/, lilocbench/, lilocbench_raw/, corridor/
  c.data.nyu = ml_collections.ConfigDict()
  c.data.nyu.root = ''  # '' = ROOT/nyu (holds nyu_cache/)
  c.data.nyu.teacher_manifest = ''  # '' = <nyu.root>/teacher/manifest.jsonl if present; 'none' = no teacher
  c.data.nyu.class_mapping = ''  # path to classMapping40.mat, needed for raw 894-class labels
  c.data.lilocbench = ml_collections.ConfigDict()
  c.data.lilocbench.manifest = ''  # '' = ROOT/lilocbench/manifest.jsonl
  c.data.corridor = ml_collections.ConfigDict()
  c.data.corridor.manifest = ''  # '' = ROOT/corridor/manifest.jsonl
  c.data.mode = 'nyu'  # nyu | lilocbench | joint | downsample | concat
  c.data.weights = ml_collections.ConfigDict({'nyu': 0.5, 'lilocbench': 0.5})
  c.data.input_size = (240, 320)
  c.data.format = 'files'  # files | decoded (`python -m data_pipelines.decoded`) | tfds
  c.data.decoded_dir = ''  # '' = ROOT/decoded
  c.data.tfds_dir = ''  # '' = ROOT/tfds; a file system path (a gcsfuse mount for a bucket, not gs://)
  c.data.color_jitter = ml_collections.ConfigDict({'nyu': True, 'lilocbench': False})
  c.data.nyu_crop = True  # the reference's random crop at native scale; False: resize NYU frames whole
  c.data.eval_sets = ('nyu',)  # validation sets evaluated during training: nyu, lilocbench, corridor
  c.data.num_threads = 8  # grain ReadOptions.num_threads per process
  c.data.num_workers = 0  # > 0: grain worker processes (mp_prefetch), each with num_threads threads
  c.data.prefetch_buffer_size = 32
  c.data.skip_bad_frames = False  # True: skip (and count) unreadable frames instead of failing

  c.batch_size = 16  # global, over all processes and devices
  c.seed = 0
  c.num_epochs = 200
  c.num_train_steps = 0  # > 0 overrides num_epochs
  c.log_every_steps = 50
  c.eval_every_steps = 0  # 0 = evaluate at the end only
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.best_metric = 'val/nyu/rmse'  # any val/<set>/<metric>; errors and losses lower, deltas and IoUs higher
  c.init_from = ''  # checkpoint folder, workdir or .pt whose weights start the run
  c.requires_init_from = False  # sequential/joint protocols (V7-V9) refuse to start from scratch
  c.freeze_encoder_epochs = 5
  c.freeze_bn_when_frozen = False

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.encoder_lr = 3e-5
  c.optimizer.decoder_lr = 3e-4
  c.optimizer.kendall_lr = 1e-4
  c.optimizer.weight_decay = 1e-4
  c.optimizer.clip_norm = 1.0
  c.optimizer.warmup_steps = 0
  c.optimizer.lr_per_epoch = False  # True: the reference's per-epoch cosine

  c.loss = ml_collections.ConfigDict()
  c.loss.use_kendall = True
  c.loss.lambda_depth = 1.0
  c.loss.lambda_seg = 1.0
  c.loss.lambda_edge = 0.1

  c.compute_dtype = 'float32'  # float32 | bfloat16
  # JAX's persistent compilation cache: '' = ~/.cache/efficientvit_jax/xla (or $JAX_COMPILATION_CACHE_DIR),
  # 'none' = off. A resumed run on a warm cache does not recompile the network.
  c.compilation_cache_dir = ''
  return c
