"""
The scene memory of perception_node: scenes remembered as they refresh, recalled, kept.

The node refreshes its scene on every processed frame (scene_period 0) and keeps every scene
(memory_change 0) in a SQLite file; recall returns the published frames' stamps, best first,
and still does after the node restarts on the same file. Recall is refused while the node is
not active; deactivate and shutdown flush the write queue for at most 2 s and drop (and count)
the rest; two nodes write into one PostgreSQL database and either recalls both.
"""

import sqlite3
import threading
import time
from typing import Callable

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402,I100
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from node_harness import (call, client_of, diagnostics_values, frame,  # noqa: E402
                          get_parameter, image_publisher, PERCEPTION_NODE, probe, ros_node,
                          spin_until, wait_active)

from vlm_perception import msg, srv  # noqa: E402

SECONDS = (11, 12, 13, 14)  # stamps of the published frames (plus 42 ns each, node_harness)
DEADLINE_S = 60.0  # generous: the suite may run many nodes at once


def start(preset, path, *extra: str) -> object:
    """Start a perception_node (detect, tags) remembering every scene in path (None: no file)."""
    return ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={preset}', '-p', 'warmup:=false', '-p', 'capabilities:=[detect, tags]',
        '-p', 'scene_period:=0.0', '-p', 'memory_change:=0.0',
        *([] if path is None else ['-p', f'memory_path:={path}']), *extra])


def stamp_of(message) -> int:
    """Return the nanoseconds of a message's header stamp."""
    return message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec


def stamp(sec: int) -> int:
    """Return the nanoseconds node_harness.frame(sec) is stamped with."""
    return sec * 1_000_000_000 + 42


def recall_until(node, query: str, done: Callable[[list], bool],
                 service: str = 'recall') -> srv.Recall.Response:
    """Call recall until done(matches) holds (the writer commits in its own time); return it."""
    client = client_of(node, srv.Recall, service)
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


def show(node, publisher, perception, seconds, scenes: list[int]) -> None:
    """Publish frame(sec) for each of seconds until its scene is out (best effort, depth 1)."""
    for sec in seconds:
        deadline = time.monotonic() + DEADLINE_S
        while stamp(sec) not in scenes and time.monotonic() < deadline:
            publisher.publish(frame(sec))
            spin_until(node, lambda: stamp(sec) in scenes, timeout=1.0)
        assert stamp(sec) in scenes, perception.output()


def recall(node, query: str = 'anything') -> srv.Recall.Response:
    """Call recall once."""
    return call(node, client_of(node, srv.Recall, 'recall'), srv.Recall.Request(query=query))


def transition(node, transition_id: int) -> bool:
    """Ask the perception node to change lifecycle state; return whether it did."""
    request = ChangeState.Request()
    request.transition.id = transition_id
    client = client_of(node, ChangeState, f'{PERCEPTION_NODE}/change_state')
    return call(node, client, request).success


def stored(path) -> set[int]:
    """Return the stamps of the scenes in a memory file (read by this process)."""
    connection = sqlite3.connect(str(path))
    try:
        return {row[0] for row in connection.execute('SELECT stamp_ns FROM memory_scenes')}
    finally:
        connection.close()


def memory_diagnostics(node, done: Callable[[dict], bool]) -> dict:
    """Wait for a perception status whose values satisfy done; return the values."""
    seen: list[dict] = []
    subscription = node.create_subscription(
        DiagnosticArray, '/diagnostics',
        lambda array: seen.append(diagnostics_values(array)), 10)
    try:
        assert spin_until(node, lambda: any(done(values) for values in seen if values),
                          timeout=DEADLINE_S), seen[-3:]
        return next(values for values in seen if values and done(values))
    finally:
        node.destroy_subscription(subscription)


def test_recall_refused_while_inactive_and_the_queue_flushed_or_dropped_on_close(
        tiny_preset, tmp_path) -> None:
    path = tmp_path / 'memory.db'
    perception = start(tiny_preset, path, '-p', 'autostart:=false')
    blocker = None
    rclpy.init()
    try:
        node = rclpy.create_node('node_memory_lifecycle_test')
        publisher = image_publisher(node)
        scenes: list[int] = []
        node.create_subscription(msg.SceneDescription, 'scene',
                                 lambda scene: scenes.append(stamp_of(scene)), 10)
        reply = recall(node)
        assert (reply.success, reply.message, len(reply.matches)) == \
            (False, 'inactive (state unconfigured)', 0)
        assert transition(node, Transition.TRANSITION_CONFIGURE), perception.output()
        reply = recall(node)
        assert (reply.success, reply.message) == (False, 'inactive (state inactive)')
        assert transition(node, Transition.TRANSITION_ACTIVATE), perception.output()
        assert recall(node).success
        assert spin_until(node, lambda: publisher.get_subscription_count() > 0,
                          timeout=DEADLINE_S), perception.output()

        # Another process holds the file's write lock: the scenes wait in the node's queue.
        blocker = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        blocker.execute('BEGIN IMMEDIATE')
        show(node, publisher, perception, (21, 22, 23), scenes)
        # The lock goes 0.5 s into the deactivate, whose flush then writes what waits.
        release = threading.Timer(0.5, blocker.execute, ('COMMIT',))
        release.start()
        assert transition(node, Transition.TRANSITION_DEACTIVATE)
        release.join()
        # (21 may have failed: it waited for the lock from the start, 5 s at most)
        assert {stamp(22), stamp(23)} <= stored(path)
        reply = recall(node)
        assert (reply.success, reply.message) == (False, 'inactive (state inactive)')

        # Held through the deactivate: 2 s of flushing, then the rest is dropped and counted.
        assert transition(node, Transition.TRANSITION_ACTIVATE), perception.output()
        blocker.execute('BEGIN IMMEDIATE')
        show(node, publisher, perception, (31, 32, 33, 34), scenes)
        began = time.monotonic()
        assert transition(node, Transition.TRANSITION_DEACTIVATE)
        took = time.monotonic() - began
        blocker.execute('COMMIT')
        assert 1.9 < took < 3.5, f'deactivate took {took:.2f} s'
        values = memory_diagnostics(node, lambda values: int(values['memory dropped']) > 0)
        assert 1 <= int(values['memory dropped']) <= 3, values
        assert stamp(34) not in stored(path)

        # Shutdown (Ctrl-C) with the lock held: exit 0 after the same 2 s.
        assert transition(node, Transition.TRANSITION_ACTIVATE), perception.output()
        blocker.execute('BEGIN IMMEDIATE')
        show(node, publisher, perception, (41, 42, 43, 44), scenes)
        node.destroy_node()
    finally:
        rclpy.shutdown()
        began = time.monotonic()
        status, output = perception.stop()
        took = time.monotonic() - began
        if blocker is not None:
            blocker.close()  # a transaction still open is rolled back
    assert status == 0 and 'Traceback' not in output, output
    assert took < 10.0, f'stopping took {took:.2f} s'
    assert 'scenes not written' in output  # the only place left to count them at exit
    assert stamp(44) not in stored(path)


def test_two_nodes_write_into_one_postgres_database_and_each_recalls_both(
        tiny_preset, pg_url) -> None:
    names = ('robot1', 'robot2')
    sources = {name: f'/{name}{PERCEPTION_NODE}' for name in names}
    seconds = {'robot1': (51, 52), 'robot2': (61, 62)}
    robots = {name: start(tiny_preset, None, '-p', f'memory_url:={pg_url}',
                          '-r', f'__ns:=/{name}') for name in names}
    rclpy.init()
    try:
        node = rclpy.create_node('node_memory_fleet_test')
        scenes: dict[str, list[int]] = {name: [] for name in names}
        publishers = {}
        for name in names:
            node.create_subscription(msg.SceneDescription, f'/{name}/scene',
                                     lambda scene, name=name: scenes[name].append(
                                         stamp_of(scene)), 10)
            publishers[name] = image_publisher(node, f'/{name}/image')
        for name in names:
            wait_active(node, robots[name], sources[name])
            assert spin_until(node, lambda: publishers[name].get_subscription_count() > 0,
                              timeout=DEADLINE_S), robots[name].output()
            show(node, publishers[name], robots[name], seconds[name], scenes[name])
        wanted = {(sources[name], stamp(sec)) for name in names for sec in seconds[name]}
        label = get_parameter(node, 'labels', sources['robot1'])[0]

        def found(matches: list) -> set:
            return {(match.source, stamp_of(match)) for match in matches}

        for name in names:  # each node reads what both wrote
            reply = recall_until(node, label, lambda matches: wanted <= found(matches),
                                 service=f'/{name}/recall')
            assert reply.success, reply.message
            assert wanted <= found(reply.matches), (name, found(reply.matches))
            assert 'PostgreSQL 127.0.0.1' in reply.message
        only = call(node, client_of(node, srv.Recall, '/robot1/recall'),
                    srv.Recall.Request(query=label, source=sources['robot2'], max_results=20))
        assert only.success and {match.source for match in only.matches} == {sources['robot2']}
        node.destroy_node()
    finally:
        rclpy.shutdown()
        for robot in robots.values():
            robot.stop_cleanly()


def test_a_memory_url_with_a_password_is_refused_at_start(tiny_preset) -> None:
    perception = ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={tiny_preset}', '-p', 'warmup:=false',
        '-p', 'memory_url:=postgresql://robot:hunter2@127.0.0.1:9/fleet'])
    try:
        status = perception.process.wait(timeout=DEADLINE_S)
    finally:
        status, output = perception.stop()
    assert status == 1, output
    assert 'PGPASSWORD' in output and 'memory_url' in output, output
    assert 'hunter2' not in output and 'Traceback' not in output, output
