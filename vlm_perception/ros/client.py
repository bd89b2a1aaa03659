"""
Python client of a running perception_node, and the CLI's ROS subcommands built on it.

From a planner (in the spirit of nav2_simple_commander's BasicNavigator)::

    import rclpy
    from vlm_perception.ros.client import PerceptionClient, PerceptionError
    rclpy.init()
    with PerceptionClient(namespace='robot1') as perception:
        cup = perception.locate('red cup', max_age=1.0)   # raises PerceptionError if none
        print(cup.point.header.frame_id, cup.point.point)

From a shell (no ros2 CLI needed; each command starts a short-lived client node)::

    vlm-perception query "What colour is the circle?" --labels "red circle,blue square"
    vlm-perception locate "red circle" --max-age 1.0 --camera left
    vlm-perception recall "red circle" --max-results 5
    vlm-perception watch --count 5
    vlm-perception labels "cup,person,chair"
    vlm-perception ask-topic "How many shapes are there?" --namespace robot1

The node's topics and services are relative names, so a namespace is all it takes to reach a
namespaced node. A node with several cameras (its cameras parameter) takes the camera by name in
query, locate and ask (empty = its first camera).
"""

import argparse
from contextlib import contextmanager
import json
import sys
import time
from types import TracebackType
from typing import Any, Callable, Iterator, Optional, Sequence
import uuid

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from rclpy.time import Time

from vlm_perception import msg, srv
from vlm_perception.ros.conversions import detection_from_msg, scene_from_msg

PROG = 'vlm-perception'
HINT = 'is perception_node running in this namespace and ROS_DOMAIN_ID?'
# As the node publishes scene: a late subscriber gets the last scene at once.
SCENE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                       reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)
_POLL_S = 0.05  # graph changes (matching) fire no callback, so they are polled
CAMERA_HELP = "which of the node's cameras (its cameras parameter); default: the first"


class PerceptionError(RuntimeError):
    """The perception node said no; ``response`` is its reply (None when there is none)."""

    def __init__(self, message: str, response: Any = None) -> None:
        super().__init__(message)
        self.response = response


class PerceptionTimeout(PerceptionError):
    """The service or topic is not there, or no reply came within the timeout."""


def _deadline(timeout: float) -> Optional[float]:
    """Monotonic time the timeout ends at; None (no limit) for 0 or less."""
    return time.monotonic() + timeout if timeout > 0 else None


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _expired(deadline: Optional[float]) -> bool:
    return deadline is not None and time.monotonic() >= deadline


class PerceptionClient:
    """
    Blocking calls to a perception_node: query, ask, locate, recall, set_labels, latest_scene.

    With ``node`` None the client makes a private node (``vlm_perception_client_<hex>`` in
    ``namespace``) and a private executor that only it spins; call ``rclpy.init()`` first.
    With a ``node`` given, its entities are made on that node (names relative to
    ``namespace`` when one is given) and the node is spun with
    ``rclpy.spin_until_future_complete`` during calls, so do not spin that node elsewhere at
    the same time. Service clients and subscriptions are made on first use and reused;
    ``destroy()`` (or leaving a ``with`` block) destroys what the client made.

    Every blocking method takes ``timeout`` in seconds (0 or less: no limit) and raises
    PerceptionTimeout when the node is not reachable or does not reply in time, and
    PerceptionError (reply in ``.response``) when the reply says it failed.
    """

    def __init__(self, namespace: str = '', node: Optional[Node] = None) -> None:
        self._own_node = node is None
        self._executor: Optional[SingleThreadedExecutor] = None
        if node is None:
            node = rclpy.create_node(f'vlm_perception_client_{uuid.uuid4().hex[:8]}',
                                     namespace=namespace or '/')
            self._executor = SingleThreadedExecutor(context=node.context)
            self._executor.add_node(node)
            self._prefix = ''
        else:
            self._prefix = namespace.rstrip('/')
        self._node: Optional[Node] = node
        self._clients: dict[str, Any] = {}
        self._questions: Any = None
        self._answers: Any = None
        self._pending: dict[str, Future] = {}
        self._scene_sub: Any = None
        self._scene: Optional[msg.SceneDescription] = None
        self._scene_arrived: Optional[Future] = None
        self._flush_guard: Any = None
        self._flushed: Optional[Future] = None

    @property
    def node(self) -> Node:
        """Return the node the client's entities live on (its clock dates replies)."""
        if self._node is None:
            raise PerceptionError('PerceptionClient used after destroy()')
        return self._node

    def __enter__(self) -> 'PerceptionClient':
        """Return the client itself."""
        return self

    def __exit__(self, kind: Optional[type], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        """Destroy what the client made."""
        self.destroy()

    def destroy(self) -> None:
        """Destroy the client's entities, and its node and executor if it made them."""
        node, self._node = self._node, None
        if node is None:
            return
        if self._own_node:
            assert self._executor is not None
            self._executor.remove_node(node)
            node.destroy_node()
            self._executor.shutdown()
            return
        for client in self._clients.values():
            node.destroy_client(client)
        if self._questions is not None:
            node.destroy_publisher(self._questions)
            node.destroy_subscription(self._answers)
        if self._scene_sub is not None:
            node.destroy_subscription(self._scene_sub)
            node.destroy_guard_condition(self._flush_guard)

    def spin_once(self, timeout: float = 0.1) -> None:
        """Run one ready callback of the client's node, waiting up to timeout seconds."""
        if self._executor is not None:
            self._executor.spin_once(timeout_sec=timeout)
        else:
            rclpy.spin_once(self.node, timeout_sec=timeout)

    # --- services -------------------------------------------------------------------------

    def query(self, question: str = '', labels: Sequence[str] = (), caption: bool = False,
              max_age: float = 0.0, timeout: float = 10.0,
              camera: str = '') -> srv.QueryScene.Response:
        """
        Ask about the latest frame (query service): detections of labels, answer, caption.

        ``camera`` names one of the node's cameras; empty = its first (or only) one.
        """
        request = srv.QueryScene.Request(question=question, labels=list(labels),
                                         caption=caption, max_age=float(max_age), camera=camera)
        return self._call(srv.QueryScene, 'query', request, timeout)

    def locate(self, query: str, max_age: float = 0.0, timeout: float = 10.0,
               camera: str = '') -> srv.Locate.Response:
        """
        Find one object by phrase in a camera's latest frame and place it in 3D (locate service).

        On ``success: false`` the PerceptionError's ``.response`` still carries what matched
        (e.g. ``response.detection`` when there was no depth for it).
        """
        request = srv.Locate.Request(query=query, max_age=float(max_age), camera=camera)
        return self._call(srv.Locate, 'locate', request, timeout)

    def recall(self, query: str, max_results: int = 0, since_ns: int = 0, until_ns: int = 0,
               source: str = '', thumbnails: bool = False,
               timeout: float = 10.0) -> srv.Recall.Response:
        """
        Return the remembered scenes that match a text, best first (recall service).

        ``max_results`` 0 = 10; ``since_ns`` / ``until_ns`` bound the stamps (0 = unbounded);
        ``source`` keeps one node or camera's scenes (empty = any). PerceptionError when the
        node refuses (not active, bad query).
        """
        request = srv.Recall.Request(query=query, max_results=int(max_results),
                                     since=_time(since_ns), until=_time(until_ns),
                                     source=source, thumbnails=thumbnails)
        return self._call(srv.Recall, 'recall', request, timeout)

    def set_labels(self, labels: Sequence[str], timeout: float = 10.0) -> list[str]:
        """Replace the detection vocabulary; return the vocabulary now in force."""
        request = srv.SetLabels.Request(labels=list(labels))
        return list(self._call(srv.SetLabels, 'set_labels', request, timeout).labels)

    def _call(self, service_type: Any, name: str, request: Any, timeout: float) -> Any:
        deadline = _deadline(timeout)
        name = self._name(name)
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(service_type, name)
        service = self.node.resolve_service_name(name)
        # Polled here rather than by wait_for_service, which sleeps in 0.25 s steps.
        if not self._wait_until(client.service_is_ready, deadline):
            raise PerceptionTimeout(f'service {service} not available within {timeout:g} s '
                                    f'({HINT})')
        future = client.call_async(request)
        self._spin_until_done(future, deadline)
        if not future.done():
            client.remove_pending_request(future)  # a late reply would only leak
            raise PerceptionTimeout(f'no answer from {service} within {timeout:g} s ({HINT})')
        response = future.result()
        if not response.success:
            raise PerceptionError(response.message, response)
        return response

    # --- topics ---------------------------------------------------------------------------

    def ask(self, question: str, timeout: float = 10.0, camera: str = '') -> msg.Answer:
        """Publish a Question (about camera: empty = the first) and return its Answer."""
        deadline = _deadline(timeout)
        if self._questions is None:
            self._answers = self.node.create_subscription(
                msg.Answer, self._name('answers'), self._on_answer, 10)
            self._questions = self.node.create_publisher(
                msg.Question, self._name('questions'), 10)
        topic = self.node.resolve_topic_name(self._name('questions'))
        # A question published before the node subscribes, or an answer sent before this
        # client subscribes, would be lost.
        matched = self._wait_until(lambda: self._questions.get_subscription_count() > 0
                                   and self._answers.get_publisher_count() > 0, deadline)
        if not matched:
            raise PerceptionTimeout(f'nobody subscribes {topic} and publishes answers within '
                                    f'{timeout:g} s ({HINT})')
        message = msg.Question(id=uuid.uuid4().hex[:12], question=question, camera=camera)
        answered = self._pending[message.id] = Future()
        try:
            self._questions.publish(message)
            self._spin_until_done(answered, deadline)
        finally:
            del self._pending[message.id]
        if not answered.done():
            raise PerceptionTimeout(f'no answer to question {message.id} on {topic} within '
                                    f'{timeout:g} s ({HINT})')
        answer = answered.result()
        if not answer.success:
            raise PerceptionError(answer.error, answer)
        return answer

    def _on_answer(self, answer: msg.Answer) -> None:
        future = self._pending.get(answer.id)
        if future is not None and not future.done():
            future.set_result(answer)

    def latest_scene(self, timeout: float = 10.0) -> msg.SceneDescription:
        """
        Return the newest SceneDescription the node published on scene.

        The first call subscribes (transient local, depth 1), so it returns as soon as the
        node's last scene arrives; later calls return the newest scene received by then.
        """
        deadline = _deadline(timeout)
        if self._scene_sub is None:
            self._scene_sub = self.node.create_subscription(
                msg.SceneDescription, self._name('scene'), self._on_scene, SCENE_QOS)
            self._flush_guard = self.node.create_guard_condition(self._on_flush)
        else:
            self._flush(deadline)
        if self._scene is None:
            self._scene_arrived = Future()
            self._spin_until_done(self._scene_arrived, deadline)
        if self._scene is None:
            topic = self.node.resolve_topic_name(self._name('scene'))
            raise PerceptionTimeout(f'no scene on {topic} within {timeout:g} s ({HINT})')
        return self._scene

    def _on_scene(self, scene: msg.SceneDescription) -> None:
        self._scene = scene
        if self._scene_arrived is not None and not self._scene_arrived.done():
            self._scene_arrived.set_result(scene)

    def _flush(self, deadline: Optional[float]) -> None:
        """Take the messages that already arrived: the executor runs subscriptions first."""
        self._flushed = Future()
        self._flush_guard.trigger()
        self._spin_until_done(self._flushed, deadline)

    def _on_flush(self) -> None:
        if self._flushed is not None and not self._flushed.done():
            self._flushed.set_result(True)

    # --- spinning -------------------------------------------------------------------------

    def _name(self, name: str) -> str:
        return f'{self._prefix}/{name}' if self._prefix else name

    def _spin_until_done(self, future: Future, deadline: Optional[float]) -> None:
        if self._executor is not None:
            self._executor.spin_until_future_complete(future, timeout_sec=_remaining(deadline))
        else:
            rclpy.spin_until_future_complete(self.node, future,
                                             timeout_sec=_remaining(deadline))

    def _wait_until(self, ready: Callable[[], bool], deadline: Optional[float]) -> bool:
        while not ready():
            if _expired(deadline):
                return False
            remaining = _remaining(deadline)
            self.spin_once(_POLL_S if remaining is None else min(_POLL_S, remaining))
        return True


# --- CLI --------------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f'{PROG}: error: {message}', file=sys.stderr)
    return 1


def _stamp(header: Any) -> str:
    return f'{header.stamp.sec}.{header.stamp.nanosec:09d}'


def _labels(text: Optional[str]) -> list[str]:
    return [label.strip() for label in (text or '').split(',') if label.strip()]


@contextmanager
def _session(namespace: str) -> Iterator[PerceptionClient]:
    """Yield a client with its own node; shut rclpy down afterwards."""
    rclpy.init(args=[])
    try:
        with PerceptionClient(namespace) as client:
            yield client
    finally:
        rclpy.try_shutdown()


def _run(args: argparse.Namespace, command: Callable[[PerceptionClient], int]) -> int:
    """Run command with a client; a PerceptionError becomes an error line and status 1."""
    try:
        with _session(args.namespace) as client:
            return command(client)
    except PerceptionError as error:
        return _fail(str(error))
    except (KeyboardInterrupt, ExternalShutdownException):
        return 130  # Ctrl-C while waiting: no traceback, the shell's status for SIGINT


def _query(args: argparse.Namespace) -> int:
    def command(client: PerceptionClient) -> int:
        response = client.query(args.question, _labels(args.labels), args.caption,
                                args.max_age, args.timeout, args.camera)
        scene = scene_from_msg(response.scene)
        if args.json:
            result = {'stamp': _stamp(response.scene.header),
                      'frame_id': response.scene.header.frame_id, **scene.to_dict()}
            if args.question.strip():
                result['answer'] = {'answer': response.answer,
                                    'confidence': response.confidence}
            print(json.dumps(result, ensure_ascii=False))
        else:
            print(scene.summary)
        return 0

    return _run(args, command)


def _locate(args: argparse.Namespace) -> int:
    def command(client: PerceptionClient) -> int:
        response = client.locate(args.query, args.max_age, args.timeout, args.camera)
        header, point = response.point.header, response.point.point
        if args.json:
            print(json.dumps({
                'success': response.success, 'message': response.message,
                'detection': detection_from_msg(response.detection).to_dict(),
                'point': {'frame_id': header.frame_id, 'stamp': _stamp(header),
                          'x': point.x, 'y': point.y, 'z': point.z},
                'matches': [detection_from_msg(d).to_dict() for d in response.matches]},
                ensure_ascii=False))
            return 0
        clock = client.node.get_clock()
        age = (clock.now() - Time.from_msg(header.stamp, clock_type=clock.clock_type))
        print(f'{args.query}: ({point.x:.2f}, {point.y:.2f}, {point.z:.2f}) m in '
              f'{header.frame_id}, score {response.detection.score:.2f}, '
              f'image {age.nanoseconds / 1e9:.2f} s old')
        return 0

    return _run(args, command)


def _time(stamp_ns: int) -> Any:
    """Return the builtin_interfaces Time of nanoseconds (0: zero, unbounded)."""
    from builtin_interfaces.msg import Time as TimeMsg

    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return TimeMsg(sec=sec, nanosec=nanosec)


def _recall(args: argparse.Namespace) -> int:
    def command(client: PerceptionClient) -> int:
        response = client.recall(args.query, args.max_results, timeout=args.timeout)
        if args.json:
            matches = [{'stamp': _stamp(match.header), 'frame_id': match.header.frame_id,
                        'source': match.source, 'score': match.score, 'caption': match.caption,
                        'detections': [detection_from_msg(d).to_dict()
                                       for d in match.detections]}
                       for match in response.matches]
            print(json.dumps({'success': response.success, 'message': response.message,
                              'matches': matches}, ensure_ascii=False))
            return 0
        for match in response.matches:
            labels = ', '.join(d.label for d in match.detections)
            print(f'[{_stamp(match.header)}] {match.source} score {match.score:.3f}'
                  + (f' ({labels})' if labels else '')
                  + (f': {match.caption}' if match.caption else ''))
        if not response.matches:
            print(f'nothing remembered matches {args.query!r}')
        return 0

    return _run(args, command)


def _set_labels(args: argparse.Namespace) -> int:
    def command(client: PerceptionClient) -> int:
        try:
            labels = client.set_labels(_labels(args.labels), args.timeout)
        except PerceptionTimeout:
            raise
        except PerceptionError as error:
            return _fail(f'labels rejected: {error}')
        print(json.dumps(labels) if args.json else ', '.join(labels))
        return 0

    return _run(args, command)


def _ask_topic(args: argparse.Namespace) -> int:
    def command(client: PerceptionClient) -> int:
        answer = client.ask(args.question, args.timeout, args.camera)
        if args.json:
            print(json.dumps({'id': answer.id, 'stamp': _stamp(answer.header),
                              'camera': answer.camera, 'answer': answer.answer,
                              'confidence': answer.confidence}))
        else:
            print(f'{answer.answer}  (confidence {answer.confidence:.3f})')
        return 0

    return _run(args, command)


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

    def command(client: PerceptionClient) -> int:
        # Streams, so its own subscriptions (volatile: only what is published from now on).
        scene = f'{args.camera}/scene' if args.camera else 'scene'
        client.node.create_subscription(msg.SceneDescription, scene, on_scene, 10)
        client.node.create_subscription(msg.Answer, 'answers', on_answer, 10)
        deadline = _deadline(args.timeout)
        try:
            while (args.count <= 0 or printed < args.count) and not _expired(deadline):
                client.spin_once(0.1)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        if args.count > 0 and printed < args.count:
            return _fail(f'{printed} of {args.count} messages within {args.timeout:g} s')
        return 0

    return _run(args, command)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ROS subcommands: query, locate, recall, watch, labels, ask-topic."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--namespace', '-n', default='',
                        help='namespace of the perception node (default: the root)')
    common.add_argument('--json', action='store_true', help='print JSON instead of text')

    def add(name: str, help_text: str, timeout: float, run: Any,
            camera_help: str = CAMERA_HELP) -> argparse.ArgumentParser:
        command = subparsers.add_parser(name, parents=[common], help=help_text,
                                        description=help_text)
        command.add_argument('--timeout', type=float, default=timeout,
                             help='seconds to wait, 0 = no limit (default: %(default)s)')
        if camera_help:
            command.add_argument('--camera', default='', help=camera_help)
        command.set_defaults(run=run, formatter=None)
        return command

    query = add('query', 'ask the running node about its latest frame (query service)', 30.0,
                _query)
    query.add_argument('question', nargs='?', default='', help='optional visual question')
    query.add_argument('--labels', help='comma-separated labels to detect this time')
    query.add_argument('--caption', action='store_true', help='caption the frame too')
    query.add_argument('--max-age', type=float, default=0.0,
                       help='fail if the latest frame is older than this many seconds')

    locate = add('locate', 'find one object by phrase and place it in 3D (locate service)',
                 30.0, _locate)
    locate.add_argument('query', help='what to find, e.g. "red cup"')
    locate.add_argument('--max-age', type=float, default=0.0,
                        help='fail if the latest frame is older than this many seconds')

    recall = add('recall', 'list remembered scenes that match a text, best first (recall '
                 'service)', 30.0, _recall, camera_help='')
    recall.add_argument('query', help='what to look for, e.g. "red circle"')
    recall.add_argument('--max-results', type=int, default=0,
                        help='most matches (default: 0 = 10)')

    watch = add('watch', 'print scene summaries and answers as the node publishes them', 0.0,
                _watch, camera_help='print the scenes of this camera (N/scene); default: the '
                                    "node's single camera (scene)")
    watch.add_argument('--count', type=int, default=0, help='stop after N messages (0 = never)')

    labels = add('labels', 'replace the detection vocabulary (set_labels service)', 10.0,
                 _set_labels, camera_help='')  # no --camera: the vocabulary is the node's
    labels.add_argument('labels', help='comma-separated labels, e.g. "cup,person,chair"')

    ask = add('ask-topic', 'publish a Question on questions and wait for its Answer', 30.0,
              _ask_topic)
    ask.add_argument('question', help='the question')
