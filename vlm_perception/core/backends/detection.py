"""Open-vocabulary detection with OWL-ViT and OWLv2 (transformers)."""

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms

from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.frame import Frame
from vlm_perception.core.geometry import boxes_to_pixels, PAD, STRETCH
from vlm_perception.core.prompts import cached_label_embeddings
from vlm_perception.core.types import Detection

# OWL predicts a box per patch, so one object is often found by neighbouring patches too: a box
# overlapping a better-scored box of the same label by more than this IoU is dropped.
DUPLICATE_IOU = 0.5


@dataclass
class DetectionImageEncoding:
    """Per-frame OWL output that does not depend on the queries."""

    image_features: torch.Tensor   # (1, patches, hidden)
    boxes: torch.Tensor            # (1, patches, 4): cx, cy, w, h fractions of the network input
    height: int                    # of the source image
    width: int


class OwlViTDetector(HFBackend):
    """OWL-ViT: the image processor stretches the image to the network's square input."""

    capability = 'detect'
    model_class_name = 'OwlViTForObjectDetection'
    fit = STRETCH

    @property
    def _clip(self):
        return self.model.owlvit

    def encode_image(self, image: np.ndarray) -> DetectionImageEncoding:
        """Image features and boxes of every patch (boxes do not depend on the queries)."""
        pixel_values = self.pixels(image)['pixel_values']
        feature_map, _ = self.model.image_embedder(pixel_values=pixel_values)  # (1, h, w, D)
        batch, grid_h, grid_w, hidden = feature_map.shape
        image_features = feature_map.reshape(batch, grid_h * grid_w, hidden)
        boxes = self.model.box_predictor(image_features, feature_map)
        return DetectionImageEncoding(image_features, boxes, image.shape[0], image.shape[1])

    def encode_text(self, labels: list[str]) -> list[torch.Tensor]:
        """Return one query embedding per label."""
        length = self.config.text_config.max_position_embeddings
        inputs = self.tokens(labels, padding='max_length', truncation=True, max_length=length)
        return list(self._clip.get_text_features(**inputs).pooler_output)

    def detect(self, frame: Frame, labels: list[str], threshold: float,
               text_cache: TextEmbeddingCache) -> list[Detection]:
        """
        Score every patch against one query embedding per label; keep each patch's best label.

        Returns detections at or above the threshold, best first, without duplicates. The image
        encoding is the frame's; label embeddings come from the text cache, each the mean over
        the ``detection_templates`` option's prompts (prompts.py; the class head normalises
        queries itself). Detections carry the labels as given, not their prompts.
        """
        encoding = frame.encoding(self.key, self.encode_image)
        queries = torch.stack(cached_label_embeddings(
            text_cache, self.key, labels, self.options.detection_templates, self.encode_text))
        logits, _ = self.model.class_predictor(encoding.image_features, queries[None])
        probabilities = torch.sigmoid(logits[0].float())  # (patches, Q)
        scores, query_index = probabilities.max(dim=-1)
        keep = torch.isfinite(scores) & (scores >= threshold)
        if not bool(keep.any()):
            return []
        boxes = torch.from_numpy(boxes_to_pixels(
            encoding.boxes[0][keep].float().cpu().numpy(), encoding.height, encoding.width,
            self.fit))  # (N, 4): cx, cy, w, h in pixels
        kept_scores, kept_queries = scores[keep].cpu().double(), query_index[keep].cpu()
        # Boxes lying in OWLv2's padding have no area once clipped, and NMS keeps them (IoU 0/0).
        has_area = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        boxes, kept_scores, kept_queries = boxes[has_area], kept_scores[has_area], \
            kept_queries[has_area]
        corners = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
        best_first = batched_nms(corners, kept_scores, kept_queries, DUPLICATE_IOU).tolist()
        return [Detection(labels[int(kept_queries[i])], float(kept_scores[i]),
                          *(float(v) for v in boxes[i])) for i in best_first]


class Owlv2Detector(OwlViTDetector):
    """OWLv2: the image processor pads the image bottom/right to a square first."""

    model_class_name = 'Owlv2ForObjectDetection'
    fit = PAD

    @property
    def _clip(self):
        return self.model.owlv2
