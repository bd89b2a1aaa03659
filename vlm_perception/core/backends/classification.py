"""
Zero-shot classification and scene tags: CLIP (softmax) and SigLIP (sigmoid) embedding models.

Both compare one image embedding with one embedding per label, by cosine similarity; they differ
in how a cosine becomes a score. CLIP was trained with a softmax over the batch, so its scores are
a softmax of ``logit_scale.exp() * cos`` over the asked labels (they sum to 1, relative to the
other labels). SigLIP was trained with a sigmoid per image-text pair, so each label's score is
``sigmoid(logit_scale.exp() * cos + logit_bias)`` on its own (absolute: several labels, or none,
can score high). open_clip holds both kinds; its SigLIP checkpoints are the ones with a
``logit_bias``.
"""

import math
from typing import Any

import numpy as np
from PIL import Image
import torch

from vlm_perception.core.backends.base import Backend, HFBackend
from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.frame import Frame, RGBImage
from vlm_perception.core.loading import load_open_clip
from vlm_perception.core.onnx_runtime import Encoder, Exportable
from vlm_perception.core.options import ModelOptions
from vlm_perception.core.prompts import cached_label_embeddings


def softmax_scores(cosine: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP: softmax over the labels (last axis) of the scaled cosine similarities."""
    return torch.softmax(logit_scale.exp().float() * cosine, dim=-1)


def sigmoid_scores(cosine: torch.Tensor, logit_scale: torch.Tensor,
                   logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP: an independent sigmoid per label of the scaled and shifted cosine similarity."""
    return torch.sigmoid(logit_scale.exp().float() * cosine + logit_bias.float())


class EmbeddingTagger:
    """
    A tagger that compares an image embedding with one embedding per label (CLIP, SigLIP).

    What every such model shares lives here: the frame's embedding is computed once and kept on
    the Frame (``Frame.encoding`` under the model's ``key``), label embeddings (the mean over the
    ``tag_templates`` option's prompts, prompts.py) are kept in the text cache, and crops are
    embedded as one batch. A model supplies ``encode_images``, ``encode_text`` (both
    normalised) and ``probabilities`` (cosine -> score).
    """

    key: str
    options: ModelOptions  # tag_templates: labels are embedded through them (prompts.py)
    tensor_device: str | None  # how encode_image takes the frame (Backend)

    def encode_image(self, image: RGBImage) -> torch.Tensor:
        """Return the normalised (D,) embedding of the whole image."""
        return self.encode_images([image])[0]

    def encode_images(self, images: list[RGBImage]) -> torch.Tensor:
        """Return normalised (N, D) embeddings of several RGB images (e.g. detection crops)."""
        raise NotImplementedError

    def encode_text(self, labels: list[str]) -> list[torch.Tensor]:
        """Return one normalised (D,) embedding per label."""
        raise NotImplementedError

    def probabilities(self, cosine: torch.Tensor) -> torch.Tensor:
        """Turn (N, Q) cosine similarities into (N, Q) scores, 0..1."""
        raise NotImplementedError

    def scores(self, frame: Frame, labels: list[str],
               text_cache: TextEmbeddingCache) -> np.ndarray:
        """Return the (Q,) scores of the labels for the whole frame (its encoding is kept)."""
        encoding = frame.encoding(self.key, self.encode_image, self.tensor_device)
        return self._scores(encoding, labels, text_cache)[0]

    def crop_scores(self, crops: list[np.ndarray], labels: list[str],
                    text_cache: TextEmbeddingCache) -> np.ndarray:
        """Return the (N, Q) scores of the labels for N crops."""
        return self._scores(self.encode_images(crops), labels, text_cache)

    def _scores(self, image_embeddings: torch.Tensor, labels: list[str],
                text_cache: TextEmbeddingCache) -> np.ndarray:
        label_embeddings = torch.stack(cached_label_embeddings(
            text_cache, self.key, labels, self.options.tag_templates, self.encode_text))
        cosine = image_embeddings.reshape(-1, label_embeddings.shape[-1]) @ label_embeddings.T
        return self.probabilities(cosine).cpu().numpy()


def _normalised(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=-1)


def _with_a_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """
    Pad a sliver (black, centred) so that fitting its long side to size leaves a short side.

    open_clip's longest-side resize floors a 1000x2 frame's short side to 0 pixels and fails;
    the padding is the black its letterbox adds anyway.
    """
    least = math.ceil(max(image.shape[:2]) / size) + 1
    pads = [max(least - side, 0) for side in image.shape[:2]]
    if not any(pads):
        return image
    return np.pad(image, [(pad // 2, pad - pad // 2) for pad in pads] + [(0, 0)])


class OpenClipImageEncoder(torch.nn.Module):
    """open_clip's image tower, as exported: (N, 3, S, S) pixels -> (N, D), not normalised."""

    def __init__(self, model: torch.nn.Module) -> None:
        """Wrap an open_clip CLIP or CustomTextCLIP."""
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return the image embeddings of a batch of preprocessed images."""
        return self.model.encode_image(pixel_values)


class OpenClipTextEncoder(OpenClipImageEncoder):
    """open_clip's text tower, as exported: (N, L) token ids -> (N, D), not normalised."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return the text embeddings of a batch of tokenized texts."""
        return self.model.encode_text(input_ids)


class OpenClipClassifier(Exportable, EmbeddingTagger, Backend):
    """
    An open_clip model: CLIP scores are a softmax over the labels, SigLIP scores a sigmoid each.

    open_clip's SigLIP checkpoints (``ViT-B-16-SigLIP`` and the like) are the models with a
    ``logit_bias``; it decides the score function. The image and text towers run in torch or,
    exported, in onnxruntime (``tagger_runtime``, onnx_runtime.py).
    """

    capability = 'tags'
    slot = 'tagger'
    encoders = {'image_encoder': Encoder(('image_embeddings',)),
                'text_encoder': Encoder(('text_embeddings',))}

    def __init__(self, model_id: str, device: str, dtype: str,
                 options: ModelOptions | None = None) -> None:
        """
        Load the model, its image preprocessing and tokenizer (see loading.load_open_clip).

        The preprocessing fits frames to the square input as the ``tag_resize_mode`` option says
        (open_clip's ``image_resize_mode``), read here: a change holds from the next load.
        """
        super().__init__(model_id, device, dtype, options)
        self.model, self.preprocess, self.tokenizer = load_open_clip(
            model_id, device, self.torch_dtype, resize_mode=self.options.tag_resize_mode)
        self.sigmoid = getattr(self.model, 'logit_bias', None) is not None
        # tensor_device stays None: open_clip's preprocessing is PIL's, on the CPU, and a torch
        # resize would not give PIL's pixels.
        self.start_runtime()

    def compile_modules(self) -> dict[str, Any]:
        """Return the image tower, which runs per frame (the text tower per vocabulary)."""
        return {'visual': self.model.visual}

    def torch_encoder(self, part: str) -> torch.nn.Module:
        """Return the torch module of the image_encoder or the text_encoder."""
        return (OpenClipImageEncoder if part == 'image_encoder' else OpenClipTextEncoder)(
            self.model)

    def encoder_examples(self) -> dict[str, dict[str, torch.Tensor]]:
        """Return example inputs: two images of other shapes, two labels."""
        images = [np.zeros((48, 80, 3), np.uint8), np.full((70, 30, 3), 200, np.uint8)]
        return {'image_encoder': {'pixel_values': self._pixels(images)},
                'text_encoder': {'input_ids': self._tokens(['a photo of a cup', 'dog'])}}

    def _pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        if self.options.tag_resize_mode == 'longest':
            images = [_with_a_short_side(image, self._input_size) for image in images]
        batch = torch.stack([self.preprocess(Image.fromarray(image)) for image in images])
        return batch.to(self.device, self.torch_dtype)  # (N, 3, S, S)

    def _tokens(self, labels: list[str]) -> torch.Tensor:
        return self.tokenizer(labels).to(self.device)  # (N, L)

    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Return normalised (N, D) embeddings of several images (e.g. detection crops)."""
        return _normalised(self.run_encoder('image_encoder',
                                            pixel_values=self._pixels(images))[0])

    @property
    def _input_size(self) -> int:
        size = self.model.visual.image_size
        return max(size) if isinstance(size, (tuple, list)) else int(size)

    def encode_text(self, labels: list[str]) -> list[torch.Tensor]:
        """Return one normalised embedding per label."""
        return list(_normalised(self.run_encoder('text_encoder',
                                                 input_ids=self._tokens(labels))[0]))

    def probabilities(self, cosine: torch.Tensor) -> torch.Tensor:
        """Sigmoid per label for a SigLIP model (it has a logit_bias), else softmax over them."""
        if self.sigmoid:
            return sigmoid_scores(cosine, self.model.logit_scale, self.model.logit_bias)
        return softmax_scores(cosine, self.model.logit_scale)


class SiglipTagger(EmbeddingTagger, HFBackend):
    """
    transformers SigLIP: a sigmoid score per label, as the zero-shot-image-classification pipeline.

    Labels are tokenized padded to the text model's full length (``padding='max_length'``), the
    way SigLIP was trained: its text embedding is the last position's, padding included. Only the
    tokenizer's own outputs reach the model (SigLIP's tokenizer gives no attention mask).
    """

    capability = 'tags'
    model_class_name = 'SiglipModel'

    def encode_images(self, images: list[RGBImage]) -> torch.Tensor:
        """Return normalised (N, D) embeddings; the image processor takes the list as a batch."""
        inputs = self.pixels(images)  # a list of images (arrays or tensors) is one batch
        return _normalised(self.model.get_image_features(**inputs).pooler_output)

    def encode_text(self, labels: list[str]) -> list[torch.Tensor]:
        """Return one normalised embedding per label, each padded to the text model's length."""
        length = self.config.text_config.max_position_embeddings
        encoded = self.tokenizer(labels, padding='max_length', truncation=True,
                                 max_length=length, return_tensors='pt')
        inputs = {name: value.to(self.device) for name, value in encoded.items()
                  if name in ('input_ids', 'attention_mask')}
        return list(_normalised(self.model.get_text_features(**inputs).pooler_output))

    def probabilities(self, cosine: torch.Tensor) -> torch.Tensor:
        """Sigmoid per label of SigLIP's scaled and shifted cosine similarity."""
        return sigmoid_scores(cosine, self.model.logit_scale, self.model.logit_bias)


class Siglip2Tagger(SiglipTagger):
    """
    transformers SigLIP2: as SigLIP; its image processor may cut images into a variable patch grid.

    The NaFlex processor resizes each image to at most ``max_num_patches`` patches, keeping its
    aspect ratio, and pads to that count; the pixel mask and grid shapes it returns go to the
    model with the pixels (``pixels`` passes every tensor the image processor gives).
    """

    model_class_name = 'Siglip2Model'
