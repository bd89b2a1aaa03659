"""
The `make demo`: simulated camera and perception node, and what the node says it sees.

    python -m vlm_perception.ros.demo [--preset shapes] [--seconds 6]

Starts shapes_camera and perception_node as separate processes (their logs go to a temporary
file, printed if something fails), prints the node's scene summaries for a few seconds, asks two
questions about the scene through the query service and prints the answers next to the truth,
locates one object in 3D (from the camera's depth) through the locate service, then stops both
processes with SIGINT, as Ctrl-C would.
"""

import argparse
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

import numpy as np
import rclpy
from rclpy.node import Node
from std_msgs.msg import String

from vlm_perception import srv
from vlm_perception.core.errors import InputError, ModelLoadError
from vlm_perception.core.presets import get_preset
from vlm_perception.shapes import world
from vlm_perception.shapes.drift import DriftingScene

STOP_TIMEOUT_S = 15.0
LOCATE_TRIES = 10
UNPAIRED = 'no depth image within depth_slop'


class Children:
    """Child processes sharing one log file; stopped with SIGINT, killed if they hang."""

    def __init__(self) -> None:
        self.log = tempfile.NamedTemporaryFile('w+', prefix='vlm_perception_demo_',
                                               suffix='.log', delete=False)
        self.processes: list[subprocess.Popen] = []

    def start(self, module: str, *ros_args: str) -> subprocess.Popen:
        """Start python -m module --ros-args ros_args..."""
        command = [sys.executable, '-m', module, '--ros-args', *ros_args]
        process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                   env=os.environ.copy())
        self.processes.append(process)
        return process

    def stop(self) -> bool:
        """Stop every child; True when all exited cleanly (status 0, no traceback)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        clean = True
        for process in self.processes:
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            clean = clean and process.returncode == 0
        return clean and 'Traceback' not in Path(self.log.name).read_text()

    def show_log(self) -> None:
        """Print the children's log (on failure)."""
        print(f'--- log of the demo processes ({self.log.name}) ---', file=sys.stderr)
        print(Path(self.log.name).read_text(), file=sys.stderr)


def _wait_for_query(node: Node, client, node_process: subprocess.Popen,
                    timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and node_process.poll() is None:
        if client.wait_for_service(timeout_sec=0.5):
            return True
    return False


def _ask(node: Node, client, question: str, caption: bool) -> Optional[srv.QueryScene.Response]:
    future = client.call_async(srv.QueryScene.Request(question=question, caption=caption))
    rclpy.spin_until_future_complete(node, future, timeout_sec=60.0)
    return future.result() if future.done() else None


def _locate(node: Node, name: str, true_distance: float) -> bool:
    """Locate one object through the locate service and print it beside its true distance."""
    client = node.create_client(srv.Locate, 'locate')
    print('\nLocated through the locate service (depth from the camera):')
    for _ in range(LOCATE_TRIES):  # the latest frame's depth image may have been lost
        future = client.call_async(srv.Locate.Request(query=name))
        rclpy.spin_until_future_complete(node, future, timeout_sec=60.0)
        response = future.result() if future.done() else None
        if response is None or UNPAIRED not in response.message:
            break
        time.sleep(0.3)
    if response is None or not response.success:
        print(f'  {name} -> failed: {response.message if response else "timeout"}')
        return False
    point = response.point.point
    print(f'  {name}: ({point.x:.2f}, {point.y:.2f}, {point.z:.2f}) m in '
          f'{response.point.header.frame_id}, {point.z:.2f} m ahead (truth: '
          f'{true_distance:.2f} m)')
    return True


def run(preset: str, seconds: float, seed: int, startup_timeout: float,
        children: Children) -> bool:
    """Run the demo with already-created children; True when every step worked."""
    node_process = children.start('vlm_perception.ros.node', '-p', f'preset:={preset}',
                                  '-p', 'scene_period:=1.0', '-p', 'warmup:=true',
                                  '-p', 'use_depth:=true')
    children.start('vlm_perception.ros.camera', '-p', 'rate:=5.0', '-p', f'seed:={seed}')
    scene = DriftingScene(np.random.default_rng(seed))  # the camera's scene
    objects = scene.objects
    questions = world.questions_of(objects, np.random.default_rng(seed))
    chosen = [questions[0], next(qa for qa in questions if qa[0].startswith('how many objects'))]

    node = rclpy.create_node('vlm_perception_demo')
    try:
        client = node.create_client(srv.QueryScene, 'query')
        print(f'Starting shapes_camera (scene: {world.caption_of(objects)}) and '
              f'perception_node (preset {preset}) ...', flush=True)
        summaries: list[str] = []
        node.create_subscription(String, 'scene_text', lambda m: summaries.append(m.data), 10)
        if not _wait_for_query(node, client, node_process, startup_timeout):
            print('perception_node did not come up', file=sys.stderr)
            return False
        deadline = time.monotonic() + startup_timeout
        while not summaries and time.monotonic() < deadline and node_process.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.1)
        print(f'\nScene summaries for {seconds:g} s:', flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
            while summaries:
                print(f'  {summaries.pop(0)}', flush=True)
        print('\nQuestions through the query service:')
        ok = True
        for index, (question, truth) in enumerate(chosen):
            response = _ask(node, client, question, caption=index == 0)
            if response is None or not response.success:
                print(f'  {question} -> failed: {response.message if response else "timeout"}')
                ok = False
                continue
            print(f'  {question} -> {response.answer} (confidence {response.confidence:.2f}; '
                  f'truth: {truth})')
            if response.scene.caption:
                print(f'    caption: {response.scene.caption}')
        return _locate(node, objects[0].name, scene.distances[0]) and ok
    finally:
        node.destroy_node()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; 0 when the node answered and both processes stopped cleanly."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--preset', default='shapes',
                        help='model preset for the node: shapes (default) or a preset folder')
    parser.add_argument('--seconds', type=float, default=6.0,
                        help='how long to print scene summaries (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=7, help='scene of the simulated camera')
    parser.add_argument('--startup-timeout', type=float, default=120.0,
                        help='seconds to wait for the node to load its models')
    args = parser.parse_args(argv)
    try:
        get_preset(args.preset)
    except (InputError, ModelLoadError) as error:
        print(f'demo: {error}', file=sys.stderr)
        return 1

    rclpy.init(args=[])
    children = Children()
    ok = False
    try:
        ok = run(args.preset, args.seconds, args.seed, args.startup_timeout, children)
    except KeyboardInterrupt:
        pass
    finally:
        stopped = children.stop()
        rclpy.try_shutdown()
    if not (ok and stopped):
        children.show_log()
        return 1
    Path(children.log.name).unlink()
    print('\nDemo done; camera and node stopped.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
