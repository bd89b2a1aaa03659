"""Helpers of the node graph tests: run a node in its own process and talk to it with rclpy."""

from contextlib import contextmanager
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Optional

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image
from std_msgs.msg import Header

STOP_TIMEOUT_S = 20.0
ROOT = Path(__file__).resolve().parents[1]
PERCEPTION_NODE = '/vlm_perception'


class ChildProcess:
    """A process of the test (node, launch), its output kept in a file; env inherited."""

    def __init__(self, command: list[str], env: Optional[dict[str, str]] = None,
                 new_session: bool = False) -> None:
        self.log = Path(tempfile.mkstemp(prefix='vlm_perception_test_', suffix='.log')[1])
        self.new_session = new_session  # a process group of its own, for stop_group()
        with self.log.open('w') as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})},
                                            start_new_session=new_session)

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log.read_text()

    def wait_for_output(self, text: str, timeout: float = 120.0) -> bool:
        """Wait until the process printed text; False if it exited or the time ran out."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def stop(self) -> tuple[int, str]:
        """Stop with SIGINT (as Ctrl-C); return the exit status and the output."""
        if self.alive():
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode, self.output()

    def stop_group(self) -> tuple[int, str]:
        """Stop with SIGINT to the whole process group, as Ctrl-C in a terminal does."""
        # the group of a process started without new_session is the test's own
        assert self.new_session, 'stop_group() needs ChildProcess(..., new_session=True)'
        if self.alive():
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return self.process.returncode, self.output()

    def require_ready(self) -> None:
        """Fail the test unless the perception node logs that its models are loaded."""
        if not self.wait_for_output(']: ready on '):
            raise AssertionError(f'perception node not up:\n{self.output()}')

    def stop_cleanly(self) -> None:
        """Stop with SIGINT and assert a zero exit with no traceback, as a user expects."""
        status, output = self.stop()
        assert status == 0, output
        assert 'Traceback' not in output, output


@contextmanager
def probe(perception: ChildProcess, name: str) -> Iterator[Node]:
    """Once perception is ready: rclpy initialised and a test node; both ended afterwards."""
    perception.require_ready()
    rclpy.init()
    node = rclpy.create_node(name)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown()


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run `vlm-perception ARGS` from the source tree (ROS subcommands included)."""
    return subprocess.run([sys.executable, '-m', 'vlm_perception.cli', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def shapes_node(*ros_args: str) -> ChildProcess:
    """Start perception_node on the shipped shapes models; skip the test where they are absent."""
    import pytest

    from vlm_perception.core.presets import get_preset

    try:
        get_preset('shapes')
    except Exception as error:  # the preset's models are not built in this checkout
        pytest.skip(f'shapes preset unavailable: {error}')
    return ros_node('vlm_perception.ros.node', ['-p', 'preset:=shapes', *ros_args])


def serve(node: Node) -> None:
    """Spin a test peer node until SIGINT, then stop without a traceback (peer scripts)."""
    from rclpy.executors import ExternalShutdownException

    print('ready', flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def ros_node(module: str, ros_args: list[str], env: Optional[dict[str, str]] = None,
             new_session: bool = False) -> ChildProcess:
    """Start `python -m module --ros-args ros_args...` (in a session of its own if asked)."""
    return ChildProcess([sys.executable, '-m', module, '--ros-args', *ros_args], env,
                        new_session)


def spin_until(node: Node, done: Callable[[], Any], timeout: float = 20.0) -> bool:
    """Spin node until done() is true; return whether it became true in time."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        rclpy.spin_once(node, timeout_sec=0.05)
    return True


def wait_active(node: Node, perception: ChildProcess, target: str = PERCEPTION_NODE,
                timeout: float = 120.0) -> None:
    """
    Wait until node target reports the lifecycle state active (get_state), not a log line.

    With autostart the node answers only once configured and activated (it spins after
    that), so the question waits; fails the test if the process exits or the time runs out.
    """
    from lifecycle_msgs.srv import GetState

    client = client_of(node, GetState, f'{target}/get_state')
    deadline = time.monotonic() + timeout
    label = None
    while perception.alive() and time.monotonic() < deadline:
        if not client.wait_for_service(timeout_sec=1.0):
            continue
        future = client.call_async(GetState.Request())
        rclpy.spin_until_future_complete(node, future, timeout_sec=5.0)
        if not future.done():
            client.remove_pending_request(future)
            continue
        label = future.result().current_state.label
        if label == 'active':
            return
        spin_until(node, lambda: False, timeout=0.2)
    raise AssertionError(f'{target} not active (last state {label}) within {timeout:g} s:\n'
                         f'{perception.output()}')


def call(node: Node, client: Any, request: Any, timeout: float = 30.0) -> Any:
    """Call a service and return its response (fails the test on timeout)."""
    assert client.wait_for_service(timeout_sec=timeout), f'{client.srv_name} not available'
    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
    assert future.done(), f'no response from {client.srv_name} in {timeout} s'
    return future.result()


def client_of(node: Node, kind: Any, name: str) -> Any:
    """Return node's one client of service name (a client per call would pile up)."""
    clients = node.__dict__.setdefault('clients_', {})
    if name not in clients:
        clients[name] = node.create_client(kind, name)
    return clients[name]


def set_parameter(node: Node, name: str, value: Any,
                  target: str = PERCEPTION_NODE) -> Any:
    """Set one parameter of node target (its type from value); return the SetParametersResult."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return call(node, client_of(node, SetParameters, f'{target}/set_parameters'),
                request).results[0]


def get_parameter(node: Node, name: str, target: str = PERCEPTION_NODE) -> Any:
    """Return the value of one parameter of node target."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    response = call(node, client_of(node, GetParameters, f'{target}/get_parameters'),
                    GetParameters.Request(names=[name]))
    return parameter_value_to_python(response.values[0])


def frame(sec: int, frame_id: str = 'test_camera', width: int = 96,
          height: int = 64) -> Image:
    """Return an rgb8 test image stamped sec seconds (plus 42 ns)."""
    pixels = np.random.default_rng(sec).integers(0, 256, (height, width, 3), dtype=np.uint8)
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = sec, 42
    return Image(header=header, height=height, width=width, encoding='rgb8', step=width * 3,
                 data=pixels.tobytes())


def image_publisher(node: Node, topic: str = 'image', message_type: Any = Image) -> Any:
    """Return a reliable depth-1 publisher (matches best-effort and reliable subscribers)."""
    return node.create_publisher(message_type, topic, QoSProfile(depth=1))


def diagnostics_values(message: Any) -> dict[str, str]:
    """Key values of the perception status in a DiagnosticArray."""
    return {kv.key: kv.value for status in message.status if status.name.endswith('perception')
            for kv in status.values}
