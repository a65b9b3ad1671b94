"""Multi-process start-up (`parallel.initialize_distributed`) in each cluster environment, with
`jax.distributed.initialize` replaced by a recorder: what start-up does when the environment's
variables say a cluster is there, and what JAX's own detection derives from them. The processes
themselves are tested in tests/test_multiprocess.py."""

import os
import sys
import types

import jax
import pytest
from jax._src import clusters
from jax._src.clusters import cloud_tpu_cluster

from efficientvit_jax import parallel

CLUSTER_VARIABLES = ('SLURM_', 'OMPI_', 'TPU_', 'MEGASCALE_', 'KUBERNETES_', 'JOB_COMPLETION_INDEX',
                     'JAX_COORDINATOR')


@pytest.fixture
def started(monkeypatch):
  """The calls start-up makes to jax.distributed.initialize, in an environment without a cluster."""
  for name in list(os.environ):
    if name.startswith(CLUSTER_VARIABLES):
      monkeypatch.delenv(name)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *args, **kwargs: calls.append(args))
  return calls


def _detected():
  """What jax.distributed.initialize() itself would start with here: (coordinator, processes, id, local devices)."""
  return clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, 5)


def _slurm(monkeypatch, tasks, procid):
  for name, value in (('SLURM_JOB_ID', '4242'), ('SLURM_STEP_NODELIST', 'node[007-010]'), ('SLURM_NTASKS', tasks),
                      ('SLURM_PROCID', procid), ('SLURM_LOCALID', '1')):
    monkeypatch.setenv(name, value)


def test_no_cluster_and_no_flags_is_one_process(started):
  assert parallel.initialize_distributed() == '' and started == []
  assert parallel.detect_cluster() is None


def test_slurm_is_started_by_jax_own_detection(started, monkeypatch):
  _slurm(monkeypatch, '4', '2')
  assert parallel.initialize_distributed() == 'slurm'
  assert started == [(None, None, None)]  # every parameter left to jax's detection
  assert _detected() == (f'node007:{4242 % 4096 + 61440}', 4, 2, [1])


def test_flags_override_what_a_cluster_says(started, monkeypatch):
  _slurm(monkeypatch, '4', '2')
  assert parallel.initialize_distributed('10.0.0.1:5000') == 'slurm'  # the rest from SLURM
  assert parallel.initialize_distributed('10.0.0.1:5000', 2, 1) == 'flags'
  assert started == [('10.0.0.1:5000', None, None), ('10.0.0.1:5000', 2, 1)]
  assert parallel.initialize_distributed(num_processes=1) == ''  # one process, inside the cluster
  assert len(started) == 2


def test_a_cluster_of_one_process_runs_as_one_process(started, monkeypatch):
  _slurm(monkeypatch, '1', '0')
  assert parallel.initialize_distributed() == '' and started == []


def test_open_mpi(started, monkeypatch):
  for name, value in (('OMPI_MCA_orte_hnp_uri', '1531576320.0;tcp://10.1.2.3:41321'), ('OMPI_COMM_WORLD_SIZE', '2'),
                      ('OMPI_COMM_WORLD_RANK', '1'), ('OMPI_COMM_WORLD_LOCAL_RANK', '1')):
    monkeypatch.setenv(name, value)
  assert parallel.initialize_distributed() == 'ompi'
  assert started == [(None, None, None)]
  address, count, process, local = _detected()
  assert address.startswith('10.1.2.3:') and (count, process, local) == (2, 1, [1])


def test_cloud_tpu_on_gke(started, monkeypatch):
  monkeypatch.setattr(cloud_tpu_cluster, 'running_in_cloud_tpu_vm', True)  # what libtpu + TPU chips set at import
  monkeypatch.setenv('TPU_SKIP_MDS_QUERY', '1')  # no GCE metadata server here
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'tpu-0,tpu-1,tpu-2,tpu-3')
  monkeypatch.setenv('TPU_WORKER_ID', '3')
  monkeypatch.setenv('MEGASCALE_NUM_SLICES', '1')  # one slice (else read from the metadata server)
  monkeypatch.setenv('MEGASCALE_SLICE_ID', '0')
  assert parallel.initialize_distributed() == 'gketpu'
  assert started == [(None, None, None)]
  env = parallel.detect_cluster()
  assert (env.get_process_count(), env.get_process_id()) == (4, 3)


def test_kubernetes_job(started, monkeypatch):
  # jax detects Kubernetes through the `kubernetes` package (not installed here): a stand-in.
  fake = types.ModuleType('kubernetes')
  fake.config = types.SimpleNamespace(load_incluster_config=lambda: None)
  fake.client = types.SimpleNamespace(CoreV1Api=object, BatchV1Api=object,
                                      exceptions=types.SimpleNamespace(ApiException=Exception))
  monkeypatch.setitem(sys.modules, 'kubernetes', fake)
  monkeypatch.setenv('KUBERNETES_SERVICE_HOST', '10.96.0.1')
  k8s = parallel.detect_cluster()
  assert parallel.cluster_name(k8s) == 'k8s'
  monkeypatch.setattr(k8s, 'get_process_count', classmethod(lambda cls: 8))  # the Job's parallelism
  assert parallel.initialize_distributed() == 'k8s' and started == [(None, None, None)]


def test_incomplete_flags_outside_a_cluster_name_the_missing_ones(started):
  with pytest.raises(ValueError, match=r'--coordinator_address needs --num_processes and --process_id'):
    parallel.initialize_distributed('127.0.0.1:1234')
  with pytest.raises(ValueError, match=r'--num_processes needs --coordinator_address and --process_id'):
    parallel.initialize_distributed(num_processes=2)
  with pytest.raises(ValueError, match=r'--process_id must be in 0\.\.1, got 2'):
    parallel.initialize_distributed('127.0.0.1:1234', 2, 2)
  assert started == []


def test_a_failing_start_up_is_one_line(monkeypatch, started):
  def refuse(*args):
    raise RuntimeError('DEADLINE_EXCEEDED: Barrier timed out. Id: [Init]Wait_for_all_tasks_to_register\nmore')

  monkeypatch.setattr(jax.distributed, 'initialize', refuse)
  with pytest.raises(ValueError) as e:
    parallel.initialize_distributed('127.0.0.1:1234', 2, 0)
  assert '\n' not in str(e.value) and 'cannot reach the coordinator at 127.0.0.1:1234' in str(e.value)
  assert 'DEADLINE_EXCEEDED' in str(e.value)


def test_one_process_shares_and_stops_locally():
  assert not parallel.is_multiprocess()
  assert parallel.share('x', {'step': 3}) == {'step': 3}
  assert parallel.stop_all(2, 'bad') == 2
  parallel.barrier('nothing to wait for')
  assert parallel.reached_preemption(5) is False
