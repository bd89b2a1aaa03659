"""
Box-prompted segmentation with SAM and SAM2 (transformers): one mask per detection.

The image encoder runs once per frame (the embedding is kept on the Frame); each call prompts
the mask decoder with the detections' boxes, scaled as the processor scales them, and turns
its low-resolution logits into the image's pixels with the processor's ``post_process_masks``
(logits above 0 are the object). The mask is then cut to the box's pixel_window. One mask per
box (``multimask_output=False``): a box leaves little ambiguity, and SAM's authors use the
single-mask output for box prompts.
"""

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.frame import Frame, RGBImage
from vlm_perception.core.types import Detection

# Boxes decoded together at most: each holds a copy of the image embedding and a full-size
# mask while being post-processed.
MAX_BOXES_PER_CALL = 16


@dataclass
class SegmentationImageEncoding:
    """A frame's image embedding, and the sizes post-processing needs."""

    embeddings: Any                         # SAM: (1, C, h, w); SAM2: feature maps, finest first
    original_size: tuple[int, int]          # height, width of the source image
    reshaped_size: tuple[int, int] | None   # SAM: the image's size inside the padded input


class SamSegmenter(HFBackend):
    """SAM: the image processor resizes the longest side to the input size, then pads."""

    capability = 'segment'
    model_class_name = 'SamModel'

    def encode_image(self, image: RGBImage) -> SegmentationImageEncoding:
        """Run the image processor and the vision encoder once."""
        inputs = self.pixels(image)
        reshaped = inputs.get('reshaped_input_sizes')
        return SegmentationImageEncoding(
            self.model.get_image_embeddings(inputs['pixel_values']),
            tuple(inputs['original_sizes'][0].tolist()),
            None if reshaped is None else tuple(reshaped[0].tolist()))

    def prompt_boxes(self, encoding: SegmentationImageEncoding, boxes: np.ndarray) -> Any:
        """Return (1, N, 4) boxes in the network input's pixels, as SamProcessor scales them."""
        (old_height, old_width), (new_height, new_width) = (encoding.original_size,
                                                            encoding.reshaped_size)
        # float32 then float64, as the processor does, for the same prompts to the last bit
        scaled = boxes.astype(np.float32).astype(np.float64).reshape(-1, 2, 2) * \
            np.array([new_width / old_width, new_height / old_height])
        return torch.from_numpy(scaled.reshape(1, -1, 4)).to(self.device)

    def full_masks(self, logits: torch.Tensor, encoding: SegmentationImageEncoding) -> Any:
        """Return the (N, H, W) boolean masks of the image from (1, N, 1, h, w) logits."""
        masks, = self.processor.post_process_masks(
            logits.float(), [encoding.original_size], [encoding.reshaped_size])
        return masks[:, 0]

    def segment(self, frame: Frame, detections: Sequence[Detection]) -> list[np.ndarray]:
        """Return one mono8 mask (255 = object) per detection over its box's pixel_window."""
        if not detections:
            return []
        encoding = frame.encoding(self.key, self.encode_image, self.tensor_device)
        result = []
        for start in range(0, len(detections), MAX_BOXES_PER_CALL):
            chunk = detections[start:start + MAX_BOXES_PER_CALL]
            outputs = self.model(image_embeddings=encoding.embeddings,
                                 input_boxes=self.prompt_boxes(
                                     encoding, np.array([d.box for d in chunk])),
                                 multimask_output=False)
            masks = self.full_masks(outputs.pred_masks, encoding)
            for detection, mask in zip(chunk, masks):
                left, top, right, bottom = detection.pixel_window(frame.width, frame.height)
                window = mask[top:bottom, left:right].cpu().numpy()
                result.append(window.astype(np.uint8) * np.uint8(255))
        return result


class Sam2Segmenter(SamSegmenter):
    """SAM2: the image processor stretches the image to the square input (no padding)."""

    model_class_name = 'Sam2Model'

    def prompt_boxes(self, encoding: SegmentationImageEncoding, boxes: np.ndarray) -> Any:
        """Return (1, N, 4) boxes in the network input's pixels, scaled by Sam2Processor."""
        inputs = self.processor(input_boxes=[boxes.tolist()],
                                original_sizes=[list(encoding.original_size)],
                                return_tensors='pt')
        return inputs['input_boxes'].to(self.device)  # the model casts them to its dtype

    def full_masks(self, logits: torch.Tensor, encoding: SegmentationImageEncoding) -> Any:
        """Return the (N, H, W) boolean masks of the image from (1, N, 1, h, w) logits."""
        masks, = self.processor.post_process_masks(logits.float(), [encoding.original_size])
        return masks[:, 0]
