"""Trains the depth + segmentation network: the `evit-train` command (`python train.py` in a
checkout), the command line of `efficientvit_jax.train_loop`.

  evit-train --config v8 --workdir W [--config.key=value ...]

--config: a preset's name (`efficientvit_jax/configs/`: default, quickstart, v5, v5_b2, v7, v8, v9)
or a config file of your own.

Rerunning the same command in the same workdir resumes from its latest checkpoint, exactly. The
start is, in this order: the workdir's own latest checkpoint, else `init_from` (weights, BatchNorm
statistics and Kendall log-sigmas; fresh optimiser and schedule), else random initialisation.
Outputs in W: `config.json`, `metrics.jsonl`, `tb/` (TensorBoard), `checkpoints/` (latest steps,
with optimiser and data state), `best/` (the best step by `best_metric`), `train.lock` (held by
process 0 while it trains: one writer per workdir). SIGTERM or SIGINT while training saves the
current step and exits 0; before (start-up, compilation) it exits at once.

Exit codes: 0 done (or preempted and saved), 2 bad flags, config, data or workdir (one `error:`
line naming it), 1 a run that failed on the way (non-finite loss, failed save or restore),
128 + signal.

Several processes (hosts, or local CPU processes for testing): pass `--coordinator_address`,
`--num_processes`, `--process_id` to each, or nothing inside a cluster that
`jax.distributed.initialize()` detects (Cloud TPU, SLURM, Open MPI, Kubernetes). They end
together: an error on one stops every process at once with its exit code; SIGTERM to any of them
(from the moment they are connected) saves the same step on all and exits 0.
"""

import atexit
import os
import pathlib
import signal
import sys
import traceback

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from efficientvit_jax import console
from efficientvit_jax import parallel

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training configuration: a preset name (quickstart, v8, ...) or a config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, logs, metrics.')
_DISTRIBUTED = parallel.define_distributed_flags()  # --coordinator_address, --num_processes, --process_id
flags.adopt_module_key_flags(parallel)
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Check the flags, the config and the data, print the plan, exit.')
_VERBOSE = flags.DEFINE_bool('verbose', False,
                             "Also show the INFO log records, ours and the libraries' (orbax, grain, JAX).")
flags.mark_flags_as_required(['config', 'workdir'])


def _interrupted(signum, _):
  """SIGTERM or SIGINT outside the training steps (start-up, restore, compilation): exit at once,
  with several processes all of them.

  (During the steps `train_and_evaluate(catch_signals=True)` turns them into a save and a clean
  stop; with several processes JAX's preemption notifier holds SIGTERM from the start-up on.)
  Raising instead would be swallowed where the signal lands in a finaliser or a garbage-collection
  callback. Everything written so far is written atomically, so this is as safe as SIGKILL."""
  message = (f'stopped by {signal.Signals(signum).name}; steps after the last checkpoint (if any) are not saved; '
             'rerun the same command to continue')
  code = parallel.stop_all(128 + signum, message)
  console.line(f'error: {message}', sys.stderr)
  parallel.exit_now(code)  # releases the workdir lock (parallel.at_stop)


def _fail(code: int, message: str) -> int:
  """Prints the one `error:` line; with several processes, stops every process with one code (the
  first process to fail decides it) at once."""
  code = parallel.stop_all(code, message)
  console.line(f'error: {message}', sys.stderr)
  if parallel.is_multiprocess():
    parallel.exit_now(code)
  return code


def run_main(argv) -> int:
  """`main`, with failures that orbax's background threads would delay turned into a prompt exit."""
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, _interrupted)
  try:
    code = main(argv)
  except ImportError as e:  # a missing extra (torch for a .pt init_from, tensorflow-datasets for tfds)
    from efficientvit_jax import runtime

    if runtime.missing_extra(e) is None:
      raise
    return _fail(2, runtime.missing_extra(e))
  except Exception:  # an internal error: its traceback, and the other processes stop too
    if parallel.is_multiprocess():
      traceback.print_exc()
      parallel.exit_now(parallel.stop_all(1, 'internal error (see the traceback of that process)'))
    raise
  if code == 1:  # a failed save can leave orbax threads waiting for their timeout: do not wait
    atexit._run_exitfuncs()  # the workdir lock, log flushes
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  return code


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Imports after absl parsed the flags: grain's worker processes need them parsed.
  from efficientvit_jax import checkpointing
  from efficientvit_jax import config_checks
  from efficientvit_jax import runtime
  from efficientvit_jax import train_loop

  console.setup(_VERBOSE.value)
  config = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value).absolute()
  try:
    cluster = parallel.initialize_distributed(**{name: holder.value for name, holder in _DISTRIBUTED.items()})
  except ValueError as e:  # before the processes are connected: each reports its own
    print(f'error: {e}', file=sys.stderr)
    return 2
  if cluster:
    parallel.start_watchdog()  # from here on, a process that fails stops the others at once
    console.line(f'process {jax.process_index()} of {jax.process_count()} ({cluster})')  # and where it runs
    # JAX's preemption sync point stops every process at the largest step any of them reported + 1:
    # reporting the workdir's newest step now keeps a SIGTERM during start-up from being missed.
    parallel.reached_preemption(max(checkpointing.finished_steps(workdir / 'checkpoints'), default=0))
  try:  # train_and_evaluate checks it too; here before the workdir lock and compilation cache
    config_checks.check_config(config)
  except ValueError as e:
    return _fail(2, str(e))
  cache = runtime.enable_compilation_cache(config.compilation_cache_dir)
  logging.info('compilation cache: %s', cache or 'off')
  if not _DRY_RUN.value and jax.process_index() == 0:  # one writer per workdir, until exit
    lock = checkpointing.WorkdirLock(workdir)
    try:
      lock.acquire()
      atexit.register(lock.release)
      parallel.at_stop(lock.release)
      checkpointing.check_writable(workdir / 'checkpoints')  # now, not at the first save
    except (checkpointing.LockError, OSError) as e:
      return _fail(2, str(e) if isinstance(e, checkpointing.LockError) else f'cannot write the workdir: {e}')
  try:
    train_loop.train_and_evaluate(config, workdir, dry_run=_DRY_RUN.value, catch_signals=True)
  except train_loop.UserError as e:
    return _fail(2, str(e))
  except train_loop.RunError as e:
    return _fail(1, str(e))
  parallel.barrier('done')  # several processes: done together, or stopped by the one that failed
  return 0


def run():
  """The `evit-train` command."""
  from efficientvit_jax import host_memory  # before JAX starts its CPU threads

  host_memory.retain_freed_memory_on_cpu_hosts()
  from efficientvit_jax import config_checks

  config_checks.help_of(__name__, __doc__)
  app.run(lambda argv: sys.exit(run_main(argv)), flags_parser=config_checks.parse_flags)


if __name__ == '__main__':
  run()
