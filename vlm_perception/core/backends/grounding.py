"""
Open-vocabulary detection with Grounding DINO and MM Grounding DINO (transformers).

The labels go to the model as one prompt, the way GroundingDinoProcessor merges a label list:
each label stripped and lowercased, ending with '.', joined by spaces ("a cat. a remote
control."). The model scores every box query against every prompt token; a box's score is its
highest token probability, as ``post_process_grounded_object_detection`` gives it, and its label
is the asked label whose tokens hold the highest probability among label tokens.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.errors import InputError
from vlm_perception.core.frame import Frame, image_size, RGBImage
from vlm_perception.core.geometry import boxes_to_pixels, STRETCH
from vlm_perception.core.types import Detection


@dataclass
class GroundingImageInputs:
    """The image processor's output for one frame: the only query-independent part."""

    pixels: dict   # pixel_values (1, 3, H, W) and pixel_mask (1, H, W) on the model's device
    height: int    # of the source image
    width: int


@dataclass
class GroundingPrompt:
    """One prompt of labels: its token inputs and which label each token belongs to."""

    labels: list[str]
    inputs: dict              # input_ids, token_type_ids, attention_mask (1, T)
    token_labels: np.ndarray  # (T,) index into labels of each token, -1 for '.' and specials


def prompt_piece(label: str) -> str:
    """Return a label as it stands in the prompt: stripped, lowercased, without the '.'."""
    return label.strip().lower()


def prompt_text(labels: list[str]) -> str:
    """Join labels as GroundingDinoProcessor does: ``['A cat', 'dog'] -> 'a cat. dog.'``."""
    return ' '.join(f'{prompt_piece(label)}.' for label in labels)


class GroundingDinoDetector(HFBackend):
    """
    Grounding DINO: text and image are fused from the encoder on, so one pass per prompt.

    Only the image processor's output is query-independent; it is kept on the Frame, so several
    label sets on one frame preprocess once. The text cache is not used: the model has no label
    embedding independent of the image (the text features are cross-attended with the image in
    the feature enhancer), and caching the tokenization alone would save next to nothing.

    Labels past the model's text limit (``max_text_len`` tokens, 256 for the released
    checkpoints; the model silently drops what lies past it) go into further prompts, each run
    on its own; their detections are merged best first. This family predicts one box per query
    with a one-to-one matching loss, so no NMS follows.
    """

    capability = 'detect'
    model_class_name = 'GroundingDinoForObjectDetection'

    @property
    def max_text_len(self) -> int:
        """Most prompt tokens, special tokens included, the model reads."""
        return int(self.config.max_text_len)

    def compile_modules(self) -> dict[str, Any]:
        """
        Return the image backbone (Swin), the part of each prompt's pass that sees only pixels.

        Not the whole model: the prompt's length changes its shapes (a compile per vocabulary),
        and its deformable attention breaks the graph; compiling it all took a minute.
        """
        return {'backbone': self.model.model.backbone}

    def encode_image(self, image: RGBImage) -> GroundingImageInputs:
        """Run the image processor (resize keeping the aspect ratio, normalise)."""
        return GroundingImageInputs(self.pixels(image), *image_size(image))

    def chunks(self, labels: list[str]) -> list[list[str]]:
        """
        Split labels, in order, into runs whose prompt fits the model's text limit.

        A label's cost is its tokens plus its '.'; a prompt adds the tokenizer's special tokens
        ([CLS], [SEP]) once. A label that alone does not fit raises InputError.
        """
        limit = self.max_text_len
        special = self.tokenizer.num_special_tokens_to_add(pair=False)
        alone = [len(ids) for ids in
                 self.tokenizer([f'{prompt_piece(label)}.' for label in labels])['input_ids']]
        chunks: list[list[str]] = []
        used = limit + 1  # tokens in the last chunk; past the limit, so the first label opens one
        for label, count in zip(labels, alone):
            if count > limit:
                raise InputError(f'label too long: {count} tokens, {self.model_id} takes at '
                                 f'most {limit}')
            if used + count - special > limit:
                chunks.append([])
                used = special
            chunks[-1].append(label)
            used += count - special
        return chunks

    def prompts(self, labels: list[str]) -> list[GroundingPrompt]:
        """Return the prompts that together hold every label, each within the text limit."""
        prompts = []
        pending = self.chunks(labels)
        while pending:
            chunk = pending.pop(0)
            prompt = self._prompt(chunk)
            if prompt.token_labels.shape[0] > self.max_text_len and len(chunk) > 1:
                # Token counts did not add up (a tokenizer merging across '.'): split further.
                half = len(chunk) // 2
                pending[:0] = [chunk[:half], chunk[half:]]
                continue
            prompts.append(prompt)
        return prompts

    def _prompt(self, labels: list[str]) -> GroundingPrompt:
        """Tokenize the labels' prompt; each token's label comes from its character offsets."""
        text, spans = '', []
        for label in labels:
            piece = prompt_piece(label)
            text += ('' if not text else ' ') + piece + '.'
            start = len(text) - len(piece) - 1
            spans.append((start, start + len(piece)))
        encoded = self.tokenizer(text, return_tensors='pt', return_token_type_ids=True,
                                 return_offsets_mapping=True)
        token_labels = np.full(encoded['input_ids'].shape[1], -1, dtype=np.int64)
        for token, (begin, end) in enumerate(encoded['offset_mapping'][0].tolist()):
            if end <= begin:  # special tokens have no characters
                continue
            for index, (low, high) in enumerate(spans):
                if low <= begin and end <= high:
                    token_labels[token] = index
                    break
        inputs = {name: encoded[name].to(self.device)
                  for name in ('input_ids', 'token_type_ids', 'attention_mask')}
        return GroundingPrompt(list(labels), inputs, token_labels)

    def detect(self, frame: Frame, labels: list[str], threshold: float,
               text_cache: TextEmbeddingCache) -> list[Detection]:
        """
        Return the boxes scoring threshold or more, best first, clipped to the image.

        Boxes and scores are those of ``post_process_grounded_object_detection`` (which keeps
        scores strictly above the threshold; here, as every detector, at or above), clipped to
        the image, without boxes of no width or height. ``text_cache`` is unused (see the class).
        """
        del text_cache  # text is fused with the image: nothing per label to reuse
        image = frame.encoding(self.key, self.encode_image, self.tensor_device)
        detections: list[Detection] = []
        for prompt in self.prompts(labels):
            detections += self._detect_prompt(image, prompt, threshold)
        detections.sort(key=lambda detection: -detection.score)  # stable: in-prompt order kept
        return detections

    def _detect_prompt(self, image: GroundingImageInputs, prompt: GroundingPrompt,
                       threshold: float) -> list[Detection]:
        """Run the model on one prompt; label each kept box by its best label token."""
        outputs = self.model(**image.pixels, **prompt.inputs)
        probabilities = torch.sigmoid(outputs.logits[0].float()).cpu()  # (queries, max_text_len)
        scores = probabilities.max(dim=-1).values
        keep = torch.isfinite(scores) & (scores >= threshold)
        if not bool(keep.any()):
            return []
        tokens = min(prompt.token_labels.shape[0], probabilities.shape[1])
        token_labels = torch.from_numpy(prompt.token_labels[:tokens])
        # The best token may be [CLS], a '.' or [SEP]; the label is the best among label tokens.
        label_probabilities = probabilities[keep][:, :tokens].masked_fill(token_labels < 0, -1.0)
        best_token = label_probabilities.argmax(dim=-1)
        label_index = token_labels[best_token]
        boxes = boxes_to_pixels(outputs.pred_boxes[0][keep].float().cpu().numpy(), image.height,
                                image.width, STRETCH)  # (N, 4): cx, cy, w, h in pixels
        kept_scores = scores[keep].double().numpy()
        return [Detection(prompt.labels[int(index)], float(score), *(float(v) for v in box))
                for box, score, index in zip(boxes, kept_scores, label_index.tolist())
                if index >= 0 and box[2] > 0 and box[3] > 0]


class MMGroundingDinoDetector(GroundingDinoDetector):
    """
    MM Grounding DINO (OpenMMLab's retraining): its own model_type and class in transformers.

    It shares Grounding DINO's processor, prompt format and outputs; only the contrastive
    head differs (a learnt bias), inside the model.
    """

    model_class_name = 'MMGroundingDinoForObjectDetection'
