"""
Peer process of test_graph.py: echoes every custom message and serves every custom service.

Messages arriving on ``<type>`` are published back on ``<type>_echo``; the services answer from
their requests, so the caller can check that what it sent arrived whole.
"""

from node_harness import serve
import rclpy
from rclpy.node import Node
from vlm_perception import msg, srv

MESSAGE_TYPES = [msg.Detection, msg.DetectionArray, msg.LabelScore, msg.SceneDescription,
                 msg.Question, msg.Answer, msg.SceneMemory]


class EchoPeer(Node):
    """Echo messages and answer services for the graph test."""

    def __init__(self) -> None:
        super().__init__('graph_peer')
        self._echoes = []
        for message_type in MESSAGE_TYPES:
            topic = message_type.__name__
            publisher = self.create_publisher(message_type, f'{topic}_echo', 10)
            self._echoes.append(self.create_subscription(
                message_type, topic, publisher.publish, 10))
        self.create_service(srv.QueryScene, 'query', self._query)
        self.create_service(srv.SetLabels, 'set_labels', self._set_labels)

    def _query(self, request: srv.QueryScene.Request,
               response: srv.QueryScene.Response) -> srv.QueryScene.Response:
        response.success = True
        response.message = f'max_age={request.max_age:g} caption={request.caption}'
        response.answer = request.question
        response.confidence = 0.5
        response.scene.caption = 'caption' if request.caption else ''
        response.scene.tags = [msg.LabelScore(label=label, score=1.0) for label in request.labels]
        return response

    def _set_labels(self, request: srv.SetLabels.Request,
                    response: srv.SetLabels.Response) -> srv.SetLabels.Response:
        response.success = True
        response.message = f'{len(request.labels)} labels'
        response.labels = list(reversed(request.labels))
        return response


def main() -> None:
    """Serve until SIGINT; exit 0."""
    rclpy.init()
    serve(EchoPeer())


if __name__ == '__main__':
    main()
