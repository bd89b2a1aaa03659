"""The node's ROS-free parts: frame slot, rate limit, counters, parameters, drawing, drift."""

from pathlib import Path
import threading

import numpy as np
import pytest

from vlm_perception.core.errors import InputError
from vlm_perception.core.image import check_image_size
from vlm_perception.core.types import Detection
from vlm_perception.ros import parameters
from vlm_perception.ros.diagnostics import ERROR, OK, PerceptionStats, RateMeter, Throttle, WARN
from vlm_perception.ros.stream import (age_verdict, check_max_age, image_age, LatestSlot,
                                       Periodic, RateLimiter, SourceFrame)
from vlm_perception.ros.visualization import annotate, label_colour
from vlm_perception.shapes.drift import DriftingScene

PARAMS_YAML = Path(__file__).resolve().parents[1] / 'config' / 'params.yaml'


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_slot_keeps_only_the_newest_and_reports_replacements() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.take() is None
    assert slot.put(1) is False
    assert slot.put(2) is True   # 1 was never taken: dropped
    assert slot.take() == 2
    assert slot.take() is None
    assert slot.put(3) is False


def test_slot_under_concurrent_puts_loses_nothing_but_superseded_items() -> None:
    slot: LatestSlot[int] = LatestSlot()
    replaced = []

    def producer(start: int) -> None:
        replaced.append(sum(slot.put(start + i) for i in range(1000)))

    threads = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert slot.take() is not None
    assert sum(replaced) == 3999  # every put but the first replaced an untaken item


def test_rate_limiter_spaces_events() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, clock)
    assert limiter.wait_time() == 0.0
    limiter.mark()
    clock.now += 0.1
    assert limiter.wait_time() == pytest.approx(0.15)
    clock.now += 0.2
    assert limiter.wait_time() == 0.0
    limiter.max_rate = 0.0
    limiter.mark()
    assert limiter.wait_time() == 0.0


def test_periodic_is_due_first_then_every_period() -> None:
    clock = FakeClock()
    periodic = Periodic(2.0, clock)
    assert periodic.due()
    periodic.mark()
    clock.now += 1.0
    assert not periodic.due()
    clock.now += 1.0
    assert periodic.due()
    periodic.period = 0.0
    periodic.mark()
    assert periodic.due()


def test_image_age_and_limit() -> None:
    assert image_age(3_500_000_000, 1_000_000_000) == pytest.approx(2.5)
    second = 1_000_000_000
    assert age_verdict(10 * second, 7 * second, 1.0) == 'stale'
    assert age_verdict(10 * second, 9.5 * second, 1.0) == ''
    assert age_verdict(10 * second, 0, 0.0) == ''  # 0 = any age
    assert age_verdict(10 * second, 10.4 * second, 1.0) == ''  # clocks differ a little
    assert age_verdict(10 * second, 11 * second, 1.0) == 'future'
    assert age_verdict(10 * second, 11 * second, 3600.0) == 'future'  # fails every limit
    assert age_verdict(10 * second, 11 * second, 0.0) == ''
    assert age_verdict(0, 5 * second, 1.0) == ''  # sim time before /clock: not checked
    assert check_max_age(0.0) == 0.0 and check_max_age(2.5) == 2.5
    for bad in (-1.0, float('nan'), float('inf'), float('-inf')):
        with pytest.raises(InputError, match='max_age'):
            check_max_age(bad)


@pytest.mark.parametrize('height, width', [(0, 10), (10, 0), (9000, 10), (7000, 7000)])
def test_image_size_limits(height: int, width: int) -> None:
    with pytest.raises(InputError):
        check_image_size(height, width)


def test_source_frame_makes_the_engine_frame_once() -> None:
    made = []
    frame = SourceFrame(header=None, stamp_ns=0, convert=lambda: np.zeros((2, 2, 3), np.uint8))
    first = frame.engine_frame(lambda rgb: made.append(rgb) or object())
    assert frame.engine_frame(lambda rgb: made.append(rgb) or object()) is first
    assert len(made) == 1


def test_source_frame_converts_once_when_first_asked_and_reports_a_failure_once() -> None:
    calls, errors = [], []

    def convert() -> np.ndarray:
        calls.append(1)
        return np.zeros((2, 2, 3), np.uint8)

    frame = SourceFrame(header=None, stamp_ns=0, convert=convert)
    assert not calls  # nothing decoded on arrival
    threads = [threading.Thread(target=frame.decoded) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and frame.size == (2, 2)

    def fail() -> np.ndarray:
        raise InputError('corrupt')

    broken = SourceFrame(header=None, stamp_ns=0, convert=fail, on_error=errors.append)
    assert not broken.decoded() and not broken.decoded()
    assert [str(error) for error in errors] == ['corrupt']
    with pytest.raises(InputError):
        broken.engine_frame(lambda rgb: object())


def test_rate_meter_counts_over_the_window() -> None:
    clock = FakeClock()
    meter = RateMeter(window=5.0, clock=clock)
    for _ in range(10):
        meter.tick()
        clock.now += 0.1
    assert meter.rate() == pytest.approx(2.0)
    clock.now += 10
    assert meter.rate() == 0.0


def test_stats_report_levels_and_values() -> None:
    stats = PerceptionStats(clock=FakeClock())
    assert stats.report().level == WARN  # still loading
    stats.model_state, stats.device = 'ready', 'cpu'
    stats.record_received()
    stats.record_drop('superseded')
    stats.record_drop('superseded')
    stats.record_latency('detect', 0.010)
    stats.record_latency('detect', 0.020)
    report = stats.report()
    assert report.level == OK
    assert report.values['dropped: superseded'] == '2'
    assert report.values['device'] == 'cpu'
    assert report.values['latency detect (ms)'] == 'last 20.0, mean 12.0'
    stats.record_rejected('image')
    assert stats.report().level == WARN          # new bad input since the last report
    assert stats.report().level == OK            # ... but not since then
    assert stats.report().values['rejected: image'] == '1'
    stats.model_state = 'failed: no weights'
    assert stats.report().level == ERROR


def test_throttle_is_per_key() -> None:
    clock = FakeClock()
    throttle = Throttle(5.0, clock)
    assert throttle.allow('image') and throttle.allow('question')
    assert not throttle.allow('image')
    clock.now += 5.0
    assert throttle.allow('image')


def test_parameter_checks() -> None:
    assert parameters.check('max_rate', 5.0) is None
    assert 'within' in parameters.check('max_rate', -1.0)
    assert 'within' in parameters.check('detection_threshold', 1.5)
    assert parameters.check('capabilities', ['detect', 'vqa']) is None
    assert parameters.check('capabilities', []) is None
    assert parameters.check('capabilities', ['detect', 'segment']) is None
    assert 'unknown' in parameters.check('capabilities', ['detect', 'fly'])
    assert 'repeated' in parameters.check('capabilities', ['detect', 'detect'])
    assert 'unknown' in parameters.check('image_reliability', 'sometimes')
    assert parameters.check('labels', ['cup', 'red circle']) is None
    assert 'empty' in parameters.check('labels', [])
    assert parameters.check('labels', ['x' * 1000]) is not None
    assert parameters.check('use_sim_time', True) is None  # not ours
    assert parameters.check('cameras', ['left', 'front/left', 'rear_2']) is None
    for bad in (['1st'], [''], ['left/'], ['a b'], ['/left']):
        assert 'not a camera name' in parameters.check('cameras', bad), bad
    assert 'repeated' in parameters.check('cameras', ['left', 'left'])


def test_params_yaml_lists_every_parameter_with_its_default() -> None:
    import yaml

    listed = yaml.safe_load(PARAMS_YAML.read_text())['/**/vlm_perception']['ros__parameters']
    for spec in parameters.SPECS:
        if spec.default is None:
            assert spec.name not in listed  # unset = the preset's; mentioned in a comment
            assert f'# {spec.name}:' in PARAMS_YAML.read_text()
        else:
            value = listed[spec.name]
            assert value == spec.default or sorted(value) == sorted(spec.default), spec.name
    assert set(listed) <= set(parameters.SPEC_BY_NAME)


def test_every_spec_is_described_and_defaults_pass_their_checks() -> None:
    for spec in parameters.SPECS:
        assert spec.description.endswith('.'), spec.name
        if spec.default is not None:
            assert parameters.check(spec.name, spec.default) is None, spec.name


def test_annotate_draws_boxes_and_caption_on_a_copy() -> None:
    image = np.full((120, 160, 3), 128, np.uint8)
    detection = Detection('red circle', 0.9, center_x=80, center_y=60, size_x=40, size_y=40)
    drawn = annotate(image, [detection], caption='a red circle')
    assert (image == 128).all()  # input untouched
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    colour = np.array(label_colour('red circle'))
    right_edge = drawn[60, 98:103]  # box edge at x = 100
    assert (np.abs(right_edge.astype(int) - colour).sum(axis=1) == 0).any()
    assert (drawn[-3:] != 128).any()  # caption band at the bottom
    assert label_colour('red circle') == label_colour('red circle')


def test_annotate_accepts_boxes_outside_the_image() -> None:
    image = np.zeros((50, 50, 3), np.uint8)
    detection = Detection('cup', 0.5, center_x=-10, center_y=60, size_x=100, size_y=100)
    assert annotate(image, [detection]).shape == (50, 50, 3)


def test_drifting_scene_moves_objects_and_keeps_them_inside() -> None:
    scene = DriftingScene(np.random.default_rng(7), width=320, height=240, speed=200.0)
    names = [obj.name for obj in scene.objects]
    start = [(obj.x, obj.y) for obj in scene.objects]
    image = scene.step(0.1)
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    assert [(obj.x, obj.y) for obj in scene.objects] != start
    for _ in range(200):
        scene.step(0.1)
        for obj in scene.objects:
            assert 0 <= obj.x <= 320 - obj.size and 0 <= obj.y <= 240 - obj.size
    assert [obj.name for obj in scene.objects] == names
    again = DriftingScene(np.random.default_rng(7), width=320, height=240, speed=200.0)
    assert [obj.name for obj in again.objects] == names  # a seed fixes the scene
