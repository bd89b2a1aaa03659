"""
Publishers a subscription cannot hear: another message type, or QoS it does not match.

The node's sensor subscriptions have no QoS event handlers (see PerceptionNode._subscribe), so
rclpy's own 'offering incompatible QoS' and 'incompatible type' warnings are not raised for
them; the node looks at the graph instead and says the same, once per publisher.
"""

from typing import Any, Iterable

from rclpy.qos import qos_check_compatible, QoSCompatibility, QoSProfile


def type_name(message_type: Any) -> str:
    """Return a message class's ROS type name, e.g. sensor_msgs/msg/Image."""
    return f'{message_type.__module__.split(".")[0]}/msg/{message_type.__name__}'


def unheard_reason(info: Any, message_type: str, qos: QoSProfile) -> str:
    """Return why a publisher's messages cannot reach a subscription, '' when they can."""
    if info.topic_type != message_type:
        return f'publishes {info.topic_type}, not {message_type}'
    compatibility, reason = qos_check_compatible(info.qos_profile, qos)
    if compatibility == QoSCompatibility.ERROR:
        reason = reason.strip().removeprefix('ERROR:').strip().rstrip(';')
        return f'offers QoS incompatible with the subscription ({reason or "no reason given"})'
    return ''


class UnheardPublishers:
    """
    Remembers the publishers already reported, so that each is reported once.

    Only publishers still on the graph are remembered: a peer that keeps creating publishers
    cannot grow the set.
    """

    def __init__(self) -> None:
        self._reported: dict[str, set[tuple[int, ...]]] = {}

    def new(self, topic: str, infos: Iterable[Any], message_type: str,
            qos: QoSProfile) -> list[tuple[Any, str]]:
        """Return (endpoint info, reason) of topic's publishers not heard and not yet reported."""
        infos = list(infos)
        reported = self._reported.get(topic, set()) & {tuple(info.endpoint_gid) for info in infos}
        found = []
        for info in infos:
            gid = tuple(info.endpoint_gid)
            if gid not in reported and (reason := unheard_reason(info, message_type, qos)):
                reported.add(gid)
                found.append((info, reason))
        self._reported[topic] = reported
        return found
