"""
Procedural renderer of the shapes world, with its ground truth.

A scene is a flat grey-ish background with Gaussian pixel noise and one to four coloured
circles, squares and triangles, each drawn in its own square box (boxes never touch). Every
random choice comes from the ``numpy.random.Generator`` passed in, so a seed fixes the scene.

Ground truth: the objects with their boxes, a caption naming the objects left to right, and
question/answer pairs of five kinds (colour, shape, count of a shape, count of all, yes/no).
"""

from dataclasses import dataclass
from typing import Sequence, TypeVar

import cv2
import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    'red': (220, 30, 30),
    'green': (30, 170, 60),
    'blue': (30, 70, 220),
    'yellow': (235, 205, 30),
}
SHAPES: tuple[str, ...] = ('circle', 'square', 'triangle')
NAMES: tuple[str, ...] = tuple(f'{colour} {shape}' for colour in COLOURS for shape in SHAPES)

MIN_OBJECTS, MAX_OBJECTS = 1, 4
MIN_SIZE, MAX_SIZE = 48, 160
MIN_GAP = 4
COLOUR_JITTER = 15
NOISE_SIGMA = 6.0
BACKGROUND_RANGE = (100, 160)
BACKGROUND_SPREAD = 20

# Shapes in box units (0..1 across the box, y down): the circle is inscribed, the triangle has
# its apex at the top middle and its base along the bottom.
CIRCLE_CENTRE, CIRCLE_RADIUS = (0.5, 0.5), 0.5
TRIANGLE_CORNERS = ((0.5, 0.0), (0.0, 1.0), (1.0, 1.0))

_PLACEMENT_TRIES = 200
_SUBPIXEL_SHIFT = 4  # cv2 drawing in 1/16 pixel units, so odd sizes stay centred
_SUBPIXEL = 1 << _SUBPIXEL_SHIFT


@dataclass(frozen=True)
class ShapeObject:
    """One object: a shape of a colour drawn inside the box (x, y, x + size, y + size)."""

    colour: str
    shape: str
    x: int
    y: int
    size: int
    rgb: tuple[int, int, int]

    @property
    def name(self) -> str:
        """Return the object's name, e.g. ``'red circle'``."""
        return f'{self.colour} {self.shape}'

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Return the box as (x0, y0, x1, y1) pixels; x1 and y1 are exclusive."""
        return (self.x, self.y, self.x + self.size, self.y + self.size)


@dataclass
class Scene:
    """A rendered scene and its ground truth."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    objects: list[ShapeObject]
    background: tuple[int, int, int]
    caption: str
    qa: list[tuple[str, str]]


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Tell whether two boxes are at least MIN_GAP pixels apart along x or y."""
    return (a[2] + MIN_GAP <= b[0] or b[2] + MIN_GAP <= a[0]
            or a[3] + MIN_GAP <= b[1] or b[3] + MIN_GAP <= a[1])


def sample_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """Draw a background colour: channels in 100..160, all within 20 of each other."""
    low = int(rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] - BACKGROUND_SPREAD + 1))
    channels = low + rng.integers(0, BACKGROUND_SPREAD + 1, size=3)
    return tuple(int(c) for c in channels)


def sample_objects(rng: np.random.Generator, width: int, height: int,
                   count: int | None = None) -> list[ShapeObject]:
    """
    Draw random objects whose boxes lie inside a width x height image, MIN_GAP apart.

    ``count`` defaults to a uniform draw from 1..4. If an object finds no free place (only
    likely in small images) it is dropped, so fewer objects may come back.
    """
    if min(width, height) < MIN_SIZE:
        raise ValueError(f'image {width}x{height} is smaller than the smallest object '
                         f'({MIN_SIZE} px)')
    if count is None:
        count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    largest = min(MAX_SIZE, width, height)
    objects: list[ShapeObject] = []
    colour_names = list(COLOURS)
    for _ in range(count):
        colour = colour_names[int(rng.integers(len(colour_names)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
        size = int(rng.integers(MIN_SIZE, largest + 1))
        for _ in range(_PLACEMENT_TRIES):
            x = int(rng.integers(0, width - size + 1))
            y = int(rng.integers(0, height - size + 1))
            box = (x, y, x + size, y + size)
            if all(_boxes_apart(box, other.box) for other in objects):
                objects.append(ShapeObject(colour, shape, x, y, size, rgb))
                break
    return objects


def _fixed(value: float) -> int:
    """Convert a pixel coordinate to cv2's fixed-point drawing units."""
    return int(round(value * _SUBPIXEL))


def _draw_object(image: np.ndarray, obj: ShapeObject) -> None:
    """Draw one object into ``image`` in place (pixel centres at integer coordinates)."""
    colour = tuple(float(c) for c in obj.rgb)
    x0, y0 = float(obj.x), float(obj.y)
    last = float(obj.size - 1)  # the far pixel centre inside the box
    if obj.shape == 'square':
        image[obj.y:obj.y + obj.size, obj.x:obj.x + obj.size] = obj.rgb
    elif obj.shape == 'circle':
        centre = (_fixed(x0 + CIRCLE_CENTRE[0] * last), _fixed(y0 + CIRCLE_CENTRE[1] * last))
        cv2.circle(image, centre, _fixed(CIRCLE_RADIUS * last), colour, thickness=-1,
                   lineType=cv2.LINE_AA, shift=_SUBPIXEL_SHIFT)
    elif obj.shape == 'triangle':
        corners = np.array([[_fixed(x0 + u * last), _fixed(y0 + v * last)]
                            for u, v in TRIANGLE_CORNERS], dtype=np.int32)
        cv2.fillPoly(image, [corners], colour, lineType=cv2.LINE_AA, shift=_SUBPIXEL_SHIFT)
    else:
        raise ValueError(f'unknown shape {obj.shape!r}; expected one of {SHAPES}')


Coordinates = TypeVar('Coordinates')  # numpy or torch arrays (anything with array operators)


def inside_shape(shape: str, u: Coordinates, v: Coordinates) -> Coordinates:
    """
    Tell which points lie inside a shape, as a boolean array.

    ``u`` and ``v`` are positions in box units (0..1 across the object's box, y down), numpy
    arrays or torch tensors of one broadcastable shape; box stretching (a circle in a squashed
    image) keeps these units, so normalised image coordinates can be used directly.
    """
    if shape == 'square':
        return (u > 0) & (u < 1) & (v > 0) & (v < 1)
    if shape == 'circle':
        return (u - CIRCLE_CENTRE[0]) ** 2 + (v - CIRCLE_CENTRE[1]) ** 2 < CIRCLE_RADIUS ** 2
    if shape == 'triangle':
        inside = None
        for (ax, ay), (bx, by) in zip(TRIANGLE_CORNERS,
                                      TRIANGLE_CORNERS[1:] + TRIANGLE_CORNERS[:1]):
            # the corners run anticlockwise on screen, so inside has a negative cross product
            # with every edge (y down)
            side = (bx - ax) * (v - ay) - (by - ay) * (u - ax) < 0
            inside = side if inside is None else inside & side
        return inside
    raise ValueError(f'unknown shape {shape!r}; expected one of {SHAPES}')


def draw_clean(objects: Sequence[ShapeObject], background: Sequence[int], width: int,
               height: int) -> np.ndarray:
    """Render objects on a flat background, without noise: (H, W, 3) uint8 RGB."""
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = np.asarray(background, dtype=np.uint8)
    for obj in objects:
        _draw_object(canvas, obj)
    return canvas


def add_noise(canvas: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Add standard-normal ``noise`` (same shape) scaled to sigma 6; rounds and clips to uint8."""
    noisy = canvas.astype(np.float32)
    noisy += NOISE_SIGMA * noise
    np.rint(noisy, out=noisy)
    np.clip(noisy, 0, 255, out=noisy)
    return noisy.astype(np.uint8)


def draw(objects: Sequence[ShapeObject], background: Sequence[int], width: int, height: int,
         rng: np.random.Generator) -> np.ndarray:
    """Render objects on a flat background plus Gaussian noise (sigma 6): (H, W, 3) uint8 RGB."""
    canvas = draw_clean(objects, background, width, height)
    return add_noise(canvas, rng.standard_normal(canvas.shape, dtype=np.float32))


def left_to_right(objects: Sequence[ShapeObject]) -> list[ShapeObject]:
    """Order objects by the horizontal position of their box centres (then top to bottom)."""
    return sorted(objects, key=lambda o: (2 * o.x + o.size, 2 * o.y + o.size))


def caption_of(objects: Sequence[ShapeObject]) -> str:
    """Caption the objects left to right: 'a red circle, a blue square and a ...'."""
    phrases = [f'a {obj.name}' for obj in left_to_right(objects)]
    if len(phrases) <= 1:
        return ''.join(phrases)
    return ', '.join(phrases[:-1]) + ' and ' + phrases[-1]


def questions_of(objects: Sequence[ShapeObject],
                 rng: np.random.Generator) -> list[tuple[str, str]]:
    """
    List question/answer pairs (lower case) that the objects answer unambiguously.

    Colour questions for shapes seen exactly once, shape questions for colours seen exactly
    once, counts of each shape and of all objects, and "is there" questions for every
    present name plus as many absent names, drawn with ``rng``.
    """
    qa: list[tuple[str, str]] = []
    for shape in SHAPES:
        matching = [o for o in objects if o.shape == shape]
        if len(matching) == 1:
            qa.append((f'what color is the {shape}?', matching[0].colour))
    for colour in COLOURS:
        matching = [o for o in objects if o.colour == colour]
        if len(matching) == 1:
            qa.append((f'what shape is the {colour} object?', matching[0].shape))
    for shape in SHAPES:
        count = sum(o.shape == shape for o in objects)
        qa.append((f'how many {shape}s are there?', str(count)))
    qa.append(('how many objects are there?', str(len(objects))))
    present = sorted({o.name for o in objects}, key=NAMES.index)
    absent = [name for name in NAMES if name not in present]
    chosen = rng.choice(len(absent), size=min(len(present), len(absent)), replace=False)
    for name in present:
        qa.append((f'is there a {name}?', 'yes'))
    for index in sorted(int(i) for i in chosen):
        qa.append((f'is there a {absent[index]}?', 'no'))
    return qa


def sample_scene(rng: np.random.Generator, width: int = 640, height: int = 480) -> Scene:
    """Sample and render a scene with its ground truth (same generator state, same scene)."""
    background = sample_background(rng)
    objects = sample_objects(rng, width, height)
    image = draw(objects, background, width, height, rng)
    return Scene(image=image, objects=objects, background=background,
                 caption=caption_of(objects), qa=questions_of(objects, rng))
