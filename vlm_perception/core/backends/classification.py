"""Zero-shot classification and scene tags with an open_clip CLIP model."""

import numpy as np
from PIL import Image
import torch

from vlm_perception.core.backends.base import Backend
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

    def scores(self, image_embeddings: torch.Tensor, label_embeddings: torch.Tensor) -> np.ndarray:
        """Softmax over labels of CLIP's scaled cosine similarity: (N, D), (Q, D) -> (N, Q)."""
        scale = self.model.logit_scale.exp().float()
        logits = scale * image_embeddings.reshape(-1, label_embeddings.shape[-1]) @ \
            label_embeddings.T
        return torch.softmax(logits, dim=-1).cpu().numpy()
