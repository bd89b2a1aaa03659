"""
The stream of perception_node: never behind the camera, compressed input, stale frames.

The node runs with VLM_PERCEPTION_ADDED_LATENCY (an honest sleep per processed frame, as on a
slow device) so that frames arrive faster than inference; it subscribes compressed images on a
remapped topic.
"""

import time
from typing import Callable

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402,I100
from node_harness import (call, diagnostics_values, image_publisher, probe,  # noqa: E402
                          ros_node, set_parameter, spin_until)
from sensor_msgs.msg import CompressedImage  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from vlm_perception import msg, srv  # noqa: E402

ADDED_LATENCY_S = 0.3
TOPIC = '/camera/image_raw/compressed'


@pytest.fixture(scope='module')
def perception(tiny_preset):
    """Start a slowed perception_node taking compressed images from camera/image_raw."""
    node = ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={tiny_preset}', '-p', 'compressed:=true', '-p', 'warmup:=false',
        '-p', 'capabilities:=[detect]', '-r', 'image:=camera/image_raw'],
        env={'VLM_PERCEPTION_ADDED_LATENCY': str(ADDED_LATENCY_S)})
    yield node
    node.stop_cleanly()


@pytest.fixture(scope='module')
def ros(perception):
    """Return this test's node with a publisher matched to the node's compressed subscription."""
    with probe(perception, 'node_stream_test') as node:
        publisher = image_publisher(node, TOPIC, CompressedImage)
        if not spin_until(node, lambda: publisher.get_subscription_count() > 0, timeout=30.0):
            pytest.fail(f'perception node not up:\n{perception.output()}')
        node.publisher = publisher
        yield node


def compressed(stamp, seed: int = 0) -> CompressedImage:
    """Return a JPEG image stamped stamp."""
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ok, data = cv2.imencode('.jpg', pixels)
    assert ok
    return CompressedImage(header=Header(stamp=stamp, frame_id='cam'), format='jpeg',
                           data=data.tobytes())


def test_subscribes_the_compressed_topic_of_the_remapped_image(ros) -> None:
    def subscriptions():
        if 'vlm_perception' not in ros.get_node_names():
            return {}
        return dict(ros.get_subscriber_names_and_types_by_node('vlm_perception', '/'))

    assert spin_until(ros, lambda: TOPIC in subscriptions())
    assert subscriptions()[TOPIC] == ['sensor_msgs/msg/CompressedImage']
    assert '/image' not in subscriptions()


def test_frames_faster_than_inference_are_dropped_and_ages_stay_bounded(ros) -> None:
    received = []  # (age on arrival in seconds, stamp in ns)
    diagnostics = []
    ros.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)

    def on_detections(array: msg.DetectionArray) -> None:
        stamp = array.header.stamp.sec * 10**9 + array.header.stamp.nanosec
        received.append(((ros.get_clock().now().nanoseconds - stamp) / 1e9, stamp))

    ros.create_subscription(msg.DetectionArray, 'detections', on_detections, 10)
    published = 0
    end = time.monotonic() + 4.0
    while time.monotonic() < end:  # about 30 frames per second
        ros.publisher.publish(compressed(ros.get_clock().now().to_msg(), seed=published))
        published += 1
        rclpy.spin_once(ros, timeout_sec=0.03)
    spin_until(ros, lambda: False, timeout=2.0)

    assert len(received) >= 3
    assert len(received) < published / 3  # at most one in ADDED_LATENCY_S is processed
    ages = [age for age, _ in received]
    # A queue would make ages grow by about a second per second; newest-frame stays near the
    # processing time (added latency + inference), whatever the backlog.
    assert max(ages) < ADDED_LATENCY_S + 1.2, ages
    stamps = [stamp for _, stamp in received]
    assert stamps == sorted(stamps)
    assert spin_until(ros, lambda: diagnostics and int(diagnostics_values(diagnostics[-1]).get(
        'dropped: superseded', 0)) > 0, timeout=3.0)


def test_undecodable_compressed_data_is_rejected(ros, perception) -> None:
    diagnostics = []
    ros.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    for data in (b'not a jpeg at all', b''):
        ros.publisher.publish(CompressedImage(format='jpeg', data=data))
        spin_until(ros, lambda: False, timeout=0.3)

    def rejected() -> int:
        values = diagnostics_values(diagnostics[-1]) if diagnostics else {}
        return int(values.get('rejected: compressed image', 0))

    assert spin_until(ros, lambda: rejected() >= 1, timeout=5.0)
    assert perception.alive()
    received = []
    ros.create_subscription(msg.DetectionArray, 'detections', received.append, 10)
    ros.publisher.publish(compressed(ros.get_clock().now().to_msg()))
    assert spin_until(ros, lambda: received, timeout=10.0)


def headless_jpeg(stamp) -> CompressedImage:
    """Return a JPEG whose header is valid (64x48) but which has no image data to decode."""
    data = bytes(compressed(stamp).data)
    return CompressedImage(header=Header(stamp=stamp, frame_id='cam'), format='jpeg',
                           data=data[:data.index(b'\xff\xda')] + b'\xff\xd9')


def counters(node) -> Callable[[], dict]:
    """Subscribe to /diagnostics; return a function giving the latest perception counters."""
    seen = []
    node.create_subscription(DiagnosticArray, '/diagnostics', seen.append, 10)

    def latest() -> dict:
        values = diagnostics_values(seen[-1]) if seen else {}
        return {key: int(value) for key, value in values.items()
                if key.startswith(('dropped', 'rejected'))}
    return latest


def settled(node, latest: Callable[[], dict]) -> dict:
    """Wait for two equal diagnostics reports in a row (nothing in flight); return them."""
    before = None
    for _ in range(20):
        spin_until(node, lambda: False, timeout=1.1)
        now = latest()
        if now and now == before:
            return now
        before = now
    raise AssertionError(f'diagnostics never settled: {before}')


def test_a_superseded_compressed_frame_is_never_decoded(ros) -> None:
    latest = counters(ros)
    deep = ros.create_publisher(CompressedImage, TOPIC, 10)  # keeps both of a quick pair
    assert spin_until(ros, lambda: deep.get_subscription_count() > 0, timeout=10.0)
    for _ in range(3):  # until the node's depth-1 reader passed the headless frame on
        before = settled(ros, latest)
        deep.publish(compressed(ros.get_clock().now().to_msg(), seed=1))
        spin_until(ros, lambda: False, timeout=0.1)  # the stream takes it: busy for 0.3 s
        deep.publish(headless_jpeg(ros.get_clock().now().to_msg()))
        spin_until(ros, lambda: False, timeout=0.05)  # it reaches the image callback
        deep.publish(compressed(ros.get_clock().now().to_msg(), seed=2))  # supersedes it
        after = settled(ros, latest)
        assert after.get('rejected: compressed image', 0) == before.get(
            'rejected: compressed image', 0), (before, after)
        if after['dropped: superseded'] > before.get('dropped: superseded', 0):
            return
    raise AssertionError(f'the headless frame was never superseded in the node: {after}')


def test_an_undecodable_newest_frame_leaves_the_previous_one_for_queries(ros) -> None:
    latest = counters(ros)
    good = ros.get_clock().now().to_msg()
    ros.publisher.publish(compressed(good, seed=3))
    spin_until(ros, lambda: False, timeout=1.0)
    before = settled(ros, latest)
    ros.publisher.publish(headless_jpeg(ros.get_clock().now().to_msg()))
    response = call(ros, ros.create_client(srv.QueryScene, 'query'),
                    srv.QueryScene.Request(caption=False))
    assert response.success, response.message
    assert response.scene.header.stamp == good
    after = settled(ros, latest)
    assert after['rejected: compressed image'] == before.get('rejected: compressed image', 0) + 1


def test_frames_older_than_max_image_age_are_skipped(ros) -> None:
    diagnostics, received = [], []
    ros.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    ros.create_subscription(msg.DetectionArray, 'detections', received.append, 10)
    assert set_parameter(ros, 'max_image_age', 0.5).successful
    try:
        old = ros.get_clock().now().to_msg()
        old.sec -= 60
        for _ in range(5):
            ros.publisher.publish(compressed(old))
            spin_until(ros, lambda: False, timeout=0.4)

        def stale() -> int:
            values = diagnostics_values(diagnostics[-1]) if diagnostics else {}
            return int(values.get('dropped: stale', 0))

        assert spin_until(ros, lambda: stale() >= 1, timeout=5.0)
        assert not [a for a in received if a.header.stamp.sec == old.sec]
    finally:
        assert set_parameter(ros, 'max_image_age', 0.0).successful
