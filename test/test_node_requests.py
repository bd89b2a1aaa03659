"""
Requests under load: every Question and every query gets its reply, and neither starves the other.

The node runs on the tiny models; the test floods it as a busy planner (or a hostile peer) would.
"""

import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from node_harness import (frame, image_publisher, probe, ros_node,  # noqa: E402,I100
                          spin_until)
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from vlm_perception import msg, srv  # noqa: E402
from vlm_perception.ros.node import QUESTION_BATCH  # noqa: E402

KEEP_ALL = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope='module')
def perception(tiny_preset):
    """Start perception_node on the tiny preset; stop it and check a clean exit."""
    node = ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={tiny_preset}', '-p', 'capabilities:=[detect, vqa]',
        '-p', 'warmup:=false'])
    yield node
    node.stop_cleanly()


@pytest.fixture(scope='module')
def ros(perception):
    """Return this test's node once the perception node answers a query about a frame."""
    with probe(perception, 'node_requests_test') as node:
        client = node.create_client(srv.QueryScene, 'query')
        assert client.wait_for_service(timeout_sec=30.0), perception.output()
        publisher = image_publisher(node)
        for sec in range(1, 100):
            publisher.publish(frame(sec))
            future = client.call_async(srv.QueryScene.Request())
            rclpy.spin_until_future_complete(node, future, timeout_sec=10.0)
            if future.done() and future.result().success:
                break
        node.destroy_client(client)
        yield node


def flood_questions(node, count: int, prefix: str) -> tuple[list, dict]:
    """Publish count Questions at once (reliable, keep all); return the publisher and answers."""
    answers: dict[str, list] = {}
    node.create_subscription(msg.Answer, 'answers',
                             lambda a: answers.setdefault(a.id, []).append(
                                 (time.monotonic(), a)), KEEP_ALL)
    publisher = node.create_publisher(msg.Question, 'questions', KEEP_ALL)
    assert spin_until(node, lambda: publisher.get_subscription_count() > 0, timeout=10.0)
    for index in range(count):
        publisher.publish(msg.Question(id=f'{prefix}-{index}', question='what is this?'))
    return publisher, answers


def test_a_burst_of_100_questions_gets_100_answers(ros) -> None:
    _, answers = flood_questions(ros, 100, 'burst')
    assert spin_until(ros, lambda: len(answers) == 100, timeout=60.0), len(answers)
    assert all(len(replies) == 1 for replies in answers.values())  # one Answer per Question
    assert all(replies[0][1].success for replies in answers.values())


def test_questions_asked_together_each_get_their_own_answer_or_reason(ros, tiny_preset) -> None:
    from vlm_perception.core.engine import EngineConfig, PerceptionEngine

    asked = {'colour': 'what colour is the cup', 'count': 'how many dogs are there',
             'door': 'is the door open', 'where': 'where is the red book',
             'long': 'cup ' * 100, 'camera': 'what is this?'}
    answers: dict[str, msg.Answer] = {}
    ros.create_subscription(msg.Answer, 'answers', lambda a: answers.setdefault(a.id, a),
                            KEEP_ALL)
    publisher = ros.create_publisher(msg.Question, 'questions', KEEP_ALL)
    assert spin_until(ros, lambda: publisher.get_subscription_count() > 0, timeout=10.0)
    for name, question in asked.items():  # at once: queued together, answered in batches
        publisher.publish(msg.Question(id=name, question=question,
                                       camera='nowhere' if name == 'camera' else ''))
    assert spin_until(ros, lambda: len(answers) == len(asked), timeout=60.0), answers.keys()
    assert not answers['long'].success and 'too long' in answers['long'].error
    assert not answers['camera'].success and 'unknown camera' in answers['camera'].error
    engine = PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu'))
    for name in ('colour', 'count', 'door', 'where'):
        answer = answers[name]
        assert answer.success, answer.error
        pixels = frame(answer.header.stamp.sec)  # the frame the answer is about
        expected = engine.answer(np.frombuffer(pixels.data, np.uint8).reshape(
            pixels.height, pixels.width, 3), asked[name])
        assert (answer.question, answer.answer) == (asked[name], expected.answer)
        assert answer.confidence == pytest.approx(expected.confidence, abs=1e-5)


def test_20_concurrent_queries_all_get_replies(ros) -> None:
    client = ros.create_client(srv.QueryScene, 'query')
    assert client.wait_for_service(timeout_sec=10.0)
    # wait_for_service sees the request topic matched, not yet the reply topic: DDS drops
    # replies sent before that (half of the 20 were lost once in CI), so one reply first.
    first = client.call_async(srv.QueryScene.Request())
    rclpy.spin_until_future_complete(ros, first, timeout_sec=30.0)
    assert first.done()
    futures = [client.call_async(srv.QueryScene.Request(question='what is this?'))
               for _ in range(20)]
    assert spin_until(ros, lambda: all(f.done() for f in futures), timeout=60.0), \
        sum(f.done() for f in futures)
    assert all(f.result().success for f in futures), [f.result().message for f in futures]


def test_a_question_flood_does_not_starve_a_query(ros) -> None:
    _, answers = flood_questions(ros, 100, 'flood')
    assert spin_until(ros, lambda: answers, timeout=20.0)  # the flood is being answered
    client = ros.create_client(srv.QueryScene, 'query')
    future = client.call_async(srv.QueryScene.Request(question='what is this?'))
    sent = time.monotonic()
    assert spin_until(ros, future.done, timeout=60.0)
    replied = time.monotonic()
    assert future.result().success, future.result().message
    between = sum(1 for replies in answers.values() for at, _ in replies if sent < at < replied)
    # Fair: a batch of questions (the tiny models answer one in about 10 ms) before each of the
    # query's engine turns (detect, then its question), the one whose answers were in transit
    # when it was sent, and the one begun while its reply is (CI once saw 25 = 3 batches and
    # one answer of the next); unfair would be most of the ~100 still queued.
    assert between <= 4 * QUESTION_BATCH, f'{between} questions answered while the query waited'
    assert spin_until(ros, lambda: len(answers) == 100, timeout=60.0), len(answers)


def test_questions_beyond_the_queue_are_answered_busy(ros, tiny_preset) -> None:
    small = ros_node('vlm_perception.ros.node', [
        '-r', '__ns:=/small_queue', '-p', f'preset:={tiny_preset}',
        '-p', 'capabilities:=[vqa]', '-p', 'warmup:=false', '-p', 'max_pending_questions:=3'])
    try:
        small.require_ready()
        answers: dict[str, msg.Answer] = {}
        ros.create_subscription(msg.Answer, '/small_queue/answers',
                                lambda a: answers.setdefault(a.id, a), KEEP_ALL)
        publisher = ros.create_publisher(msg.Question, '/small_queue/questions', KEEP_ALL)
        images = image_publisher(ros, '/small_queue/image')
        assert spin_until(ros, lambda: publisher.get_subscription_count() > 0, timeout=10.0)
        for sec in range(1, 100):  # until answers take the model's time, not fail at once
            images.publish(frame(sec))
            publisher.publish(msg.Question(id=f'probe-{sec}', question='what is this?'))
            if spin_until(ros, lambda: answers.get(f'probe-{sec}'), timeout=5.0) \
                    and answers[f'probe-{sec}'].success:
                break
        answers.clear()
        for index in range(25):  # within the subscription's 10 x 3, beyond the queue's 3
            publisher.publish(msg.Question(id=f'small-{index}', question='what is this?'))
        assert spin_until(ros, lambda: len(answers) == 25, timeout=60.0), len(answers)
        busy = [a for a in answers.values() if a.error.startswith('busy:')]
        assert busy and all(not a.success for a in busy)
        assert 'max_pending_questions' in busy[0].error
    finally:
        small.stop_cleanly()
