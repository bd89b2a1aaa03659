"""
ROS subcommands of the vlm-perception CLI; they talk to a running perception_node.

    vlm-perception query "What colour is the circle?" --labels "red circle,blue square"
    vlm-perception watch --count 5
    vlm-perception labels "cup,person,chair"
    vlm-perception ask-topic "How many shapes are there?" --namespace robot1

No ros2 CLI is needed: each command starts a short-lived rclpy node. The node's topics and
services are relative names, so --namespace is all it takes to reach a namespaced node.
"""

import argparse
from contextlib import contextmanager
import json
import sys
import time
from typing import Any, Iterator, Optional
import uuid

import rclpy
from rclpy.node import Node
from rclpy.task import Future

from vlm_perception import msg, srv
from vlm_perception.ros.conversions import scene_from_msg

PROG = 'vlm-perception'


@contextmanager
def _client_node(namespace: str) -> Iterator[Node]:
    """Yield a short-lived node in namespace; shut rclpy down afterwards."""
    rclpy.init(args=[])
    node = rclpy.create_node(f'vlm_perception_client_{uuid.uuid4().hex[:8]}',
                             namespace=namespace or '/')
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def _fail(message: str) -> int:
    print(f'{PROG}: error: {message}', file=sys.stderr)
    return 1


def _limit(timeout: float) -> Optional[float]:
    """Return a timeout for rclpy: None (no limit) for 0 or less."""
    return timeout if timeout > 0 else None


def _call(node: Node, service_type: Any, name: str, request: Any, timeout: float) -> Any:
    """Call a service; return the response, or None after printing why there is none."""
    client = node.create_client(service_type, name)
    service = node.resolve_service_name(name)
    if not client.wait_for_service(timeout_sec=_limit(timeout)):
        _fail(f'service {service} not available (is perception_node running in this '
              'namespace and ROS_DOMAIN_ID?)')
        return None
    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=_limit(timeout))
    if not future.done():
        _fail(f'no answer from {service} within {timeout:g} s')
        return None
    return future.result()


def _stamp(header: Any) -> str:
    return f'{header.stamp.sec}.{header.stamp.nanosec:09d}'


def _labels(text: Optional[str]) -> list[str]:
    return [label.strip() for label in (text or '').split(',') if label.strip()]


def _query(args: argparse.Namespace) -> int:
    request = srv.QueryScene.Request(question=args.question, labels=_labels(args.labels),
                                     caption=args.caption, max_age=args.max_age)
    with _client_node(args.namespace) as node:
        response = _call(node, srv.QueryScene, 'query', request, args.timeout)
    if response is None:
        return 1
    if not response.success:
        return _fail(response.message)
    scene = scene_from_msg(response.scene)
    if args.json:
        result = {'stamp': _stamp(response.scene.header),
                  'frame_id': response.scene.header.frame_id, **scene.to_dict()}
        if args.question.strip():
            result['answer'] = {'answer': response.answer, 'confidence': response.confidence}
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(scene.summary)
    return 0


def _set_labels(args: argparse.Namespace) -> int:
    request = srv.SetLabels.Request(labels=_labels(args.labels))
    with _client_node(args.namespace) as node:
        response = _call(node, srv.SetLabels, 'set_labels', request, args.timeout)
    if response is None:
        return 1
    if not response.success:
        return _fail(f'labels rejected: {response.message}')
    print(json.dumps(list(response.labels)) if args.json else ', '.join(response.labels))
    return 0


def _wait_for_match(node: Node, ready: Any, timeout: float) -> bool:
    deadline = time.monotonic() + (timeout if timeout > 0 else float('inf'))
    while not ready():
        if time.monotonic() > deadline:
            return False
        rclpy.spin_once(node, timeout_sec=0.05)
    return True


def _ask_topic(args: argparse.Namespace) -> int:
    question = msg.Question(id=uuid.uuid4().hex[:12], question=args.question)
    with _client_node(args.namespace) as node:
        answered: Future = Future()

        def on_answer(answer: msg.Answer) -> None:
            if answer.id == question.id and not answered.done():
                answered.set_result(answer)

        node.create_subscription(msg.Answer, 'answers', on_answer, 10)
        publisher = node.create_publisher(msg.Question, 'questions', 10)
        topic = node.resolve_topic_name('questions')
        matched = _wait_for_match(
            node, lambda: publisher.get_subscription_count() > 0
            and node.count_publishers('answers') > 0, args.timeout)
        if not matched:
            return _fail(f'nobody subscribes {topic} (is perception_node running?)')
        publisher.publish(question)
        rclpy.spin_until_future_complete(node, answered, timeout_sec=_limit(args.timeout))
    if not answered.done():
        return _fail(f'no answer to question {question.id} within {args.timeout:g} s')
    answer = answered.result()
    if not answer.success:
        return _fail(answer.error)
    if args.json:
        print(json.dumps({'id': answer.id, 'stamp': _stamp(answer.header),
                          'answer': answer.answer, 'confidence': answer.confidence}))
    else:
        print(f'{answer.answer}  (confidence {answer.confidence:.3f})')
    return 0


def _watch(args: argparse.Namespace) -> int:
    printed = 0

    def show(line: dict, text: str) -> None:
        nonlocal printed
        print(json.dumps(line, ensure_ascii=False) if args.json else text, flush=True)
        printed += 1

    def on_scene(scene: msg.SceneDescription) -> None:
        show({'type': 'scene', 'stamp': _stamp(scene.header), 'summary': scene.summary},
             f'[{_stamp(scene.header)}] {scene.summary}')

    def on_answer(answer: msg.Answer) -> None:
        text = answer.answer if answer.success else f'error: {answer.error}'
        show({'type': 'answer', 'stamp': _stamp(answer.header), 'id': answer.id,
              'question': answer.question, 'answer': answer.answer, 'success': answer.success,
              'error': answer.error},
             f'[{_stamp(answer.header)}] {answer.id}: {answer.question} -> {text}')

    with _client_node(args.namespace) as node:
        node.create_subscription(msg.SceneDescription, 'scene', on_scene, 10)
        node.create_subscription(msg.Answer, 'answers', on_answer, 10)
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else float('inf')
        try:
            while (args.count <= 0 or printed < args.count) and time.monotonic() < deadline:
                rclpy.spin_once(node, timeout_sec=0.1)
        except KeyboardInterrupt:
            pass
    if args.count > 0 and printed < args.count:
        return _fail(f'{printed} of {args.count} messages within {args.timeout:g} s')
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ROS subcommands: query, watch, labels, ask-topic."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--namespace', '-n', default='',
                        help='namespace of the perception node (default: the root)')
    common.add_argument('--json', action='store_true', help='print JSON instead of text')

    def add(name: str, help_text: str, timeout: float, run: Any) -> argparse.ArgumentParser:
        command = subparsers.add_parser(name, parents=[common], help=help_text,
                                        description=help_text)
        command.add_argument('--timeout', type=float, default=timeout,
                             help='seconds to wait, 0 = no limit (default: %(default)s)')
        command.set_defaults(run=run, formatter=None)
        return command

    query = add('query', 'ask the running node about its latest frame (query service)', 30.0,
                _query)
    query.add_argument('question', nargs='?', default='', help='optional visual question')
    query.add_argument('--labels', help='comma-separated labels to detect this time')
    query.add_argument('--caption', action='store_true', help='caption the frame too')
    query.add_argument('--max-age', type=float, default=0.0,
                       help='fail if the latest frame is older than this many seconds')

    watch = add('watch', 'print scene summaries and answers as the node publishes them', 0.0,
                _watch)
    watch.add_argument('--count', type=int, default=0, help='stop after N messages (0 = never)')

    labels = add('labels', 'replace the detection vocabulary (set_labels service)', 10.0,
                 _set_labels)
    labels.add_argument('labels', help='comma-separated labels, e.g. "cup,person,chair"')

    ask = add('ask-topic', 'publish a Question on questions and wait for its Answer', 30.0,
              _ask_topic)
    ask.add_argument('question', help='the question')
