"""The drifting scene's 3D world: pinhole intrinsics, distances, depth image, ground truth."""

from dataclasses import replace
from itertools import combinations
import math

import numpy as np
import pytest

from vlm_perception.core.depth import depth_from_raw, PinholeCamera, place
from vlm_perception.shapes import world
from vlm_perception.shapes.drift import (BACKGROUND_DEPTH_M, DISTANCE_RANGE_M, DriftingScene,
                                         MIN_DISTANCE_GAP_M, pinhole_k, sample_distances,
                                         SIZE_RANGE_M)

SEEDS = range(8)
IMAGE_SIZES = [(640, 480), (1280, 720)]
EPS = 1e-9


def scenes():
    """Yield (seed, width, height, scene) after one short step, for every seed and size."""
    for seed in SEEDS:
        for width, height in IMAGE_SIZES:
            scene = DriftingScene(np.random.default_rng(seed), width, height)
            scene.step(0.1)
            yield seed, width, height, scene


def shape_mask(obj: world.ShapeObject, width: int, height: int) -> np.ndarray:
    """(H, W) pixels whose centres lie inside the object's shape."""
    units = (np.arange(obj.size) + 0.5) / obj.size
    mask = np.zeros((height, width), bool)
    mask[obj.y:obj.y + obj.size, obj.x:obj.x + obj.size] = world.inside_shape(
        obj.shape, units[None, :], units[:, None])
    return mask


def test_pinhole_k_is_the_centred_camera_of_the_field_of_view() -> None:
    fx, skew, cx, zero, fy, cy, *last = pinhole_k(640, 480, 60.0)
    assert fx == pytest.approx(320 / math.tan(math.radians(30))) and fy == fx
    assert (cx, cy) == (319.5, 239.5) and skew == zero == 0.0 and last == [0.0, 0.0, 1.0]
    assert pinhole_k(1280, 720, 90.0)[0] == pytest.approx(640.0)


def test_sizes_and_distances_are_in_range_distinct_and_give_the_pixel_size() -> None:
    for seed, width, height, scene in scenes():
        focal = pinhole_k(width, height, 60.0)[0]
        assert scene.k == pinhole_k(width, height, 60.0)
        assert len(scene.distances) == len(scene.metric_sizes) == len(scene.objects)
        for obj, z, s in zip(scene.objects, scene.distances, scene.metric_sizes):
            assert focal * s / z == pytest.approx(obj.size, rel=1e-6), (seed, width)
            assert SIZE_RANGE_M[0] - EPS <= s <= SIZE_RANGE_M[1] + EPS, (seed, width, s)
            assert DISTANCE_RANGE_M[0] <= z <= DISTANCE_RANGE_M[1], (seed, width, z)
        for a, b in combinations(scene.distances, 2):
            assert abs(a - b) >= MIN_DISTANCE_GAP_M - EPS, (seed, width, a, b)


def test_sample_distances_gives_up_only_what_cannot_be_had() -> None:
    rng = np.random.default_rng(3)
    # z in [0.8, 0.9] for every object: four cannot be 0.15 m apart, all stay in range
    focal = 0.9 * 100 / SIZE_RANGE_M[1]
    distances = sample_distances(rng, [100] * 4, focal)
    assert all(0.8 - EPS <= z <= 0.9 + EPS for z in distances)
    # a focal so long that no metric size fits: the distance range wins (before the wall)
    distances = sample_distances(rng, [48, 160], 1e5)
    assert all(DISTANCE_RANGE_M[0] <= z <= DISTANCE_RANGE_M[1] for z in distances)
    assert abs(distances[0] - distances[1]) >= MIN_DISTANCE_GAP_M


def test_depth_has_each_objects_distance_at_its_centre_and_the_wall_elsewhere() -> None:
    for seed, width, height, scene in scenes():
        depth = scene.depth_metres()
        assert depth.shape == (height, width) and depth.dtype == np.float32
        boxes = np.zeros((height, width), bool)
        for obj, z in zip(scene.objects, scene.distances):
            row, col = obj.y + obj.size // 2, obj.x + obj.size // 2
            assert depth[row, col] == np.float32(z), (seed, width, obj)
            top, left = max(obj.y - 2, 0), max(obj.x - 2, 0)  # the box and its antialiasing
            boxes[top:obj.y + obj.size + 2, left:obj.x + obj.size + 2] = True
        assert (depth[~boxes] == BACKGROUND_DEPTH_M).all(), (seed, width)
        assert (~boxes).any()


def test_ground_truth_back_projects_to_the_box_centre() -> None:
    for seed, width, height, scene in scenes():
        fx, _, cx, _, fy, cy = scene.k[:6]
        truth = scene.ground_truth()
        assert len(truth) == len(scene.objects)
        for detection, obj, z, s in zip(truth, scene.objects, scene.distances,
                                        scene.metric_sizes):
            assert detection.label == obj.name and detection.score == 1.0
            assert detection.box == (obj.x, obj.y, obj.x + obj.size, obj.y + obj.size)
            x, y, depth_z = detection.position
            assert depth_z == z and detection.size == (s, s, 0.0)
            # K's pixel centres are whole numbers: the box centre is half a pixel left of it
            assert x / z * fx + cx == pytest.approx(obj.x + (obj.size - 1) / 2, abs=1e-9)
            assert y / z * fy + cy == pytest.approx(obj.y + (obj.size - 1) / 2, abs=1e-9)
            assert x / z * fx + cx == pytest.approx(detection.center_x - 0.5, abs=1e-9)


def test_core_placement_on_the_depth_finds_the_ground_truth() -> None:
    for seed, width, height, scene in scenes():
        millimetres = np.rint(scene.depth_metres() * 1000).astype(np.uint16)
        depth = depth_from_raw(millimetres, height, width, '16UC1', width * 2)
        camera = PinholeCamera.from_values(scene.k, width, height, 'plumb_bob', [0.0] * 5)
        for truth in scene.ground_truth():
            placed = place(replace(truth, position=None, size=None), depth, camera, width,
                           height, 0.1, BACKGROUND_DEPTH_M - 0.5)
            assert placed is not None, (seed, width, truth)
            # within about a pixel: the depth mask may miss a row of pixel centres at a tip
            pixel = truth.position[2] / scene.k[0]
            assert placed.position == pytest.approx(truth.position, abs=pixel), (seed, truth)
            assert placed.size[:2] == pytest.approx(truth.size[:2], abs=1.5 * pixel), truth


def test_depth_covers_the_drawn_shape_up_to_its_antialiased_edge() -> None:
    for seed, width, height, scene in scenes():
        depth = scene.depth_metres()
        background = np.array(scene.background, float)
        for obj, z in zip(scene.objects, scene.distances):
            clean = world.draw_clean([obj], scene.background, width, height).astype(float)
            colour = np.array(obj.rgb, float) - background
            coverage = (clean - background) @ colour / (colour @ colour)  # 0 wall .. 1 object
            drawn = coverage >= 0.5
            at_distance = depth == np.float32(z)
            iou = (drawn & at_distance).sum() / (drawn | at_distance).sum()
            assert iou >= 0.95, (seed, width, obj, iou)
            mismatch = drawn ^ at_distance
            antialiased = (clean != background).any(axis=2) & (clean != obj.rgb).any(axis=2)
            assert not (mismatch & ~antialiased).any(), (seed, width, obj)
            if obj.shape == 'square':
                assert iou == 1.0


def test_the_2d_scene_of_a_seed_is_as_before() -> None:
    for seed in SEEDS:
        for width, height in IMAGE_SIZES:
            scene = DriftingScene(np.random.default_rng(seed), width, height, speed=0.0)
            rng = np.random.default_rng(seed)
            background = world.sample_background(rng)
            assert scene.objects == world.sample_objects(rng, width, height)
            assert scene.background == background
            # what the scene drew before it had depth: sample_scene, the drift angles, then
            # each frame's noise, all from the one generator
            rng = np.random.default_rng(seed)
            before = world.sample_scene(rng, width, height)
            rng.uniform(0.0, 2 * np.pi, len(before.objects))
            for _ in range(2):
                expected = world.draw(before.objects, before.background, width, height, rng)
                assert np.array_equal(scene.step(0.1), expected), (seed, width)
    first = DriftingScene(np.random.default_rng(5))
    again = DriftingScene(np.random.default_rng(5))
    for _ in range(3):
        assert np.array_equal(first.step(0.1), again.step(0.1))
    assert first.distances == again.distances
    assert first.ground_truth() == again.ground_truth()


def test_the_nearer_object_hides_the_farther_in_both_image_and_depth() -> None:
    near_drawn_first = 0  # the case a plain drawing order gets wrong
    for seed in range(40):
        scene = DriftingScene(np.random.default_rng(seed), 320, 240, speed=300.0)
        for _ in range(100):
            rgb = scene.step(0.1)
            masks = [shape_mask(obj, 320, 240) for obj in scene.objects]
            for a, b in combinations(range(len(scene.objects)), 2):
                both = masks[a] & masks[b]
                for other in set(range(len(masks))) - {a, b}:
                    both &= ~masks[other]
                if both.sum() < 50:
                    continue
                near = a if scene.distances[a] < scene.distances[b] else b
                depth = scene.depth_metres()
                assert (depth[both] == np.float32(scene.distances[near])).all(), seed
                seen = np.median(rgb[both].astype(float), axis=0)
                assert np.abs(seen - scene.objects[near].rgb).max() <= 10, (seed, seen)
                near_drawn_first += near == a
        if near_drawn_first >= 3:
            return
    pytest.fail(f'only {near_drawn_first} overlaps with the nearer object listed first')
