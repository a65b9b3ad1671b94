"""Runs a script (`python tests/one_cache_key.py train.py ARGS...`) with JAX's persistent
compilation-cache key made the same in every process of a multi-process CPU run (tests only).

In jax 0.10 the key of a program spanning several processes holds the CPU topology's fingerprint,
which differs from process to process, and only process 0 writes the cache: every other process
compiled the train step anew in every test run (minutes on 2 cores). Here the fingerprint is
replaced by each device's kind, id and process, which every process of one run shares and which
still tell topologies apart (1 process of 2 devices from 2 processes of 1). The compiled program
is unchanged: JAX's own `jax_share_binary_between_hosts` hands process 0's executables to the
other processes in the same way.
"""

import os
import runpy
import sys

from jax._src import cache_key


def _hash_devices(hash_obj, devices):
  for device in devices.flat:
    cache_key._hash_string(hash_obj, f'{device.device_kind}:{device.id}:{device.process_index}')


cache_key._hash_accelerator_config = _hash_devices

if __name__ == '__main__':
  script = os.path.abspath(sys.argv[1])
  sys.argv = sys.argv[1:]
  sys.path[0] = os.path.dirname(script)
  runpy.run_path(script, run_name='__main__')
