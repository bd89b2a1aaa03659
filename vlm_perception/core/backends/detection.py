"""
Open-vocabulary detection with OWL-ViT and OWLv2 (transformers).

The image encoder (patch features and boxes) and the text encoder (query embeddings) run in
torch or, exported, in onnxruntime (``detector_runtime``, onnx_runtime.py); the class head
scoring patches against queries runs in torch for every request.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms

from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.frame import Frame, image_size, RGBImage
from vlm_perception.core.geometry import boxes_to_pixels, PAD, STRETCH
from vlm_perception.core.onnx_runtime import Encoder, Exportable
from vlm_perception.core.options import ModelOptions
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


class OwlImageEncoder(torch.nn.Module):
    """OWL's image-only part, as exported: patch features and the box of every patch."""

    def __init__(self, model: torch.nn.Module) -> None:
        """Wrap an Owl*ForObjectDetection."""
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map (B, 3, S, S) pixels to features (B, P, D) and boxes (B, P, 4)."""
        feature_map, _ = self.model.image_embedder(pixel_values=pixel_values)  # (B, h, w, D)
        batch, grid_h, grid_w, hidden = feature_map.shape
        image_features = feature_map.reshape(batch, grid_h * grid_w, hidden)  # (B, P, D)
        return image_features, self.model.box_predictor(image_features, feature_map)


class OwlTextEncoder(torch.nn.Module):
    """OWL's text part, as exported: one query embedding per text."""

    def __init__(self, clip: torch.nn.Module) -> None:
        """Wrap the OwlViTModel / Owlv2Model inside the detector."""
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Map (Q, L) tokens, padded to the model's length L, to (Q, D) query embeddings."""
        return self.clip.get_text_features(input_ids=input_ids,
                                           attention_mask=attention_mask).pooler_output


class OwlViTDetector(Exportable, HFBackend):
    """OWL-ViT: the image processor stretches the image to the network's square input."""

    capability = 'detect'
    model_class_name = 'OwlViTForObjectDetection'
    fit = STRETCH
    slot = 'detector'
    encoders = {'image_encoder': Encoder(('image_features', 'boxes')),
                'text_encoder': Encoder(('text_embeddings',))}

    def __init__(self, model_id: str, device: str, dtype: str,
                 options: ModelOptions | None = None) -> None:
        """Load the model and processor; the exported encoders too under onnxruntime."""
        super().__init__(model_id, device, dtype, options)
        self.start_runtime()

    @property
    def _clip(self):
        return self.model.owlvit

    def torch_encoder(self, part: str) -> torch.nn.Module:
        """Return the torch module of the image_encoder or the text_encoder."""
        return OwlImageEncoder(self.model) if part == 'image_encoder' else \
            OwlTextEncoder(self._clip)

    def encoder_examples(self) -> dict[str, dict[str, torch.Tensor]]:
        """Return example inputs: two images of other shapes, two labels."""
        images = [np.zeros((48, 80, 3), np.uint8), np.full((70, 30, 3), 200, np.uint8)]
        return {'image_encoder': {'pixel_values': self.pixels(images)['pixel_values']},
                'text_encoder': self._label_tokens(['a photo of a cup', 'dog'])}

    def _label_tokens(self, labels: list[str]) -> dict:
        length = self.config.text_config.max_position_embeddings
        return self.tokens(labels, padding='max_length', truncation=True, max_length=length)

    def encode_image(self, image: RGBImage) -> DetectionImageEncoding:
        """Image features and boxes of every patch (boxes do not depend on the queries)."""
        return self.encode_images([image])[0]

    def encode_images(self, images: list[RGBImage]) -> list[DetectionImageEncoding]:
        """
        Encode several images in one batch: one encoding per image, as encode_image gives it.

        The processor brings every image to the network's square input (OWLv2 pads first), so
        images of any sizes batch together.
        """
        pixel_values = self.pixels(images)['pixel_values']  # (B, 3, S, S)
        image_features, boxes = self.run_encoder(
            'image_encoder', pixel_values=pixel_values)  # (B, P, D), (B, P, 4)
        if len(images) == 1:
            return [DetectionImageEncoding(image_features, boxes, *image_size(images[0]))]
        # copies, so that each frame's encoding frees its own memory, not the batch's
        return [DetectionImageEncoding(image_features[i:i + 1].clone(), boxes[i:i + 1].clone(),
                                       *image_size(image)) for i, image in enumerate(images)]

    def encode_text(self, labels: list[str]) -> list[torch.Tensor]:
        """Return one query embedding per label."""
        return list(self.run_encoder('text_encoder', **self._label_tokens(labels))[0])

    def detect(self, frame: Frame, labels: list[str], threshold: float,
               text_cache: TextEmbeddingCache) -> list[Detection]:
        """
        Score every patch against one query embedding per label; keep each patch's best label.

        Returns detections at or above the threshold, best first, without duplicates. The image
        encoding is the frame's; label embeddings come from the text cache, each the mean over
        the ``detection_templates`` option's prompts (prompts.py; the class head normalises
        queries itself). Detections carry the labels as given, not their prompts.
        """
        encoding = frame.encoding(self.key, self.encode_image, self.tensor_device)
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
