"""The one-paragraph scene summary, for people, logs and language planners."""

from collections import defaultdict
from typing import Sequence

from vlm_perception.core.types import Answer, Detection, LabelScore

MAX_TAGS = 3


def horizontal_place(center_x: float, image_width: int) -> str:
    """Return 'on the left', 'in the centre' or 'on the right' for an x position."""
    fraction = center_x / max(image_width, 1)
    if fraction < 1 / 3:
        return 'on the left'
    if fraction > 2 / 3:
        return 'on the right'
    return 'in the centre'


def _count_phrase(label: str, count: int) -> str:
    if count == 1:
        return f'one {label}'
    plural = label if label.endswith('s') else f'{label}s'
    return f'{count} {plural}'


def summarize(caption: str, tags: Sequence[LabelScore], detections: Sequence[Detection] | None,
              image_width: int, answer: Answer | None = None) -> str:
    """
    Build one paragraph: caption, top tags, detections grouped by label and place, answer.

    ``detections`` is None when detection did not run (nothing is said about objects then).
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
        for detection in sorted(detections, key=lambda d: d.center_x):
            places[detection.label].append(horizontal_place(detection.center_x, image_width))
        groups = []
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
