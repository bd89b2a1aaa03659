"""
The scene memory of perception_node: scenes remembered as they refresh, recalled, kept.

The node refreshes its scene on every processed frame (scene_period 0) and keeps every scene
(memory_change 0) in a SQLite file; recall returns the published frames' stamps, best first,
and still does after the node restarts on the same file.
"""

import time
from typing import Callable

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from node_harness import (call, client_of, frame, get_parameter,  # noqa: E402,I100
                          image_publisher, probe, ros_node, spin_until)

from vlm_perception import msg, srv  # noqa: E402

SECONDS = (11, 12, 13, 14)  # stamps of the published frames (plus 42 ns each, node_harness)
DEADLINE_S = 60.0  # generous: the suite may run many nodes at once


def start(preset, path) -> object:
    """Start a perception_node (detect, tags) remembering every scene in path."""
    return ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={preset}', '-p', 'warmup:=false', '-p', 'capabilities:=[detect, tags]',
        '-p', 'scene_period:=0.0', '-p', f'memory_path:={path}', '-p', 'memory_change:=0.0'])


def stamp_of(message) -> int:
    """Return the nanoseconds of a message's header stamp."""
    return message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec


def recall_until(node, query: str, done: Callable[[list], bool]) -> srv.Recall.Response:
    """Call recall until done(matches) holds (the writer commits in its own time); return it."""
    client = client_of(node, srv.Recall, 'recall')
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = call(node, client, srv.Recall.Request(query=query, max_results=20))
        if response.success and done(list(response.matches)) or time.monotonic() > deadline:
            return response
        spin_until(node, lambda: False, timeout=0.2)


def published_stamps() -> set[int]:
    """Return the stamps (ns) of the frames this test publishes."""
    return {sec * 1_000_000_000 + 42 for sec in SECONDS}


def test_recall_returns_remembered_scenes_and_survives_a_restart(tiny_preset, tmp_path) -> None:
    path = tmp_path / 'memory.db'
    wanted = published_stamps()
    perception = start(tiny_preset, path)
    try:
        with probe(perception, 'node_memory_test') as node:
            publisher = image_publisher(node)
            scenes: list[int] = []
            node.create_subscription(msg.SceneDescription, 'scene',
                                     lambda scene: scenes.append(stamp_of(scene)), 10)
            assert spin_until(node, lambda: publisher.get_subscription_count() > 0,
                              timeout=DEADLINE_S), perception.output()
            for sec in SECONDS:  # each until its scene is out (best effort, depth 1)
                stamp = sec * 1_000_000_000 + 42
                deadline = time.monotonic() + DEADLINE_S
                while stamp not in scenes and time.monotonic() < deadline:
                    publisher.publish(frame(sec))
                    spin_until(node, lambda: stamp in scenes, timeout=1.0)
                assert stamp in scenes, perception.output()
            label = get_parameter(node, 'labels')[0]
            response = recall_until(node, label,
                                    lambda found: wanted <= {stamp_of(m) for m in found})
            assert response.success, response.message
            stamps = [stamp_of(match) for match in response.matches]
            assert wanted <= set(stamps), (stamps, response.message)
            scores = [match.score for match in response.matches]
            assert scores == sorted(scores, reverse=True)  # best first
            assert all(0.0 <= score <= 1.0 for score in scores)
            assert all(match.source == '/vlm_perception' for match in response.matches)
            assert all(match.header.frame_id == 'test_camera' for match in response.matches)
            thumbs = call(node, client_of(node, srv.Recall, 'recall'),
                          srv.Recall.Request(query=label, max_results=1, thumbnails=True))
            assert thumbs.success and thumbs.matches[0].thumbnail.format == 'jpeg'
            assert bytes(thumbs.matches[0].thumbnail.data[:2]) == b'\xff\xd8'
    finally:
        perception.stop_cleanly()

    again = start(tiny_preset, path)
    try:
        with probe(again, 'node_memory_test_again') as node:
            response = recall_until(node, label,
                                    lambda found: wanted <= {stamp_of(m) for m in found})
            assert response.success, response.message
            assert wanted <= {stamp_of(match) for match in response.matches}, again.output()
    finally:
        again.stop_cleanly()
