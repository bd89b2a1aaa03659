"""Progress bars of model loads: shown on a terminal or on request, never in pipes and logs."""

import fcntl
import os
from pathlib import Path
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from vlm_perception.core import loading

ROOT = Path(__file__).resolve().parents[1]
# A fresh process: transformers reads the hub's bar state when it is first imported.
LOAD = """
import sys
import transformers
from vlm_perception.core.loading import load_hf_model
load_hf_model(transformers.OwlViTForObjectDetection, sys.argv[1], 'cpu', None, 'test')
"""
BAR = 'Loading weights'
TIMEOUT_S = 120.0


def load_in_child(model: Path, progress: str | None, tty: bool) -> str:
    """Load a model in a child process; return its stderr (a pipe, or a pty as launch gives)."""
    env = {key: value for key, value in os.environ.items()
           if key not in (loading.PROGRESS_ENV, 'HF_HUB_DISABLE_PROGRESS_BARS')}
    if progress is not None:
        env[loading.PROGRESS_ENV] = progress
    command = [sys.executable, '-c', LOAD, str(model)]
    if not tty:
        done = subprocess.run(command, cwd=ROOT, env=env, stderr=subprocess.PIPE,
                              timeout=TIMEOUT_S)
        assert done.returncode == 0, done.stderr.decode(errors='replace')
        return done.stderr.decode(errors='replace')
    leader, follower = os.openpty()
    # a terminal's size: launch's pty has none, and tqdm then draws 0-column (empty) bars
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 80, 0, 0))
    with os.fdopen(leader, 'rb', buffering=0) as terminal:
        try:
            child = subprocess.Popen(command, cwd=ROOT, env=env, stderr=follower)
        finally:
            os.close(follower)  # keep only the child's end: reads end (EIO) once it exits
        chunks = []
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if not select.select([terminal], [], [], 1.0)[0]:
                continue
            try:
                chunk = terminal.read(4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        stderr = b''.join(chunks).decode(errors='replace')
        assert child.wait(timeout=TIMEOUT_S) == 0, stderr
    return stderr


@pytest.mark.parametrize(('progress', 'tty', 'shown'), [
    (None, False, False),  # logs, pipes, tests: no bars by default
    ('1', False, True),    # asked for
    (None, True, True),    # a user at a terminal sees load and download progress
    ('0', True, False),    # what the launch file sets: its pty is not a user's terminal
])
def test_bars_follow_the_switch_else_whether_stderr_is_a_terminal(
        tiny_models: dict, progress: str | None, tty: bool, shown: bool) -> None:
    stderr = load_in_child(tiny_models['detector'], progress, tty)
    assert (BAR in stderr) == shown, stderr
    if not shown:  # not even the bare carriage returns launch prints as empty lines
        assert '\r' not in stderr.replace('\r\n', '\n'), repr(stderr)


def bar_state() -> tuple[bool, bool]:
    """Whether transformers' and the hub's bars are on, in this process."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    return hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()


def test_a_load_hides_the_bars_and_restores_the_state_it_found(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_PROGRESS_BARS', None)  # no user choice
    monkeypatch.setenv(loading.PROGRESS_ENV, '0')
    before = bar_state()
    with loading.progress_bars():
        assert bar_state() == (False, False)
    assert bar_state() == before


def test_the_hubs_own_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_PROGRESS_BARS', False)  # the user: show
    monkeypatch.setenv(loading.PROGRESS_ENV, '0')
    before = bar_state()
    with loading.progress_bars():
        assert bar_state() == before


@pytest.mark.parametrize(('value', 'shown'), [
    ('1', True), ('true', True), ('0', False), ('off', False), ('no', False)])
def test_switch_values(monkeypatch: pytest.MonkeyPatch, value: str, shown: bool) -> None:
    monkeypatch.setenv(loading.PROGRESS_ENV, value)
    assert loading.show_progress() == shown
