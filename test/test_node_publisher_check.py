"""The node's check of publishers it cannot hear (another type, incompatible QoS), no graph."""

from typing import Any

import pytest

pytest.importorskip('rclpy')

from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402,I100
from rclpy.topic_endpoint_info import TopicEndpointInfo  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from vlm_perception.ros.publisher_check import type_name, UnheardPublishers  # noqa: E402


def test_unheard_publishers_are_reported_once_while_they_stay() -> None:
    """Type and QoS mismatches are named; a publisher leaving and coming back is named again."""
    def publisher(gid: int, kind: str = 'sensor_msgs/msg/Image',
                  reliability: ReliabilityPolicy = ReliabilityPolicy.RELIABLE) -> Any:
        return TopicEndpointInfo(node_name=f'camera{gid}', topic_type=kind, endpoint_gid=[gid],
                                 qos_profile=QoSProfile(depth=1, reliability=reliability))

    reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    assert type_name(Image) == 'sensor_msgs/msg/Image'
    heard, best_effort = publisher(1), publisher(2, reliability=ReliabilityPolicy.BEST_EFFORT)
    string = publisher(3, 'std_msgs/msg/String')
    unheard = UnheardPublishers()
    found = unheard.new('/image', [heard, best_effort, string], 'sensor_msgs/msg/Image',
                        reliable)
    assert [(info.node_name, reason.split(' (')[0]) for info, reason in found] == [
        ('camera2', 'offers QoS incompatible with the subscription'),
        ('camera3', 'publishes std_msgs/msg/String, not sensor_msgs/msg/Image')]
    assert 'best effort publisher and reliable subscription' in found[0][1].lower()
    assert unheard.new('/image', [heard, best_effort, string], 'sensor_msgs/msg/Image',
                       reliable) == []
    assert unheard.new('/image', [string], 'sensor_msgs/msg/Image', reliable) == []
    assert [info.node_name for info, _ in unheard.new(
        '/image', [best_effort, string], 'sensor_msgs/msg/Image', reliable)] == ['camera2']
    best_effort_subscription = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    assert unheard.new('/other', [heard, best_effort], 'sensor_msgs/msg/Image',
                       best_effort_subscription) == []
