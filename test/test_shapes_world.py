"""The shapes-world renderer: determinism and the world's specification."""

import itertools

import numpy as np
import pytest

from vlm_perception.shapes import world

SEEDS = range(40)


def _scenes(width: int = 640, height: int = 480) -> list[world.Scene]:
    return [world.sample_scene(np.random.default_rng(seed), width, height) for seed in SEEDS]


SCENES = _scenes()


def test_same_seed_same_scene() -> None:
    first = world.sample_scene(np.random.default_rng(123))
    second = world.sample_scene(np.random.default_rng(123))
    assert np.array_equal(first.image, second.image)
    assert first.objects == second.objects
    assert (first.caption, first.qa, first.background) == (second.caption, second.qa,
                                                           second.background)


def test_different_seeds_differ() -> None:
    assert not np.array_equal(SCENES[0].image, SCENES[1].image)
    assert len({scene.caption for scene in SCENES}) > len(SCENES) // 2


def test_names_are_colour_shape_pairs() -> None:
    assert len(world.NAMES) == 12 and len(set(world.NAMES)) == 12
    assert set(world.NAMES) == {f'{c} {s}' for c in world.COLOURS for s in world.SHAPES}
    assert world.COLOURS['red'] == (220, 30, 30) and world.COLOURS['blue'] == (30, 70, 220)


@pytest.mark.parametrize('size', [(640, 480), (800, 450), (480, 640), (1024, 576)])
def test_image_and_objects_follow_the_spec(size: tuple[int, int]) -> None:
    width, height = size
    for scene in _scenes(width, height)[:15]:
        assert scene.image.shape == (height, width, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.objects) <= 4
        assert all(100 <= c <= 160 for c in scene.background)
        assert max(scene.background) - min(scene.background) <= 20
        for obj in scene.objects:
            assert obj.colour in world.COLOURS and obj.shape in world.SHAPES
            assert 48 <= obj.size <= 160
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height
            assert x1 - x0 == y1 - y0 == obj.size
            assert all(abs(c - b) <= 15 for c, b in zip(obj.rgb, world.COLOURS[obj.colour]))
        for a, b in itertools.combinations(scene.objects, 2):
            apart_x = a.box[2] + 4 <= b.box[0] or b.box[2] + 4 <= a.box[0]
            apart_y = a.box[3] + 4 <= b.box[1] or b.box[3] + 4 <= a.box[1]
            assert apart_x or apart_y, f'{a} and {b} are closer than 4 px'


def test_every_count_colour_and_shape_occurs() -> None:
    objects = [obj for scene in SCENES for obj in scene.objects]
    assert {len(scene.objects) for scene in SCENES} == {1, 2, 3, 4}
    assert {obj.colour for obj in objects} == set(world.COLOURS)
    assert {obj.shape for obj in objects} == set(world.SHAPES)


def _render(shape: str, colour: str = 'red',
            size: int = 100) -> tuple[np.ndarray, world.ShapeObject]:
    obj = world.ShapeObject(colour, shape, 200, 150, size, world.COLOURS[colour])
    image = world.draw([obj], (130, 130, 130), 640, 480, np.random.default_rng(0))
    return image.astype(int), obj


def _is_colour(pixel: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool(np.all(np.abs(pixel - np.array(rgb)) <= 25))


def test_square_fills_its_box() -> None:
    image, obj = _render('square')
    x0, y0, x1, y1 = obj.box
    patch = image[y0:y1, x0:x1].reshape(-1, 3)
    assert np.abs(patch.mean(0) - np.array(obj.rgb)).max() < 2
    assert _is_colour(image[y0 - 2, x0 + 5], (130, 130, 130))


def test_circle_is_inscribed() -> None:
    image, obj = _render('circle')
    x0, y0, x1, y1 = obj.box
    centre = ((x0 + x1) // 2, (y0 + y1) // 2)
    assert _is_colour(image[centre[1], centre[0]], obj.rgb)
    for x, y in ((x0 + 2, y0 + 2), (x1 - 3, y0 + 2), (x0 + 2, y1 - 3), (x1 - 3, y1 - 3)):
        assert _is_colour(image[y, x], (130, 130, 130)), 'box corners are background'
    for x, y in ((x0 + 2, centre[1]), (x1 - 3, centre[1]), (centre[0], y0 + 2),
                 (centre[0], y1 - 3)):
        assert _is_colour(image[y, x], obj.rgb), 'the circle touches the box sides'


def test_triangle_apex_top_middle_base_along_bottom() -> None:
    image, obj = _render('triangle')
    x0, y0, x1, y1 = obj.box
    middle = (x0 + x1) // 2
    assert _is_colour(image[y0 + 4, middle], obj.rgb)
    assert _is_colour(image[y0 + 4, x0 + 4], (130, 130, 130))
    assert _is_colour(image[y0 + 4, x1 - 5], (130, 130, 130))
    assert _is_colour(image[y1 - 2, x0 + 3], obj.rgb) and _is_colour(image[y1 - 2, x1 - 4],
                                                                     obj.rgb)


def test_background_noise_has_sigma_6() -> None:
    image = world.draw([], (130, 120, 140), 640, 480, np.random.default_rng(1)).astype(float)
    assert np.allclose(image.reshape(-1, 3).mean(0), (130, 120, 140), atol=0.1)
    assert 5.8 < image.std(axis=(0, 1)).mean() < 6.2


def test_too_small_image_is_rejected() -> None:
    with pytest.raises(ValueError, match='smaller than the smallest object'):
        world.sample_scene(np.random.default_rng(0), 40, 480)


def _obj(colour: str, shape: str, x: int, y: int = 10) -> world.ShapeObject:
    return world.ShapeObject(colour, shape, x, y, 50, world.COLOURS[colour])


def test_captions_name_objects_left_to_right() -> None:
    red, blue, green = _obj('red', 'circle', 10), _obj('blue', 'square', 100), _obj(
        'green', 'triangle', 200)
    assert world.caption_of([red]) == 'a red circle'
    assert world.caption_of([blue, red]) == 'a red circle and a blue square'
    assert world.caption_of([green, red, _obj('yellow', 'square', 100, 200)]) == \
        'a red circle, a yellow square and a green triangle'


def test_questions_follow_the_rules() -> None:
    objects = [_obj('red', 'circle', 10), _obj('red', 'square', 100),
               _obj('blue', 'circle', 200)]
    qa = dict(world.questions_of(objects, np.random.default_rng(0)))
    assert qa['what color is the square?'] == 'red'
    assert 'what color is the circle?' not in qa, 'two circles: the colour is ambiguous'
    assert qa['what shape is the blue object?'] == 'circle'
    assert 'what shape is the red object?' not in qa
    assert qa['how many circles are there?'] == '2'
    assert qa['how many triangles are there?'] == '0'
    assert qa['how many objects are there?'] == '3'
    yes = [q for q, a in qa.items() if a == 'yes']
    no = [q for q, a in qa.items() if a == 'no']
    assert sorted(yes) == ['is there a blue circle?', 'is there a red circle?',
                           'is there a red square?']
    assert len(no) == 3
    assert all(q == q.lower() for q in qa)


def test_scene_ground_truth_matches_its_objects() -> None:
    for scene in SCENES:
        assert scene.caption == world.caption_of(scene.objects)
        answers = dict(scene.qa)
        assert answers['how many objects are there?'] == str(len(scene.objects))
        for name in world.NAMES:
            question = f'is there a {name}?'
            if question in answers:
                assert (answers[question] == 'yes') == any(o.name == name for o in scene.objects)
