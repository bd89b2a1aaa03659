"""Image captioning with BLIP, optionally continuing a text prompt."""

import torch

from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.backends.blip import generate_texts
from vlm_perception.core.frame import Frame, RGBImage


class BlipCaptioner(HFBackend):
    """BLIP captioning: the vision encoding is shared by every caption request on the frame."""

    capability = 'caption'
    model_class_name = 'BlipForConditionalGeneration'

    def encode_image(self, image: RGBImage) -> torch.Tensor:
        """Return the vision encoder's hidden states (1, 1 + patches, hidden)."""
        return self.model.vision_model(pixel_values=self.pixels(image)['pixel_values'])[0]

    def caption(self, frame: Frame, prompt: str | None = None) -> str:
        """
        Generate a caption; with a prompt, the caption continues it (as in BLIP).

        Without one, the ``caption_prompt`` option is continued when set. A caption has at most
        ``caption_max_new_tokens`` tokens, and no more than the decoder's positions leave.
        """
        image_states = frame.encoding(self.key, self.encode_image, self.tensor_device)
        prompt = prompt or self.options.caption_prompt
        positions = self.config.text_config.max_position_embeddings
        start = None
        if prompt:
            # The decoder sees the prompt less its closing token: one position must stay free.
            # As BlipForConditionalGeneration.generate: BOS replaces the first token, the
            # tokenizer's closing token is dropped.
            start = self.limited_tokens([prompt], 'prompt', positions)['input_ids'][:, :-1].clone()
            start[:, 0] = self.config.text_config.bos_token_id
        used = 1 if start is None else start.shape[1]
        # Past its position table the decoder fails: the caption stops there at the latest.
        max_new_tokens = min(self.options.caption_max_new_tokens, positions - used)
        (text, _), = generate_texts(self.model.text_decoder, self.config.text_config,
                                    image_states, None, self.tokenizer, start, max_new_tokens,
                                    self.options)
        return text
