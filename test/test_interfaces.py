"""The generated interfaces import, and every message type survives serialization."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.ros

rclpy_serialization = pytest.importorskip('rclpy.serialization')
msg = pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')
srv = pytest.importorskip('vlm_perception.srv', reason='needs the colcon build (make build)')
Point = pytest.importorskip('geometry_msgs.msg').Point
Header = pytest.importorskip('std_msgs.msg').Header
CompressedImage = pytest.importorskip('sensor_msgs.msg').CompressedImage


def sample_detection(label: str = 'red cup') -> 'msg.Detection':
    """Return a detection with every field set to a non-default value."""
    return msg.Detection(label=label, score=0.75, center_x=320.5, center_y=240.25, size_x=64.0,
                         size_y=48.0, position=Point(x=1.0, y=-0.5, z=2.25), has_position=True)


def sample_header() -> Header:
    """Return a header with a stamp and frame."""
    header = Header(frame_id='camera_optical_frame')
    header.stamp.sec, header.stamp.nanosec = 1700000000, 123456789
    return header


def sample_scene() -> 'msg.SceneDescription':
    """Return a scene description with every field set."""
    return msg.SceneDescription(
        header=sample_header(), caption='a red cup on a table',
        tags=[msg.LabelScore(label='kitchen', score=0.5), msg.LabelScore(label='cup', score=0.25)],
        detections=[sample_detection(), sample_detection('table')],
        summary='I see a red cup on a table.')


def sample_messages() -> list:
    """Return one filled message of every type the package defines."""
    return [
        sample_detection(),
        msg.DetectionArray(header=sample_header(), detections=[sample_detection()]),
        msg.LabelScore(label='kitchen', score=0.5),
        sample_scene(),
        msg.Question(id='q-1', question='what color is the cup?', camera='left'),
        msg.Answer(header=sample_header(), id='q-1', question='what color is the cup?',
                   camera='left', answer='red', confidence=0.875, success=True, error=''),
        srv.QueryScene.Request(question='what is on the table?', labels=['cup'], caption=True,
                               max_age=0.5, camera='front/left'),
        srv.Locate.Request(query='red cup', max_age=0.5, camera='right'),
        srv.QueryScene.Response(success=True, message='ok', answer='a cup', confidence=0.5,
                                scene=sample_scene()),
        msg.SceneMemory(header=sample_header(), source='/robot1/vlm_perception:left',
                        score=0.625, caption='a red cup', detections=[sample_detection()],
                        thumbnail=CompressedImage(header=sample_header(), format='jpeg',
                                                  data=b'\xff\xd8\xff')),
        srv.Recall.Request(query='red cup', max_results=5, since=sample_header().stamp,
                           until=sample_header().stamp, source='/vlm_perception',
                           thumbnails=True),
        srv.Recall.Response(success=True, message='1 matches', matches=[msg.SceneMemory(
            header=sample_header(), score=1.0, detections=[sample_detection()])]),
        srv.SetLabels.Request(labels=['cup', 'person']),
        srv.SetLabels.Response(success=True, message='2 labels', labels=['cup', 'person']),
    ]


@pytest.mark.parametrize('message', sample_messages(), ids=lambda m: type(m).__name__)
def test_round_trip(message) -> None:
    data = rclpy_serialization.serialize_message(message)
    assert rclpy_serialization.deserialize_message(data, type(message)) == message


def test_interfaces_do_not_import_heavy_modules() -> None:
    # A planner that only wants our messages must not pay for torch or rclpy.
    code = ('import sys, vlm_perception.msg, vlm_perception.srv; '
            'print(sorted(m for m in ("torch", "transformers", "open_clip", "rclpy", "cv2") '
            'if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'
