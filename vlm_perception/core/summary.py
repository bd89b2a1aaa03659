"""The one-paragraph scene summary, for people, logs and language planners."""

from collections import defaultdict
from typing import Sequence

from vlm_perception.core.types import Answer, Detection, LabelScore, Vector

MAX_TAGS = 3
STRAIGHT_AHEAD_M = 0.05  # lateral offsets below this are not mentioned


def horizontal_place(center_x: float, image_width: int) -> str:
    """Return 'on the left', 'in the centre' or 'on the right' for an x position."""
    fraction = center_x / max(image_width, 1)
    if fraction < 1 / 3:
        return 'on the left'
    if fraction > 2 / 3:
        return 'on the right'
    return 'in the centre'


def position_words(position: Vector) -> str:
    """Return e.g. '1.2 m ahead, 0.3 m to the left' (camera optical frame: ahead z, left -x)."""
    x, _, z = position
    words = f'{z:.1f} m ahead'
    if abs(x) >= STRAIGHT_AHEAD_M:
        words += f', {abs(x):.1f} m to the {"left" if x < 0 else "right"}'
    return words


def _article(label: str) -> str:
    return 'an' if label[:1].lower() in 'aeiou' else 'a'


def _count_phrase(label: str, count: int) -> str:
    if count == 1:
        return f'one {label}'
    plural = label if label.endswith('s') else f'{label}s'
    return f'{count} {plural}'


def summarize(caption: str, tags: Sequence[LabelScore], detections: Sequence[Detection] | None,
              image_width: int, answer: Answer | None = None) -> str:
    """
    Build one paragraph: caption, top tags, detections, answer.

    A detection placed in 3D is said with its distance and side ("a red cup 1.2 m ahead, 0.3 m
    to the left"); the others are grouped by label and side of the image. ``detections`` is None
    when detection did not run (nothing is said about objects then).
    """
    sentences = []
    if caption:
        text = caption.strip()
        sentences.append(text[:1].upper() + text[1:] + ('' if text.endswith('.') else '.'))
    if tags:
        top = ', '.join(f'{tag.label} ({tag.score:.2f})' for tag in tags[:MAX_TAGS])
        sentences.append(f'It looks like: {top}.')
    if detections:
        places = defaultdict(list)
        groups = []
        for detection in sorted(detections, key=lambda d: d.center_x):
            if detection.position is not None:
                groups.append(f'{_article(detection.label)} {detection.label} '
                              f'{position_words(detection.position)}')
            else:
                places[detection.label].append(horizontal_place(detection.center_x, image_width))
        for label, where in places.items():
            unique = list(dict.fromkeys(where))
            groups.append(f"{_count_phrase(label, len(where))} {' and '.join(unique)}")
        sentences.append(f"Detected {len(detections)} object{'s' if len(detections) > 1 else ''}: "
                         f"{'; '.join(groups)}.")
    elif detections is not None:
        sentences.append('No object of the vocabulary was detected.')
    if answer is not None:
        sentences.append(f'Asked "{answer.question}", the answer is "{answer.answer}" '
                         f'(confidence {answer.confidence:.2f}).')
    return ' '.join(sentences)
