"""The ``vlm-perception`` command line on tiny local models (no ROS, no network)."""

import json
import os
from pathlib import Path
import subprocess
import sys

import cv2
import numpy as np
import pytest

from vlm_perception import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('images') / 'scene.png'
    image = np.random.default_rng(1).integers(0, 256, (60, 100, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)
    return path


def _model_options(tiny_models: dict) -> list[str]:
    return ['--detector', str(tiny_models['detector']), '--tagger',
            str(tiny_models['classifier']), '--vqa', str(tiny_models['vqa_blip']),
            '--captioner', str(tiny_models['captioner']), '--device', 'cpu']


def _run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'vlm_perception.cli', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', **env})


def test_describe_json_with_four_model_folders(image_file: Path, tiny_models: dict) -> None:
    done = _run_cli('describe', str(image_file), '--json', '--threshold', '0.0',
                    *_model_options(tiny_models))
    assert done.returncode == 0, done.stderr
    scene = json.loads(done.stdout)
    assert set(scene) == {'caption', 'tags', 'detections', 'summary'}
    assert isinstance(scene['caption'], str) and scene['summary']
    assert set(scene['tags'][0]) == {'label', 'score'}
    assert set(scene['detections'][0]) == {'label', 'score', 'center_x', 'center_y', 'size_x',
                                           'size_y', 'has_position'}  # no depth, no position
    assert scene['detections'][0]['has_position'] is False


def test_missing_image_is_one_line_error(tmp_path: Path, tiny_models: dict) -> None:
    done = _run_cli('describe', str(tmp_path / 'missing.jpg'), '--json',
                    *_model_options(tiny_models))
    assert done.returncode != 0 and done.stdout == ''
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'missing.jpg' in lines[0]


def test_hub_model_missing_offline_is_one_line_error(image_file: Path, tmp_path: Path) -> None:
    done = _run_cli('detect', str(image_file), '--labels', 'cup', '--device', 'cpu',
                    HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'))
    assert done.returncode == 1 and done.stdout == ''
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'google/owlvit-base-patch32' in lines[0]
    assert 'hf download google/owlvit-base-patch32' in lines[0]


@pytest.mark.parametrize('command, expected', [
    (['detect', '--labels', 'cup,person'], {'detections'}),
    (['tags', '--labels', 'kitchen,street,office'], {'tags'}),
    (['ask', 'is there a cup?'], {'answer', 'confidence'}),
    (['caption'], {'caption'}),
    (['describe', '--question', 'is there a cup?'],
     {'caption', 'tags', 'detections', 'summary', 'answer'}),
])
def test_every_subcommand_json_and_text(capsys, image_file: Path, tiny_models: dict,
                                        command: list, expected: set) -> None:
    name, *rest = command
    arguments = [name, str(image_file), *rest, '--threshold', '0', *_model_options(tiny_models)]
    assert cli.main([*arguments, '--json']) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == expected
    if name == 'tags':
        assert [t['label'] for t in result['tags']] != [] and \
            [t['score'] for t in result['tags']] == sorted(
                (t['score'] for t in result['tags']), reverse=True)
        assert {t['label'] for t in result['tags']} <= {'kitchen', 'street', 'office'}
    if name == 'detect':
        assert {d['label'] for d in result['detections']} <= {'cup', 'person'}
    assert cli.main(arguments) == 0
    text = capsys.readouterr().out.strip()
    assert text and not text.startswith('{')


@pytest.mark.parametrize('arguments, message', [
    (['detect', '{image}', '--labels', ','], 'label list is empty'),
    (['ask', '{image}', '   '], 'question is empty'),
    (['detect', '{image}', '--detector', '/no/such/model'], 'does not exist'),
    (['tags', '{image}', '--device', 'tpu'], 'device'),
])
def test_bad_input_and_model_errors_exit_1_with_one_line(capsys, image_file: Path,
                                                         arguments: list, message: str) -> None:
    arguments = [str(image_file) if a == '{image}' else a for a in arguments]
    assert cli.main(arguments) == 1
    captured = capsys.readouterr()
    assert captured.out == ''
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith('vlm-perception:')


def test_parser_has_the_core_subcommands() -> None:
    parser = cli.build_parser()
    subcommands = next(action for action in parser._actions
                       if action.dest == 'command').choices
    assert {'detect', 'tags', 'ask', 'caption', 'describe'} <= set(subcommands)
    with pytest.raises(SystemExit):
        cli.main([])
