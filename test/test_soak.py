"""The soak benchmark (`make soak`): its summary's arithmetic, and a short real run."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

from vlm_perception.ros.soak import summarize

ROOT = Path(__file__).resolve().parents[1]


def _sample(t_s: float, rss_mb: float, fps: float) -> dict:
    return {'t_s': t_s, 'rss_mb': rss_mb, 'fps': fps, 'camera_hz': 30.0, 'idle_hz': 30.0,
            'age_ms_p95': 50.0, 'cpu_cores': {'node': 1.0, 'others': 0.1}, 'processed': 1}


def test_summary_fits_growth_after_the_warmup() -> None:
    """Warm-up samples count for the max only; growth per 10 min is the slope of the fit."""
    samples = [_sample(10, 900.0, 1.0), _sample(20, 500.0, 2.0)]  # warm-up: a spike
    samples += [_sample(t, 400.0 + 0.05 * t + (1.0 if t == 60 else 0.0), 10.0 + t / 10)
                for t in range(30, 100, 10)]
    summary = summarize(samples, warmup=30.0,
                        requests={'query': {'sent': 3, 'answered': 3, 'succeeded': 2}})
    assert summary['samples_after_warmup'] == 7
    assert summary['rss_first_mb'] == pytest.approx(401.5)
    assert summary['rss_last_mb'] == pytest.approx(404.5)
    assert summary['rss_max_mb'] == 900.0
    assert summary['rss_growth_mb'] == pytest.approx(3.0)
    assert summary['rss_growth_per_10min_mb'] == pytest.approx(30.0, abs=0.5)
    assert summary['node_fps_min'] == pytest.approx(13.0)
    assert summary['node_fps_median'] == pytest.approx(16.0)
    assert (summary['query_sent'], summary['query_answered'], summary['question_sent']) == (
        3, 3, 0)


@pytest.mark.slow
@pytest.mark.ros
def test_soak_samples_rss_rates_and_requests(tiny_preset, tmp_path: Path) -> None:
    """Half a minute on the tiny preset: every sample has RSS and rates; every request a reply."""
    pytest.importorskip('rclpy')
    pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')
    out = tmp_path / 'soak.json'
    run = subprocess.run(
        [sys.executable, '-m', 'vlm_perception.ros.soak', '--preset', str(tiny_preset),
         '--minutes', '0.5', '--interval', '5', '--warmup', '10', '--request-period', '3',
         '--rate', '15', '--frames', '4', '--threads', '1', '--out', str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report['failures'] == []
    assert report['meta']['node_py_sha256']
    samples = report['samples']
    assert [sample['t_s'] for sample in samples] == pytest.approx([5, 10, 15, 20, 25, 30],
                                                                  abs=1.0)
    for sample in samples:
        assert sample['rss_mb'] > 0 and sample['threads'] > 0 and sample['fds'] > 0
        assert sample['camera_hz'] == pytest.approx(15, rel=0.2)
    assert sum(sample['processed'] for sample in samples) > 0
    summary = report['summary']
    assert summary['samples_after_warmup'] == 5
    assert summary['rss_first_mb'] > 0 and summary['rss_growth_per_10min_mb'] is not None
    assert summary['node_fps_median'] > 0
    for kind in ('query', 'question'):
        assert summary[f'{kind}_sent'] >= 3
        assert summary[f'{kind}_answered'] == summary[f'{kind}_sent']
        assert summary[f'{kind}_succeeded'] == summary[f'{kind}_sent']
    assert report['node_stop']['status'] == 0 and not report['node_stop']['traceback']
    assert 'answered/sent' in run.stdout and 'MB per 10 min' in run.stdout  # table, summary
