"""The benchmark (`make bench`) runs end to end on the tiny preset and writes its JSON report."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ros]

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

ROOT = Path(__file__).resolve().parents[1]
CASE_FIELDS = ('name', 'engine_fps', 'camera_hz', 'node_fps', 'ratio', 'target_ratio',
               'age_p50_ms', 'age_p95_ms', 'bound_ms', 'node_input_hz', 'repeats')


def test_bench_reports_engine_and_node_rates(tiny_preset, tmp_path: Path) -> None:
    """One short repeat of a raw and a JPEG case: every field present, both rates measured."""
    run = subprocess.run(
        [sys.executable, '-m', 'vlm_perception.ros.bench', '--preset', str(tiny_preset),
         '--case', 'raw-reliable', '--case', 'compressed-best_effort', '--seconds', '2',
         '--warmup', '0.5', '--repeats', '1', '--frames', '4', '--rate', '15', '--threads', '1',
         '--out', str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / 'bench.json').read_text())
    assert report['failures'] == []
    assert report['meta']['node_py_sha256']
    assert [case['name'] for case in report['cases']] == [
        'tiny_preset/raw-reliable', 'tiny_preset/compressed-best_effort']
    for case in report['cases']:
        for name in CASE_FIELDS:
            assert name in case, name
        [repeat] = case['repeats']
        assert len(case['engine_windows']) == 2  # one before the node window, one after
        assert all(window['frames'] >= 1 for window in case['engine_windows'])
        assert repeat['engine_windows'] == [0, 1] and repeat['engine_fps'] > 0
        assert repeat['node']['processed'] >= 1 and case['node_fps'] > 0
        assert case['camera_hz'] == pytest.approx(15, rel=0.2)
        assert case['age_p50_ms'] > 0 and case['bound_ms'] > 1000 / 15
        assert case['node_stop']['status'] == 0 and not case['node_stop']['traceback']
        assert case['name'] in run.stdout  # the table
