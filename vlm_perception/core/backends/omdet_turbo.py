"""
Real-time open-vocabulary detection with OmDet-Turbo (transformers).

OmDet-Turbo reads its labels twice: each label alone through the CLIP text tower (one class
embedding per label), and all of them in one task prompt, "Detect cup, red car, dog.", whose
token features the decoder attends to beside the image. Boxes, scores and labels are those of
``OmDetTurboProcessor.post_process_grounded_object_detection``, which this module calls.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.models.omdet_turbo.modeling_omdet_turbo import OmDetTurboObjectDetectionOutput

from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.errors import InputError
from vlm_perception.core.frame import Frame, image_size, RGBImage
from vlm_perception.core.types import Detection

# The processor's default (the model card's example uses 0.3); boxes of one label overlapping a
# better one by more than this IoU are dropped by the post-processing's own NMS.
NMS_IOU = 0.5
# The text cache's variant of task prompts, apart from the labels' class embeddings.
TASK_VARIANT = 'task'


@dataclass
class OmDetImageEncoding:
    """The query-independent part of OmDet-Turbo for one frame: backbone plus hybrid encoder."""

    features: list[torch.Tensor]  # the encoder's multi-scale maps (1, C, h, w), fine to coarse
    height: int                   # of the source image
    width: int


@dataclass
class OmDetTask:
    """Token features of one task prompt, as the model's language backbone gives them."""

    features: torch.Tensor  # (T, 1, D), T the prompt's tokens
    mask: torch.Tensor      # (1, T) attention mask


def task_prompt(labels: list[str]) -> str:
    """Return the task OmDetTurboProcessor writes by default: ``'Detect cup, red car.'``."""
    return f"Detect {', '.join(labels)}."


def corners_to_detections(corners: np.ndarray, scores: np.ndarray, names: list[str],
                          height: int, width: int) -> list[Detection]:
    """Turn (N, 4) pixel corners into Detections clipped to the image, dropping empty boxes."""
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 4)
    x0, x1 = np.clip(corners[:, 0], 0, width), np.clip(corners[:, 2], 0, width)
    y0, y1 = np.clip(corners[:, 1], 0, height), np.clip(corners[:, 3], 0, height)
    return [Detection(name, float(score), float((left + right) / 2), float((top + bottom) / 2),
                      float(right - left), float(bottom - top))
            for name, score, left, top, right, bottom in zip(names, scores, x0, y0, x1, y1)
            if right > left and bottom > top]


class OmDetTurboDetector(HFBackend):
    """
    OmDet-Turbo: image, labels and task prompt are encoded apart and meet only in the decoder.

    The model's forward is split where it splits itself: the vision backbone and hybrid encoder
    run once per frame (kept on the Frame); each label's class embedding is kept in the text
    cache, and so is the task prompt's token features, keyed by the whole prompt (a label set
    asked again reuses it). Only the decoder and the post-processing run per request. The
    model's own prompt and class caches are bypassed.

    A label, and the task prompt holding all labels, must fit the text tower's positions (77
    tokens in the released model, some 35 one-word labels; the processor would cut the text
    silently): past them the request is refused with an InputError. Labels go in as given, as
    the processor puts them; the ``detection_templates`` option does not apply.
    """

    capability = 'detect'
    model_class_name = 'OmDetTurboForObjectDetection'

    @property
    def max_text_len(self) -> int:
        """Most tokens, special tokens included, of a label or of the task prompt."""
        return int(self.config.text_config.max_position_embeddings)

    def encode_image(self, image: RGBImage) -> OmDetImageEncoding:
        """Run the image processor, the vision backbone and the hybrid encoder."""
        pixel_values = self.pixels(image)['pixel_values']
        encoded = self.model.encoder(self.model.vision_backbone(pixel_values), return_dict=True)
        return OmDetImageEncoding(list(encoded.extracted_states), *image_size(image))

    def compile_modules(self) -> dict[str, Any]:
        """
        Return the per-frame modules: vision backbone and hybrid encoder.

        Not the decoder: its shapes follow the label count, so each new vocabulary would
        compile it again (seconds), and its dynamic-shape graph ran slower than eager.
        """
        return {name: getattr(self.model, name) for name in ('vision_backbone', 'encoder')}

    def _text_inputs(self, texts: list[str], what: str) -> dict:
        """
        Tokenize as OmDetTurboProcessor does, padded to the text limit.

        A text past the limit raises InputError, its message starting with ``what``.
        """
        limit = self.max_text_len
        count = max(len(ids) for ids in self.tokenizer(texts)['input_ids'])
        if count > limit:
            raise InputError(f'{what} {count} tokens, {self.model_id} takes at most {limit}')
        return self.tokens(texts, padding='max_length', max_length=limit)

    def encode_labels(self, labels: list[str]) -> list[torch.Tensor]:
        """Return each label's class embedding (D,), as the language backbone gives it."""
        inputs = self._text_inputs(labels, 'label too long:')
        return list(self.model.language_backbone(inputs['input_ids'], encode_type='class'))

    def encode_tasks(self, prompts: list[str]) -> list[OmDetTask]:
        """Return the token features of each task prompt."""
        inputs = self._text_inputs(prompts, 'too many labels: their task prompt is')
        tasks = []
        for index in range(len(prompts)):  # one at a time: features are cut to the prompt
            features, mask = self.model.language_backbone(
                inputs['input_ids'][index:index + 1],
                mask=inputs['attention_mask'][index:index + 1], encode_type='task')
            tasks.append(OmDetTask(features, mask))
        return tasks

    def detect(self, frame: Frame, labels: list[str], threshold: float,
               text_cache: TextEmbeddingCache) -> list[Detection]:
        """
        Return the boxes scoring threshold or more, best first, clipped to the image.

        They are those of ``post_process_grounded_object_detection`` (its top-query selection
        and per-label NMS included; it keeps scores strictly above its threshold, so it is given
        the next float below ours) without boxes of no width or height.
        """
        image = frame.encoding(self.key, self.encode_image, self.tensor_device)
        classes = torch.stack(text_cache.get(self.key, labels, self.encode_labels))  # (Q, D)
        task = text_cache.get(self.key, [task_prompt(labels)], self.encode_tasks,
                              variant=TASK_VARIANT)[0]
        decoded = self.model.decoder(image.features, classes[:, None], task.features, task.mask,
                                     return_dict=True)
        outputs = OmDetTurboObjectDetectionOutput(
            decoder_coord_logits=decoded.decoder_coords[-1].float(),
            decoder_class_logits=decoded.decoder_classes[-1].float(),
            classes_structure=torch.tensor([len(labels)], device=classes.device))
        below = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
        result = self.processor.post_process_grounded_object_detection(
            outputs, threshold=below, nms_threshold=NMS_IOU,
            target_sizes=[(image.height, image.width)])[0]
        names = [labels[int(index)] for index in result['labels'].tolist()]
        return corners_to_detections(result['boxes'].cpu().numpy(),
                                     result['scores'].cpu().double().numpy(), names,
                                     image.height, image.width)
