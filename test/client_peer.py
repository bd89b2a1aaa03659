"""
Peer process of test_client.py: a stand-in perception_node with canned, field-checked replies.

It serves query, set_labels and locate, answers questions on answers and publishes one scene
(transient local, depth 1) at start, so PerceptionClient can be tested without models.
"""

from node_harness import serve
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from vlm_perception import msg, srv

SCENE_SUMMARY = 'peer scene: one red cup'
CUP = 'red cup'


class FakePerception(Node):
    """Answer as perception_node would, from the requests alone."""

    def __init__(self) -> None:
        super().__init__('client_peer')
        self.create_service(srv.QueryScene, 'query', self._query)
        self.create_service(srv.SetLabels, 'set_labels', self._set_labels)
        self.create_service(srv.Locate, 'locate', self._locate)
        self._answers = self.create_publisher(msg.Answer, 'answers', 10)
        self.create_subscription(msg.Question, 'questions', self._on_question, 10)
        scene_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._scene = self.create_publisher(msg.SceneDescription, 'scene', scene_qos)
        scene = msg.SceneDescription(summary=SCENE_SUMMARY, caption='a red cup')
        scene.header.frame_id = 'peer_camera'
        scene.header.stamp.sec = 123
        self._scene.publish(scene)  # once: only transient local delivers it to later clients

    def _query(self, request: srv.QueryScene.Request,
               response: srv.QueryScene.Response) -> srv.QueryScene.Response:
        response.success = request.max_age == 0.0 or request.max_age >= 1.0
        response.message = (f'max_age={request.max_age:g} caption={request.caption}'
                            if response.success else 'stale: image 0.5 s old')
        response.answer = f'answer to {request.question}'
        response.confidence = 0.5
        response.scene.caption = 'caption' if request.caption else ''
        response.scene.summary = SCENE_SUMMARY
        response.scene.tags = [msg.LabelScore(label=label, score=1.0) for label in request.labels]
        return response

    def _set_labels(self, request: srv.SetLabels.Request,
                    response: srv.SetLabels.Response) -> srv.SetLabels.Response:
        labels = [label.strip() for label in request.labels]
        response.success = bool(labels)
        response.message = f'{len(labels)} labels' if labels else 'empty vocabulary'
        response.labels = list(reversed(labels)) if labels else ['old']
        return response

    def _locate(self, request: srv.Locate.Request,
                response: srv.Locate.Response) -> srv.Locate.Response:
        if request.query != CUP:
            response.success = False
            response.message = f'no match: nothing looks like {request.query!r}'
            return response
        cup = msg.Detection(label=CUP, score=0.875, center_x=40.0, center_y=30.0, size_x=8.0,
                            size_y=6.0, has_position=True)
        cup.position.x, cup.position.y, cup.position.z = 0.1, 0.2, 1.5
        cup.size.x, cup.size.y, cup.size.z = 0.08, 0.1, 0.02
        response.success = True
        response.message = f'max_age={request.max_age:g}'
        response.detection = cup
        response.point.header.frame_id = 'map'
        response.point.header.stamp = self.get_clock().now().to_msg()
        response.point.point.x, response.point.point.y, response.point.point.z = 1.0, 2.0, 3.0
        response.matches = [cup, msg.Detection(label=CUP, score=0.25)]
        return response

    def _on_question(self, question: msg.Question) -> None:
        answer = msg.Answer(id=question.id, question=question.question)
        answer.header.frame_id = 'peer_camera'
        if question.question.strip():
            answer.success, answer.answer, answer.confidence = True, 'two', 0.75
        else:
            answer.error = 'empty question'
        self._answers.publish(answer)


def main() -> None:
    """Serve until SIGINT; exit 0."""
    rclpy.init()
    serve(FakePerception())


if __name__ == '__main__':
    main()
