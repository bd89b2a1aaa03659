"""The vlm-perception CLI with the shipped ``shapes`` preset: describe and eval."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vlm_perception.cli import main
from vlm_perception.core.presets import PACKAGED_PRESETS
from vlm_perception.core.types import Detection
from vlm_perception.shapes import world
from vlm_perception.shapes.evaluate import box_iou, extra_detections

SHAPES_DIR = PACKAGED_PRESETS['shapes']
needs_preset = pytest.mark.skipif(
    not (SHAPES_DIR / 'preset.json').is_file(),
    reason=f'the shapes preset is not built ({SHAPES_DIR} is missing): run `make models`')


def _png(path: Path, objects: list[tuple[str, str, int, int, int]], width: int = 640,
         height: int = 480) -> Path:
    shapes = [world.ShapeObject(colour, shape, x, y, size, world.COLOURS[colour])
              for colour, shape, x, y, size in objects]
    image = world.draw(shapes, (125, 130, 128), width, height, np.random.default_rng(5))
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


@needs_preset
def test_describe_names_the_objects(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = _png(tmp_path / 'scene.png', [('red', 'circle', 80, 150, 120),
                                          ('yellow', 'triangle', 420, 200, 110)])
    assert main(['describe', str(image), '--preset', 'shapes', '--device', 'cpu',
                 '--json']) == 0
    result = json.loads(capsys.readouterr().out)
    detected = {d['label'] for d in result['detections']}
    assert {'red circle', 'yellow triangle'} <= detected
    assert not detected - {'red circle', 'yellow triangle'}
    assert 'red circle' in result['caption'] and 'yellow triangle' in result['caption']
    assert result['tags'][0]['label'] in {'red circle', 'yellow triangle'}
    assert main(['describe', str(image), '--preset', 'shapes', '--device', 'cpu']) == 0
    summary = capsys.readouterr().out
    assert 'red circle' in summary and 'yellow triangle' in summary


@needs_preset
def test_detect_boxes_in_pixels_of_a_wide_image(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    image = _png(tmp_path / 'wide.png', [('blue', 'square', 600, 300, 100)], 800, 450)
    assert main(['detect', str(image), '--preset', 'shapes', '--device', 'cpu',
                 '--json']) == 0
    detections = json.loads(capsys.readouterr().out)['detections']
    best = max(detections, key=lambda d: d['score'])
    assert best['label'] == 'blue square'
    assert abs(best['center_x'] - 650) < 10 and abs(best['center_y'] - 350) < 10
    half_w, half_h = best['size_x'] / 2, best['size_y'] / 2
    box = (best['center_x'] - half_w, best['center_y'] - half_h, best['center_x'] + half_w,
           best['center_y'] + half_h)
    assert box_iou(box, (600, 300, 700, 400)) >= 0.5


@needs_preset
def test_eval_prints_a_table_and_json(capsys: pytest.CaptureFixture) -> None:
    assert main(['eval', '--preset', 'shapes', '--scenes', '4', '--seed', '777',
                 '--device', 'cpu', '--quiet']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ['metric', 'value']
    assert any(line.startswith('detection_recall ') for line in lines)
    result = json.loads(lines[-1])
    assert result['scenes'] == 4 and result['seed'] == 777
    assert set(result['bars']) >= {'detection_recall', 'false_detections_per_absent_query',
                                   'top_tag_present', 'vqa_overall', 'vqa_colour', 'vqa_shape',
                                   'vqa_yes_no', 'vqa_count', 'caption_names_1_2_objects'}
    assert result['metrics']['detection_recall'] >= 0.7
    assert any(line.startswith('extra_detections_per_image ') for line in lines)
    assert result['metrics']['extra_detections_per_image'] >= 0
    assert result['sizes'] == ['640x480', '800x450', '1024x576', '480x640']


def test_extra_detections_are_unmatched_boxes_of_present_names() -> None:
    objects = [world.ShapeObject('yellow', 'triangle', 100, 100, 100, world.COLOURS['yellow']),
               world.ShapeObject('blue', 'triangle', 300, 100, 60, world.COLOURS['blue'])]
    detections = [
        Detection('yellow triangle', 0.9, 150, 150, 100, 100),  # matches the yellow triangle
        Detection('yellow triangle', 0.4, 210, 150, 40, 40),  # a shifted second box: extra
        Detection('yellow triangle', 0.3, 150, 150, 100, 100),  # the object is taken: extra
        Detection('blue circle', 0.51, 330, 130, 60, 60),  # absent name: a false detection
        Detection('blue triangle', 0.8, 330, 130, 60, 60),  # matches the blue triangle
    ]
    assert extra_detections(objects, detections) == 2
    assert extra_detections(objects, []) == 0


def test_eval_of_a_missing_preset_fails_cleanly(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    assert main(['eval', '--preset', str(tmp_path / 'nothing'), '--scenes', '1']) == 1
    assert 'preset' in capsys.readouterr().err


def test_eval_rejects_bad_sizes(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(['eval', '--sizes', '640by480'])
    assert exit_info.value.code == 2
    assert 'WIDTHxHEIGHT' in capsys.readouterr().err
