"""`python -m data_pipelines.preview`: JSONL per global batch, summary, grid."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def root(synthetic_tiny):
  return str(synthetic_tiny)


def test_preview_writes_jsonl_summary_and_grid(root, tmp_path):
  out, grid = tmp_path / 'b.jsonl', tmp_path / 'grid.png'
  cmd = [sys.executable, '-m', 'data_pipelines.preview', '--config', 'configs/quickstart.py',
         f'--config.data.root={root}', '--config.batch_size=4', '--config.data.num_threads=2',
         '--batches', '3', '--out', str(out), '--grid', str(grid)]
  res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert res.returncode == 0, res.stderr[-2000:]
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert [l['step'] for l in lines] == [0, 1, 2]
  assert all(sorted(l['domain']) == [0, 0, 1, 1] and len(l['index']) == 4 for l in lines)
  assert 'share' in res.stdout and 'target depth' in res.stdout and 'classes' in res.stdout
  assert grid.stat().st_size > 1000
  # A typo in a config key fails (lock_config).
  res = subprocess.run(cmd[:5] + ['--config.data.rot=x', '--out', str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert res.returncode != 0
