"""``vlm-perception bag`` and ``bag-shapes`` as processes: output, errors, Ctrl-C mid-run."""

import json
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from bag_checks import message_rows, read_bag  # noqa: I100
from vlm_perception.bag.shapes import record_shapes, ShapesRecording
from vlm_perception.bag.typestore import load_types

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
SMALL = ['--width', '96', '--height', '64']


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'vlm_perception.cli', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope='module')
def types():
    return load_types()


def test_bag_shapes_then_bag_writes_the_engines_detections(tiny_preset: Path, tmp_path: Path,
                                                           types) -> None:
    recorded = _cli('bag-shapes', str(tmp_path / 'shapes'), '--frames', '5', '--storage',
                    'sqlite3', '--seed', '7', '--namespace', 'cam', '--json', *SMALL)
    assert recorded.returncode == 0, recorded.stderr
    assert json.loads(recorded.stdout)['written'] == {
        '/cam/image': 5, '/cam/camera_info': 5, '/cam/depth': 5, '/cam/ground_truth': 5}
    done = _cli('bag', str(tmp_path / 'shapes'), '--out', str(tmp_path / 'seen'), '--preset',
                str(tiny_preset), '--device', 'cpu', '--capabilities', 'detect,tags',
                '--storage', 'mcap')
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[0]
    assert summary.startswith('5 of 5 frames in ') and 'frames/s' in summary
    assert '/cam/detections 5, /cam/scene 1, /cam/scene_text 1 and 4 input topics' in summary
    assert re.search(r'5/5 \[', done.stderr)  # the progress bar, at its end
    result = read_bag(tmp_path / 'seen', types)
    assert len(result['/cam/detections']) == 5 and all(
        message_rows(array) for _, array, _ in result['/cam/detections'])
    assert (tmp_path / 'seen' / 'seen.mcap').is_file()


@pytest.mark.parametrize('make, message', [
    (lambda path: path, 'no bag at'),
    (lambda path: (path.mkdir(), path)[1], 'cannot read bag'),
])
def test_a_bad_bag_is_one_line_and_exit_1(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path / 'bag')
    done = _cli('bag', str(path), '--out', str(tmp_path / 'out'), '--device', 'cpu')
    assert done.returncode == 1 and done.stdout == ''
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('vlm-perception: error: ')
    assert message in lines[0] and str(path) in lines[0]


class _Output:
    """A process's stream read on a thread of its own (progress bars write no newline)."""

    def __init__(self, stream) -> None:
        self.text = ''
        self._stream = stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            chunk = os.read(self._stream.fileno(), 4096)
            if not chunk:
                return
            self.text += chunk.decode(errors='replace')

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f'no {pattern!r} in time; output so far:\n{self.text}')

    def rest(self) -> str:
        self._thread.join(10)
        return self.text


def test_ctrl_c_mid_run_leaves_a_valid_bag_of_the_frames_done(tiny_preset: Path, tmp_path: Path,
                                                              types) -> None:
    frames = 400  # far more than are done before the signal lands
    record_shapes(tmp_path / 'shapes', ShapesRecording(frames=frames, width=96, height=64),
                  types)
    process = subprocess.Popen(
        [sys.executable, '-m', 'vlm_perception.cli', 'bag', str(tmp_path / 'shapes'), '--out',
         str(tmp_path / 'seen'), '--preset', str(tiny_preset), '--device', 'cpu',
         '--capabilities', 'detect', '--json'],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = _Output(process.stdout), _Output(process.stderr)
    try:
        stderr.wait_for(rf'[1-9]\d*/{frames} \[', timeout=120)  # a first frame done
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            process.kill()
    report = json.loads(stdout.rest())
    assert 'stopping after the frame in progress' in stderr.rest()
    assert report['interrupted'] and 0 < report['frames'] < frames
    result = read_bag(tmp_path / 'seen', types)  # a complete recording: metadata and index
    done = report['frames']
    assert len(result['/detections']) == len(result['/image']) == done
    assert report['written']['/detections'] == done
    assert [log_ns for log_ns, _, _ in result['/detections']] == \
        [log_ns for log_ns, _, _ in result['/image']]
