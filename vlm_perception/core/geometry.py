"""Box geometry: network box outputs to pixels of the source image."""

import numpy as np

# How an image processor fits the source image into the network's square input.
STRETCH = 'stretch'   # resized to the square, aspect ratio lost (OwlViTImageProcessor)
PAD = 'pad'           # padded bottom/right to a square first, then resized (Owlv2ImageProcessor)


def boxes_to_pixels(boxes: np.ndarray, image_height: int, image_width: int,
                    fit: str) -> np.ndarray:
    """
    Map (N, 4) boxes (cx, cy, w, h as fractions of the network input) to source pixels.

    With ``STRETCH`` the fractions are of the source image's width and height; with ``PAD`` they
    are of the padded square whose side is the longer source side. Boxes are clipped to the
    image; the result is (N, 4) centre x, centre y, width, height in pixels.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if fit == STRETCH:
        scale = np.array([image_width, image_height, image_width, image_height], dtype=np.float64)
    elif fit == PAD:
        scale = np.full(4, float(max(image_height, image_width)))
    else:
        raise ValueError(f"unknown fit '{fit}' (expected '{STRETCH}' or '{PAD}')")
    centre_x, centre_y, size_x, size_y = (boxes * scale).T  # each (N,)
    x0 = np.clip(centre_x - size_x / 2, 0, image_width)
    x1 = np.clip(centre_x + size_x / 2, 0, image_width)
    y0 = np.clip(centre_y - size_y / 2, 0, image_height)
    y1 = np.clip(centre_y + size_y / 2, 0, image_height)
    return np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=1)
