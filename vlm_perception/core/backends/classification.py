"""Zero-shot classification and scene tags with an open_clip CLIP model."""

import numpy as np
from PIL import Image
import torch

from vlm_perception.core.backends.base import Backend
from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.frame import Frame
from vlm_perception.core.loading import load_open_clip


class OpenClipClassifier(Backend):
    """CLIP image/text embeddings; scores are a softmax over the given labels."""

    capability = 'tags'

    def __init__(self, model_id: str, device: str, dtype: str) -> None:
        """Load the model, its image preprocessing and tokenizer (see loading.load_open_clip)."""
        super().__init__(model_id, device, dtype)
        self.model, self.preprocess, self.tokenizer = load_open_clip(
            model_id, device, self.torch_dtype)

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """Return the normalised (D,) embedding of the whole image."""
        return self.encode_images([image])[0]

    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Return normalised (N, D) embeddings of several images (e.g. detection crops)."""
        batch = torch.stack([self.preprocess(Image.fromarray(image)) for image in images])
        features = self.model.encode_image(batch.to(self.device, self.torch_dtype))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def encode_text(self, labels: list[str]) -> list[torch.Tensor]:
        """Return one normalised embedding per label."""
        features = self.model.encode_text(self.tokenizer(labels).to(self.device))
        return list(torch.nn.functional.normalize(features.float(), dim=-1))

    def scores(self, frame: Frame, labels: list[str],
               text_cache: TextEmbeddingCache) -> np.ndarray:
        """Return the (Q,) scores of the labels for the whole frame (its encoding is kept)."""
        return self._scores(frame.encoding(self.key, self.encode_image), labels, text_cache)[0]

    def crop_scores(self, crops: list[np.ndarray], labels: list[str],
                    text_cache: TextEmbeddingCache) -> np.ndarray:
        """Return the (N, Q) scores of the labels for N crops."""
        return self._scores(self.encode_images(crops), labels, text_cache)

    def _scores(self, image_embeddings: torch.Tensor, labels: list[str],
                text_cache: TextEmbeddingCache) -> np.ndarray:
        """Softmax over labels of CLIP's scaled cosine similarity: (N, Q)."""
        label_embeddings = torch.stack(text_cache.get(self.key, labels, self.encode_text))
        scale = self.model.logit_scale.exp().float()
        logits = scale * image_embeddings.reshape(-1, label_embeddings.shape[-1]) @ \
            label_embeddings.T
        return torch.softmax(logits, dim=-1).cpu().numpy()
