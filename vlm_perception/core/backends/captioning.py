"""Image captioning with BLIP, optionally continuing a text prompt."""

import numpy as np
import torch

from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.backends.blip import generate_text
from vlm_perception.core.frame import Frame

MAX_CAPTION_TOKENS = 30


class BlipCaptioner(HFBackend):
    """BLIP captioning: the vision encoding is shared by every caption request on the frame."""

    capability = 'caption'
    model_class_name = 'BlipForConditionalGeneration'

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """Return the vision encoder's hidden states (1, 1 + patches, hidden)."""
        return self.model.vision_model(pixel_values=self.pixels(image)['pixel_values'])[0]

    def caption(self, frame: Frame, prompt: str | None = None) -> str:
        """Generate a caption greedily; with a prompt, the caption continues it (as in BLIP)."""
        image_states = frame.encoding(self.key, self.encode_image)
        start = None
        if prompt:
            # The decoder's positions hold the prompt less its closing token plus the caption.
            limit = self.config.text_config.max_position_embeddings - MAX_CAPTION_TOKENS + 1
            # As BlipForConditionalGeneration.generate: BOS replaces the first token, the
            # tokenizer's closing token is dropped.
            start = self.limited_tokens(prompt, 'prompt', limit)['input_ids'][:, :-1].clone()
            start[:, 0] = self.config.text_config.bos_token_id
        text, _ = generate_text(self.model.text_decoder, self.config.text_config, image_states,
                                self.tokenizer, start=start, max_new_tokens=MAX_CAPTION_TOKENS)
        return text
