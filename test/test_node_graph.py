"""perception_node in its own process, on the tiny models, driven through real rclpy."""

import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402,I100
from node_harness import (call, cli, diagnostics_values, frame,  # noqa: E402
                          get_parameter, image_publisher, probe, ros_node, set_parameter,
                          spin_until)
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from vlm_perception import msg, srv  # noqa: E402

NODE = '/vlm_perception'


@pytest.fixture(scope='module')
def perception(tiny_preset):
    """Start perception_node on the tiny preset; stop it with SIGINT and check a clean exit."""
    node = ros_node('vlm_perception.ros.node', [
        '-p', f'preset:={tiny_preset}', '-p', 'scene_period:=0.0', '-p', 'warmup:=false'])
    yield node
    node.stop_cleanly()


@pytest.fixture(scope='module')
def ros(perception):
    """Return this test's node, once the perception node serves its query service."""
    with probe(perception, 'node_graph_test') as node:
        client = node.create_client(srv.QueryScene, 'query')
        assert client.wait_for_service(timeout_sec=30.0), perception.output()
        node.destroy_client(client)
        yield node


class Collector:
    """Keep every message of a topic."""

    def __init__(self, node, message_type, topic: str) -> None:
        self.messages = []
        self.subscription = node.create_subscription(message_type, topic,
                                                     self.messages.append, 10)


def publish_until(node, publisher, done, first_sec: int, timeout: float = 20.0,
                  make=frame) -> int:
    """Publish frames (stamp first_sec, first_sec + 1, ...) until done(); return the last sec."""
    sec = first_sec
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        publisher.publish(make(sec))
        spin_until(node, done, timeout=0.2)
        sec += 1
    assert done(), 'condition not met while publishing frames'
    return sec - 1


def query(node, **fields) -> srv.QueryScene.Response:
    """Call the query service."""
    return call(node, node.create_client(srv.QueryScene, 'query'),
                srv.QueryScene.Request(**fields))


def make_latest(node, first_sec: int) -> None:
    """Publish frames from first_sec on until a query is about one of them."""
    def latest_is_new() -> bool:
        response = query(node)
        return response.success and response.scene.header.stamp.sec >= first_sec

    publish_until(node, image_publisher(node), latest_is_new, first_sec)


def test_every_contract_topic_and_service_exists_with_its_type(ros) -> None:
    publishers = {
        '/detections': 'vlm_perception/msg/DetectionArray',
        '/scene': 'vlm_perception/msg/SceneDescription',
        '/scene_text': 'std_msgs/msg/String',
        '/answers': 'vlm_perception/msg/Answer',
        '/image_annotated': 'sensor_msgs/msg/Image',
        '/markers': 'visualization_msgs/msg/MarkerArray',
        '/diagnostics': 'diagnostic_msgs/msg/DiagnosticArray',
    }
    subscriptions = {'/image': 'sensor_msgs/msg/Image',
                     '/questions': 'vlm_perception/msg/Question'}
    services = {'/query': 'vlm_perception/srv/QueryScene',
                '/set_labels': 'vlm_perception/srv/SetLabels',
                '/locate': 'vlm_perception/srv/Locate'}

    def graph(kind):
        if 'vlm_perception' not in ros.get_node_names():  # else the queries below raise
            return {}
        names = getattr(ros, f'get_{kind}_names_and_types_by_node')('vlm_perception', '/')
        return {name: types[0] for name, types in names}

    assert spin_until(ros, lambda: publishers.items() <= graph('publisher').items()
                      and subscriptions.items() <= graph('subscriber').items()
                      and services.items() <= graph('service').items(), timeout=20.0), (
        graph('publisher'), graph('subscriber'), graph('service'))


def test_device_auto_without_cuda_warns_and_runs_on_the_cpu(ros, perception) -> None:
    torch = pytest.importorskip('torch')
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    assert 'running on the CPU' in perception.output()


def test_outputs_carry_the_source_stamp_and_frame_id(ros) -> None:
    collectors = {
        'detections': Collector(ros, msg.DetectionArray, 'detections'),
        'scene': Collector(ros, msg.SceneDescription, 'scene'),
        'image_annotated': Collector(ros, Image, 'image_annotated'),
        'markers': Collector(ros, MarkerArray, 'markers'),
    }
    text = Collector(ros, String, 'scene_text')
    publisher = image_publisher(ros)

    def headers():
        for topic, collector in collectors.items():
            for message in collector.messages:
                yield topic, (message.markers[0].header if topic == 'markers'
                              else message.header)

    def all_seen():
        return text.messages and {topic for topic, _ in headers()} == set(collectors)

    publish_until(ros, publisher, all_seen, first_sec=1000)
    for topic, header in headers():
        assert header.frame_id == 'test_camera', topic
        assert 1000 <= header.stamp.sec < 1100 and header.stamp.nanosec == 42, topic
    annotated = collectors['image_annotated'].messages[0]
    assert (annotated.width, annotated.height, annotated.encoding) == (96, 64, 'rgb8')
    assert text.messages[0].data


def test_query_question_labels_caption(ros) -> None:
    make_latest(ros, 2000)
    response = query(ros, question='what colour is the cup?')
    assert response.success, response.message
    assert response.answer and 0.0 <= response.confidence <= 1.0
    assert response.scene.header.frame_id == 'test_camera'
    assert 2000 <= response.scene.header.stamp.sec < 2100
    assert not response.scene.caption  # caption not asked for

    labels = ['red circle', 'blue square']
    response = query(ros, labels=labels, caption=True)
    assert response.success, response.message
    assert response.scene.caption
    assert response.scene.detections  # the tiny preset's threshold is 0
    assert {d.label for d in response.scene.detections} <= set(labels)
    assert response.scene.summary


def test_query_rejects_a_frame_older_than_max_age(ros) -> None:
    make_latest(ros, 3000)
    response = query(ros, max_age=5.0)  # the frames are stamped in 1970
    assert not response.success
    assert 'old' in response.message


def test_set_labels_acknowledges_the_vocabulary_and_sets_the_parameter(ros) -> None:
    client = ros.create_client(srv.SetLabels, 'set_labels')
    response = call(ros, client, srv.SetLabels.Request(labels=['red circle', ' blue square ']))
    assert response.success, response.message
    assert list(response.labels) == ['red circle', 'blue square']
    assert get_parameter(ros, 'labels') == ['red circle', 'blue square']

    response = call(ros, client, srv.SetLabels.Request(labels=[]))
    assert not response.success and 'empty' in response.message
    assert list(response.labels) == ['red circle', 'blue square']

    assert set_parameter(ros, 'labels', ['cup', 'dog']).successful  # as a parameter: same effect
    make_latest(ros, 4500)
    detections = query(ros).scene.detections
    assert detections and {d.label for d in detections} <= {'cup', 'dog'}
    response = call(ros, client, srv.SetLabels.Request(labels=['cup', 'dog', 'chair']))
    assert list(response.labels) == ['cup', 'dog', 'chair']


def test_question_topic_answers_with_the_same_id(ros) -> None:
    answers = Collector(ros, msg.Answer, 'answers')
    questions = ros.create_publisher(msg.Question, 'questions', 10)
    assert spin_until(ros, lambda: questions.get_subscription_count() > 0)
    make_latest(ros, 4000)
    questions.publish(msg.Question(id='q-17', question='how many cups are there?'))
    questions.publish(msg.Question(id='q-empty', question='   '))
    assert spin_until(ros, lambda: {'q-17', 'q-empty'} <= {a.id for a in answers.messages})
    by_id = {answer.id: answer for answer in answers.messages}
    assert by_id['q-17'].success and by_id['q-17'].answer
    assert by_id['q-17'].header.frame_id == 'test_camera'
    assert by_id['q-17'].question == 'how many cups are there?'
    assert not by_id['q-empty'].success and 'empty' in by_id['q-empty'].error


def test_over_long_questions_get_a_refusal_on_both_paths(ros) -> None:
    answers = Collector(ros, msg.Answer, 'answers')
    questions = ros.create_publisher(msg.Question, 'questions', 10)
    assert spin_until(ros, lambda: questions.get_subscription_count() > 0)
    make_latest(ros, 4200)
    long_question = 'is there ' + ' and '.join(['a cup'] * 40) + '?'  # under 512 characters
    questions.publish(msg.Question(id='q-long', question=long_question))
    assert spin_until(ros, lambda: 'q-long' in {a.id for a in answers.messages})
    (answer,) = [a for a in answers.messages if a.id == 'q-long']
    assert not answer.success and answer.error.startswith('question too long:'), answer.error
    response = query(ros, question=long_question)
    assert not response.success and response.message.startswith('question too long:')


def test_bad_parameter_values_are_rejected_and_the_old_value_stays(ros) -> None:
    assert not set_parameter(ros, 'max_rate', -1.0).successful
    assert get_parameter(ros, 'max_rate') == 0.0
    assert not set_parameter(ros, 'detection_threshold', 2.0).successful
    assert not set_parameter(ros, 'image_reliability', 'sometimes').successful
    assert not set_parameter(ros, 'capabilities', ['detect', 'fly']).successful
    assert get_parameter(ros, 'capabilities') == ['detect', 'tags', 'vqa', 'caption']
    assert not set_parameter(ros, 'device', 'cuda').successful  # read-only: models stay put
    assert not set_parameter(ros, 'preset', 'no_such_preset').successful  # checked at once
    assert not set_parameter(ros, 'labels', ['x' * 1000]).successful
    assert set_parameter(ros, 'scene_period', 0.5).successful
    assert get_parameter(ros, 'scene_period') == 0.5
    assert set_parameter(ros, 'scene_period', 0.0).successful


def test_max_rate_is_zero_or_a_usable_rate_and_a_change_wakes_the_stream(ros) -> None:
    for unusable in (1e-10, 1e-9, 0.009, 1001.0, float('nan')):
        assert not set_parameter(ros, 'max_rate', unusable).successful, unusable
    detections = Collector(ros, msg.DetectionArray, 'detections')
    publisher = image_publisher(ros)
    try:
        assert set_parameter(ros, 'max_rate', 0.01).successful  # 100 s from the last frame
        for sec in range(7000, 7005):  # the stream now waits out the rate
            publisher.publish(frame(sec))
            spin_until(ros, lambda: False, timeout=0.2)
    finally:
        assert set_parameter(ros, 'max_rate', 0.0).successful  # must not wait out the 100 s
    publish_until(ros, publisher, lambda: any(d.header.stamp.sec >= 7100
                                              for d in detections.messages),
                  first_sec=7100, timeout=30.0)


@pytest.mark.parametrize('max_age', [-1.0, float('nan'), float('-inf'), float('inf')])
def test_query_max_age_must_be_finite_and_not_negative(ros, max_age: float) -> None:
    make_latest(ros, 7500)
    response = query(ros, max_age=max_age)
    assert not response.success and 'max_age' in response.message, response.message


@pytest.mark.parametrize('name', ['max_image_age'])
@pytest.mark.parametrize('value', [-1.0, float('nan'), float('-inf')])
def test_max_image_age_must_be_finite_and_not_negative(ros, name: str, value: float) -> None:
    assert not set_parameter(ros, name, value).successful


def test_a_frame_from_the_future_fails_every_age_limit(ros, perception) -> None:
    publisher = image_publisher(ros)
    ahead = frame(0)
    now = ros.get_clock().now().to_msg()
    ahead.header.stamp.sec, ahead.header.stamp.nanosec = now.sec + 10, now.nanosec

    def latest_is_ahead() -> bool:
        return query(ros).scene.header.stamp.sec == now.sec + 10

    def publish_ahead(_sec: int):
        return ahead

    publish_until(ros, publisher, latest_is_ahead, first_sec=0, make=publish_ahead)
    response = query(ros, max_age=1.0)
    assert not response.success and 'future' in response.message, response.message
    assert query(ros, max_age=0.0).success  # no limit: served
    assert 'future stamp' in perception.output()


def test_labels_set_as_a_parameter_are_stored_cleaned(ros) -> None:
    result = set_parameter(ros, 'labels', [' cup ', 'cup', '', 'dog']).successful
    stored = get_parameter(ros, 'labels')
    assert stored == ['cup', 'dog'] or (not result and stored != [' cup ', 'cup', '', 'dog'])


def test_empty_and_undeclared_parameter_names_are_refused(ros) -> None:
    assert not set_parameter(ros, '', 1.0).successful
    assert not set_parameter(ros, 'max_rte', 1.0).successful


def test_diagnostics_status_names_carry_the_full_node_name(ros) -> None:
    arrays = Collector(ros, DiagnosticArray, '/diagnostics')
    assert spin_until(ros, lambda: arrays.messages, timeout=10.0)
    names = {status.name for status in arrays.messages[-1].status}
    assert f'{NODE}: perception' in names, names


def bad_images():
    """Malformed sensor_msgs/Image variants, each with why it is bad."""
    def broken(**change):
        image = frame(5000)
        for name, value in change.items():
            setattr(image, name, value)
        return image

    return {
        'wrong step': broken(step=5),
        'data shorter than the size': broken(height=640),
        'unknown encoding': broken(encoding='yuv_nonsense'),
        'empty': broken(height=0, width=0, step=0, data=b''),
        'huge': broken(height=20000, width=20000, step=60000),
    }


def test_malformed_input_is_rejected_and_the_node_keeps_serving(ros, perception) -> None:
    diagnostics = Collector(ros, DiagnosticArray, '/diagnostics')
    publisher = image_publisher(ros)
    assert spin_until(ros, lambda: publisher.get_subscription_count() > 0)
    for image in bad_images().values():
        publisher.publish(image)
        spin_until(ros, lambda: False, timeout=0.3)  # depth 1: let each one arrive
    questions = ros.create_publisher(msg.Question, 'questions', 10)
    questions.publish(msg.Question(id='long', question='why ' * 400))
    labels = ros.create_client(srv.SetLabels, 'set_labels')
    for bad in ([], ['x' * 600], [f'label {i}' for i in range(300)]):
        assert not call(ros, labels, srv.SetLabels.Request(labels=bad)).success
    assert not query(ros, question='why ' * 400).success
    assert not query(ros, labels=['']).success

    def rejected(cause: str) -> int:
        values = diagnostics_values(diagnostics.messages[-1]) if diagnostics.messages else {}
        return int(values.get(f'rejected: {cause}', 0))

    assert spin_until(ros, lambda: rejected('image') >= 3 and rejected('question') >= 1
                      and rejected('query') >= 2, timeout=10.0), (
        diagnostics_values(diagnostics.messages[-1]))
    assert perception.alive()
    make_latest(ros, 6000)
    assert query(ros, question='what is this?').success
    assert 'rejected image' in perception.output()


def test_cli_query_labels_and_ask_topic(ros) -> None:
    make_latest(ros, 7000)
    result = cli('query', 'what colour is the cup?', '--labels', 'cup,dog', '--caption', '--json')
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply['frame_id'] == 'test_camera' and reply['caption'] and reply['answer']['answer']
    assert {d['label'] for d in reply['detections']} <= {'cup', 'dog'}

    result = cli('query', '--max-age', '1')
    assert result.returncode == 1 and 'old' in result.stderr

    result = cli('labels', 'cup, person ,chair')
    assert result.returncode == 0 and result.stdout.strip() == 'cup, person, chair'
    assert cli('labels', ',').returncode == 1

    result = cli('ask-topic', 'how many cups are there?', '--json')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)['answer']

    result = cli('query', '--namespace', 'elsewhere', '--timeout', '1')
    assert result.returncode == 1 and '/elsewhere/query' in result.stderr


def test_cli_watch_prints_summaries_then_ends(ros) -> None:
    watch = subprocess.Popen([sys.executable, '-m', 'vlm_perception.cli', 'watch', '--count',
                              '2', '--timeout', '60', '--json'],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        publish_until(ros, image_publisher(ros), lambda: watch.poll() is not None,
                      first_sec=8000, timeout=60.0)
        stdout, stderr = watch.communicate(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert len(lines) == 2 and all(line['type'] == 'scene' and line['summary'] for line in lines)
