"""Behaviour of the shipped ``shapes`` preset through the perception engine."""

import numpy as np
import pytest

from vlm_perception.core.presets import PACKAGED_PRESETS
from vlm_perception.shapes import world
from vlm_perception.shapes.evaluate import box_iou, detection_box

SHAPES_DIR = PACKAGED_PRESETS['shapes']
pytestmark = pytest.mark.skipif(
    not (SHAPES_DIR / 'preset.json').is_file(),
    reason=f'the shapes preset is not built ({SHAPES_DIR} is missing): run `make models`')

BACKGROUND = (128, 128, 132)


@pytest.fixture(scope='module')
def engine():
    from vlm_perception.core.engine import EngineConfig, PerceptionEngine

    engine = PerceptionEngine(EngineConfig(preset='shapes', device='cpu'))
    engine.load()
    return engine


def scene_of(objects: list[tuple[str, str, int, int, int]], width: int = 640,
             height: int = 480, seed: int = 0) -> tuple[np.ndarray, list[world.ShapeObject]]:
    """Render (colour, shape, x, y, size) objects on a grey background."""
    shapes = [world.ShapeObject(colour, shape, x, y, size, world.COLOURS[colour])
              for colour, shape, x, y, size in objects]
    return world.draw(shapes, BACKGROUND, width, height, np.random.default_rng(seed)), shapes


def best_iou(obj: world.ShapeObject, detections: list, label: str) -> float:
    return max((box_iou(detection_box(d), obj.box) for d in detections if d.label == label),
               default=0.0)


def test_preset_lists_the_twelve_names(engine) -> None:
    assert engine.labels == list(world.NAMES)
    assert 0 < engine.detection_threshold < 1
    assert set(engine.loaded) == {'detect', 'tags', 'vqa', 'caption'}


@pytest.mark.parametrize('colour, other', [('red', 'blue'), ('blue', 'red')])
def test_colours_are_not_swapped(engine, colour: str, other: str) -> None:
    # RGB/BGR confusion turns red (220, 30, 30) into blue-ish (30, 30, 220) and back.
    image, (circle, square) = scene_of([(colour, 'circle', 100, 150, 120),
                                        (colour, 'square', 400, 200, 100)])
    detections = engine.detect(image, labels=[f'{colour} circle', f'{other} circle',
                                              f'{colour} square', f'{other} square'])
    assert best_iou(circle, detections, f'{colour} circle') >= 0.5
    assert best_iou(square, detections, f'{colour} square') >= 0.5
    assert not [d for d in detections if d.label.startswith(other)], detections
    assert engine.answer(image, 'what color is the circle?').answer == colour
    assert engine.answer(image, f'is there a {other} square?').answer == 'no'
    assert engine.tags(image, top_k=1)[0].label.startswith(colour)


@pytest.mark.parametrize('size', [(800, 450), (480, 640), (1024, 576)])
def test_boxes_land_on_objects_in_other_image_sizes(engine, size: tuple[int, int]) -> None:
    width, height = size
    image, objects = scene_of([('green', 'triangle', 20, 30, 90),
                               ('yellow', 'circle', width - 150, height - 140, 130),
                               ('red', 'square', width // 2 - 30, 40, 60)], width, height)
    detections = engine.detect(image)
    for obj in objects:
        assert best_iou(obj, detections, obj.name) >= 0.5, (obj, detections)


def test_every_name_is_found_and_absent_names_stay_quiet(engine) -> None:
    found = objects = false = absent = 0
    rng = np.random.default_rng(2024)
    for index in range(12):
        size = ((640, 480), (800, 450))[index % 2]
        scene = world.sample_scene(rng, *size)
        detections = engine.detect(scene.image)
        present = {obj.name for obj in scene.objects}
        objects += len(scene.objects)
        found += sum(best_iou(obj, detections, obj.name) >= 0.5 for obj in scene.objects)
        false += sum(d.label not in present for d in detections)
        absent += 12 - len(present)
    assert found / objects >= 0.85
    assert false / absent <= 0.1


def test_shape_only_queries_find_every_shape(engine) -> None:
    image, objects = scene_of([('blue', 'triangle', 60, 60, 110),
                               ('yellow', 'square', 300, 250, 70)])
    detections = engine.detect(image, labels=['triangle', 'square', 'circle'])
    assert best_iou(objects[0], detections, 'triangle') >= 0.5
    assert best_iou(objects[1], detections, 'square') >= 0.5
    assert not [d for d in detections if d.label == 'circle']


def test_questions_about_a_known_scene(engine) -> None:
    image, _ = scene_of([('yellow', 'triangle', 40, 100, 100), ('green', 'circle', 260, 200, 90),
                         ('blue', 'circle', 450, 60, 120)])
    frame = engine.frame(image)
    assert engine.answer(frame, 'what color is the triangle?').answer == 'yellow'
    assert engine.answer(frame, 'what shape is the green object?').answer == 'circle'
    assert engine.answer(frame, 'how many objects are there?').answer == '3'
    assert engine.answer(frame, 'is there a green circle?').answer == 'yes'
    assert engine.answer(frame, 'is there a red square?').answer == 'no'


def test_answers_on_rendered_scenes(engine) -> None:
    from vlm_perception.shapes.evaluate import question_kind

    right: dict[str, list[bool]] = {}
    rng = np.random.default_rng(99)
    for index in range(10):
        scene = world.sample_scene(rng, *((640, 480), (800, 450))[index % 2])
        frame = engine.frame(scene.image)
        for question, answer in scene.qa:
            right.setdefault(question_kind(question), []).append(
                engine.answer(frame, question).answer == answer)
    accuracy = {kind: float(np.mean(hits)) for kind, hits in right.items()}
    assert accuracy['colour'] >= 0.8 and accuracy['shape'] >= 0.8, accuracy
    assert accuracy['yes_no'] >= 0.8 and accuracy['count'] >= 0.6, accuracy


def test_captions_name_the_objects(engine) -> None:
    rng = np.random.default_rng(7)
    scenes = [scene for scene in (world.sample_scene(rng) for _ in range(24))
              if len(scene.objects) <= 2][:10]
    captions = [engine.caption(scene.image) for scene in scenes]
    named = [all(obj.name in caption for obj in scene.objects)
             for scene, caption in zip(scenes, captions)]
    assert np.mean(named) >= 0.8, list(zip([s.caption for s in scenes], captions))
    exact = [caption == scene.caption for scene, caption in zip(scenes, captions)]
    assert np.mean(exact) >= 0.5, 'objects named in the ground-truth order and wording'


def test_describe_summarises_the_scene(engine) -> None:
    image, _ = scene_of([('green', 'square', 150, 150, 130)])
    description = engine.describe(image)
    assert 'green square' in description.caption
    assert description.tags[0].label == 'green square'
    assert [d.label for d in description.detections][:1] == ['green square']
    assert 'green square' in description.summary
