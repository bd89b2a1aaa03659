"""Offline bag runs on real rosbag2 files (MCAP and sqlite3) with the tiny models, no ROS."""

import json
import os
from pathlib import Path
import subprocess
import sys

import cv2
from mcap.reader import make_reader
import numpy as np
import pytest

from bag_checks import (core_rows, engine_detections, message_rows, read_bag,  # noqa: I100
                        vision_msgs_prefix)
from vlm_perception.bag.run import BagSettings, run_bag
from vlm_perception.bag.shapes import record_shapes, ShapesRecording, START_NS
from vlm_perception.bag.typestore import load_types
from vlm_perception.bag.writer import OutputBag, qos
from vlm_perception.core import message_layout as layout
from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError
from vlm_perception.core.memory import MemoryConfig, SceneMemory
from vlm_perception.core.options import ModelOptions
from vlm_perception.shapes.drift import DriftingScene

SMALL = {'width': 128, 'height': 96}
STORAGES = ['mcap', 'sqlite3']


@pytest.fixture(scope='module')
def engine(tiny_preset: Path) -> PerceptionEngine:
    """Return the tiny models; captions of 4 tokens (random weights ramble for 48)."""
    return PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu',
                                         options=ModelOptions(caption_max_new_tokens=4)))


@pytest.fixture(scope='module')
def types():
    return load_types()


def _shapes_bag(folder: Path, storage: str, types) -> Path:
    """Eight 128x96 frames at 10 Hz with depth, camera_info and ground truth."""
    path = folder / f'shapes_{storage}'
    record_shapes(path, ShapesRecording(frames=8, storage=storage, seed=3, **SMALL), types)
    return path


@pytest.fixture(scope='module', params=STORAGES)
def shapes_bag(request, tmp_path_factory: pytest.TempPathFactory, types) -> Path:
    """Record the shapes bag in each storage format."""
    return _shapes_bag(tmp_path_factory.mktemp('bags'), request.param, types)


@pytest.fixture(scope='module')
def mcap_bag(tmp_path_factory: pytest.TempPathFactory, types) -> Path:
    """Record the shapes bag for the tests the storage format does not matter to."""
    return _shapes_bag(tmp_path_factory.mktemp('bags'), 'mcap', types)


@pytest.fixture(scope='module')
def seen(shapes_bag: Path, engine: PerceptionEngine, types,
         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list[str]]:
    """Run over shapes_bag: detections, tags and captions, a scene every 0.25 s."""
    out = tmp_path_factory.mktemp('out') / 'seen'
    notices: list[str] = []
    report = run_bag(shapes_bag, out, engine, BagSettings(scene_period=0.25), types=types,
                     notice=notices.append)
    return out, report, notices


def test_shapes_bag_holds_the_seeded_frames(shapes_bag: Path, types) -> None:
    topics = read_bag(shapes_bag, types)
    assert {name: len(items) for name, items in topics.items()} == {
        '/image': 8, '/camera_info': 8, '/depth': 8, '/ground_truth': 8}
    scene = DriftingScene(np.random.default_rng(3), SMALL['width'], SMALL['height'])
    for index, (log_ns, image, _) in enumerate(topics['/image']):
        assert log_ns == START_NS + index * 100_000_000 == layout.stamp_ns(image.header.stamp)
        np.testing.assert_array_equal(layout.read_rgb(image), scene.step(0.1))
        depth = layout.read_depth(topics['/depth'][index][1], 0.001)
        np.testing.assert_allclose(depth.metres(0, 96, 0, 128), scene.depth_metres(), atol=5e-4)
        truth = topics['/ground_truth'][index][1]
        assert [item.label for item in truth.detections] == \
            [item.label for item in scene.ground_truth()]
    info = topics['/camera_info'][0][1]
    assert list(info.k) == list(scene.k) and info.distortion_model == 'plumb_bob'
    assert image.header.frame_id == 'camera_optical_frame' and image.encoding == 'rgb8'


def test_output_detections_are_the_engines_on_the_same_frames(seen, shapes_bag: Path,
                                                              engine: PerceptionEngine,
                                                              types) -> None:
    out, report, notices = seen
    source, result = read_bag(shapes_bag, types), read_bag(out, types)
    assert report.frames == report.total == 8 and not report.interrupted
    assert len(result['/detections']) == 8
    for index, (log_ns, array, _) in enumerate(result['/detections']):
        image_log, image, _ = source['/image'][index]
        assert log_ns == image_log and array.header == image.header  # stamped as the source
        expected = engine_detections(engine, image, source['/depth'][index][1],
                                     source['/camera_info'][index][1])
        assert expected and any(item.position is not None for item in expected)
        assert message_rows(array) == core_rows(expected)
    for topic in ('/image', '/depth', '/camera_info', '/ground_truth'):  # copied as they were
        assert [item[::2] for item in result[topic]] == [item[::2] for item in source[topic]]
    assert report.written == {topic: len(items) for topic, items in result.items()}
    assert any('vision_msgs' in notice for notice in notices) != types.vision_msgs


def test_scenes_every_scene_period_of_bag_time(seen, shapes_bag: Path,
                                               engine: PerceptionEngine, types) -> None:
    out, _, _ = seen
    source, result = read_bag(shapes_bag, types), read_bag(out, types)
    scene_times = [log_ns for log_ns, _, _ in result['/scene']]
    image_times = [log_ns for log_ns, _, _ in source['/image']]
    assert scene_times == image_times[::3]  # 0.25 s at 10 Hz: frames 0, 3, 6
    for (log_ns, scene, _), (_, text, _) in zip(result['/scene'], result['/scene_text']):
        index = image_times.index(log_ns)
        image = source['/image'][index][1]
        frame = engine.frame(layout.read_rgb(image).copy())
        assert scene.header == image.header and text.data == scene.summary
        assert scene.caption == engine.caption(frame)
        assert [(tag.label, tag.score) for tag in scene.tags] == \
            [(tag.label, np.float32(tag.score)) for tag in engine.tags(frame)]
        assert message_rows(scene) == message_rows(result['/detections'][index][1])


@pytest.mark.parametrize('shapes_bag', ['mcap'], indirect=True)
def test_mcap_output_reads_with_the_mcap_library(seen, types) -> None:
    out, report, _ = seen
    assert report.storage == 'mcap'  # the input's
    with open(out / f'{out.name}.mcap', 'rb') as stream:
        reader = make_reader(stream)
        assert reader.get_summary() is not None  # a complete file: summary and index written
        in_file_order = [message.log_time for _, _, message
                         in reader.iter_messages(log_time_order=False)]
        assert in_file_order == sorted(in_file_order)  # written in bag-time order
        found = {}
        for schema, channel, message in reader.iter_messages(log_time_order=True):
            assert schema.encoding == 'ros2msg' and channel.message_encoding == 'cdr'
            found.setdefault(channel.topic, []).append(
                (message.log_time, types.deserialize(message.data, schema.name)))
    ours = read_bag(out, types)
    assert {topic: len(items) for topic, items in found.items()} == \
        {topic: len(items) for topic, items in ours.items()}
    assert [(log_ns, message_rows(array)) for log_ns, array in found['/detections']] == \
        [(log_ns, message_rows(array)) for log_ns, array, _ in ours['/detections']]


def test_output_types_are_the_packages_as_rosidl_hashes_them(seen, types) -> None:
    """The recorded type hashes are those colcon's build generated (``ros2 bag play`` checks)."""
    out, _, _ = seen
    metadata = (out / 'metadata.yaml').read_text()
    from vlm_perception.bag.typestore import msg_directory

    installed = msg_directory('vlm_perception')
    if installed is None or not (installed / 'DetectionArray.json').is_file():
        pytest.skip('vlm_perception is not built (colcon): no type hashes to compare')
    for name in ('DetectionArray', 'SceneDescription'):
        hashes = json.loads((installed / f'{name}.json').read_text())['type_hashes']
        expected = next(item['hash_string'] for item in hashes
                        if item['type_name'] == f'vlm_perception/msg/{name}')
        assert expected in metadata


def test_output_messages_deserialise_with_rclpy(seen, types) -> None:
    out, _, _ = seen
    serialization = pytest.importorskip('rclpy.serialization')
    msg = pytest.importorskip('vlm_perception.msg')
    result = read_bag(out, types)
    _, ours, data = result['/detections'][0]
    theirs = serialization.deserialize_message(data, msg.DetectionArray)
    assert [(d.label, d.score, d.position.z) for d in theirs.detections] == \
        [(d.label, d.score, d.position.z) for d in ours.detections]
    scene = serialization.deserialize_message(result['/scene'][0][2], msg.SceneDescription)
    assert scene.summary == result['/scene'][0][1].summary


def test_detections_3d_where_vision_msgs_is_installed(mcap_bag: Path, engine, tmp_path: Path,
                                                      types) -> None:
    with_vision = load_types(search=[vision_msgs_prefix(tmp_path / 'prefix')])
    assert with_vision.vision_msgs and with_vision.sources['vision_msgs']
    out = tmp_path / 'seen3d'
    run_bag(mcap_bag, out, engine, BagSettings(capabilities=('detect',)), types=with_vision)
    result = read_bag(out, with_vision)
    assert len(result['/detections_3d']) == len(result['/detections']) == 8
    for (log_ns, boxes, _), (log_2d, array, _) in zip(result['/detections_3d'],
                                                      result['/detections']):
        placed = [item for item in array.detections if item.has_position]
        assert log_ns == log_2d and boxes.header == array.header and placed
        assert [(box.results[0].hypothesis.class_id, box.bbox.center.position.z,
                 box.bbox.size.x) for box in boxes.detections] == \
            [(item.label, item.position.z, item.size.x) for item in placed]


def test_compressed_images_are_decoded(engine, tmp_path: Path, types) -> None:
    source = tmp_path / 'compressed'
    bag = OutputBag(source, 'mcap', types)
    connection = bag.add_topic('/cam/image/compressed', 'sensor_msgs/msg/CompressedImage', qos(1))
    scene = DriftingScene(np.random.default_rng(4), **SMALL)
    frames = []
    for index in range(3):
        rgb = scene.step(0.1)
        frames.append(rgb)
        png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
        stamp = START_NS + index * 10**8
        bag.queue_message(connection, stamp, types.make(
            'sensor_msgs/msg/CompressedImage', header=layout.header(types.make, stamp, 'cam'),
            format='png', data=png))
    bag.close()
    out = tmp_path / 'seen'
    run_bag(source, out, engine, BagSettings(image_topic='/cam/image', capabilities=('detect',)),
            types=types)  # /cam/image is read from /cam/image/compressed
    result = read_bag(out, types)
    assert set(result) == {'/cam/image/compressed', '/cam/detections', '/cam/scene',
                           '/cam/scene_text'}
    for rgb, (_, array, _) in zip(frames, result['/cam/detections'], strict=True):
        assert message_rows(array) == core_rows(engine.detect(engine.frame(rgb)))


def test_a_rerun_replaces_the_outputs_it_reads(seen, engine, tmp_path: Path, types) -> None:
    out, _, _ = seen
    notices: list[str] = []
    again = tmp_path / 'again'
    run_bag(out, again, engine, BagSettings(capabilities=('detect',)), types=types,
            notice=notices.append)
    result = read_bag(again, types)
    assert len(result['/detections']) == 8 and len(result['/scene']) == 1  # every 2 s: once
    assert any('/detections is replaced' in notice for notice in notices)


def test_memory_is_filled_with_scenes_and_embeddings(mcap_bag: Path, engine,
                                                     tmp_path: Path, types) -> None:
    database = tmp_path / 'memory.db'
    report = run_bag(mcap_bag, tmp_path / 'seen', engine,
                     BagSettings(capabilities=('detect', 'tags'), scene_period=0.0,
                                 memory=str(database), memory_period=0.0),
                     types=types)
    assert report.memory['written'] == report.memory['kept'] == 8
    memory = SceneMemory(MemoryConfig(path=str(database)))
    try:
        label = engine.labels[0]
        matches = memory.recall(label, engine.text_embedding(label), engine.model_ids['tags'])
        assert len(matches) == 8 and all(match.source.endswith(':/image') for match in matches)
        assert {match.stamp_ns for match in matches} == \
            {START_NS + index * 10**8 for index in range(8)}
    finally:
        memory.close()


@pytest.mark.parametrize('settings, message', [
    (BagSettings(image_topic='/nope'), "no image topic '/nope' in bag"),
    (BagSettings(depth_topic='/camera_info'), 'it is sensor_msgs/msg/CameraInfo'),
    (BagSettings(camera_info_topic='/missing'), 'it is not recorded'),
    (BagSettings(capabilities=('vqa',)), 'capabilities of a bag run'),
])
def test_bad_topics_and_settings_are_one_line_errors(mcap_bag: Path, engine, tmp_path: Path,
                                                     types, settings, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        run_bag(mcap_bag, tmp_path / 'out', engine, settings, types=types)
    assert '\n' not in str(caught.value)
    if 'image topic' in message:
        assert '/image (Image)' in str(caught.value)  # the image topics there are
    assert not (tmp_path / 'out').exists()


def _damaged(source: Path, target: Path, how: str) -> Path:
    """Copy a bag folder with its storage file cut at half its size, or overwritten there."""
    target.mkdir()
    for path in source.iterdir():
        data = path.read_bytes()
        if path.name != 'metadata.yaml':  # a quarter of noise spans whole records
            start, size = len(data) // 2, len(data) // 4
            noise = np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes()
            data = data[:start] if how == 'cut' else \
                data[:start] + noise + data[start + size:]
        (target / path.name).write_bytes(data)
    return target


def _assert_one_line_error(path: Path, engine, types, out: Path, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        run_bag(path, out, engine, types=types)
    assert str(path) in str(caught.value) and '\n' not in str(caught.value)


def test_missing_and_corrupt_bags_are_clear_errors(engine, tmp_path: Path, types) -> None:
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'metadata.yaml').write_text('rosbag2_bagfile_information: [not, a, mapping')
    empty = tmp_path / 'empty'
    empty.mkdir()
    not_a_bag = tmp_path / 'notes.mcap'
    not_a_bag.write_text('not an MCAP file')
    for index, (path, message) in enumerate([
            (tmp_path / 'missing', 'no bag at'), (empty, 'cannot read bag'),
            (broken, 'cannot read bag'), (not_a_bag, 'cannot read bag')]):
        _assert_one_line_error(path, engine, types, tmp_path / f'out{index}', message)


@pytest.mark.parametrize('how', ['cut', 'overwritten'])
def test_truncated_and_damaged_bags_are_clear_errors(shapes_bag: Path, engine, tmp_path: Path,
                                                     types, how: str) -> None:
    _assert_one_line_error(_damaged(shapes_bag, tmp_path / how, how), engine, types,
                           tmp_path / 'out', 'corrupt or truncated')


def test_an_existing_output_is_refused(mcap_bag: Path, engine, tmp_path: Path,
                                       types) -> None:
    (tmp_path / 'out').mkdir()
    with pytest.raises(InputError, match='exists already'):
        run_bag(mcap_bag, tmp_path / 'out', engine, types=types)
    assert os.listdir(tmp_path / 'out') == []


def test_bag_runs_import_neither_ros_nor_torch() -> None:
    """Need rclpy never, torch only once a model loads, rosbags not to list the commands."""
    code = ('import sys, vlm_perception.bag.run, vlm_perception.bag.shapes; '
            'print(sorted(m for m in ("rclpy", "torch", "sensor_msgs", "std_msgs", '
            '"builtin_interfaces") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == '[]'
    code = ('import sys, vlm_perception.cli; vlm_perception.cli.build_parser(); '
            'print("rosbags" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == 'False'
