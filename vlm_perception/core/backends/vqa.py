"""Visual question answering with ViLT (answer classifier) and BLIP VQA (answer generator)."""

from dataclasses import dataclass

import numpy as np
import torch

from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.backends.blip import generate_text
from vlm_perception.core.frame import Frame


@dataclass
class ViltImageEncoding:
    """ViLT's patch embedding of one frame (position embeddings added), and its mask."""

    patches: torch.Tensor  # (1, 1 + patches, hidden)
    mask: torch.Tensor     # (1, 1 + patches)


class ViltAnswerer(HFBackend):
    """ViLT fuses image and text in one transformer, so only its patch embedding is shared."""

    capability = 'vqa'
    model_class_name = 'ViltForQuestionAnswering'

    def encode_image(self, image: np.ndarray) -> ViltImageEncoding:
        """Embed the image patches once; every question on the frame reuses them."""
        inputs = self.pixels(image)
        patches, mask, _ = self.model.vilt.embeddings.visual_embed(
            inputs['pixel_values'], inputs['pixel_mask'],
            max_image_length=self.config.max_image_length)
        return ViltImageEncoding(patches, mask)

    def answer(self, frame: Frame, question: str) -> tuple[str, float]:
        """Return the most probable answer of the answer vocabulary and its probability."""
        encoding = frame.encoding(self.key, self.encode_image)
        length = self.config.max_position_embeddings
        # Without truncation an over-long question stays whole, for limited_tokens to refuse.
        inputs = self.limited_tokens(question, 'question', length, padding='max_length',
                                     max_length=length)
        logits = self.model(**inputs, image_embeds=encoding.patches,
                            pixel_mask=encoding.mask).logits[0]
        probabilities = torch.sigmoid(logits.float())
        best = int(probabilities.argmax())
        return self.config.id2label[best], float(probabilities[best])


class BlipAnswerer(HFBackend):
    """BLIP VQA: the vision encoding is shared by every question on the frame."""

    capability = 'vqa'
    model_class_name = 'BlipForQuestionAnswering'

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """Return the vision encoder's hidden states (1, 1 + patches, hidden)."""
        return self.model.vision_model(pixel_values=self.pixels(image)['pixel_values'])[0]

    def answer(self, frame: Frame, question: str) -> tuple[str, float]:
        """Generate an answer; confidence is the probability of the whole answer."""
        image_states = frame.encoding(self.key, self.encode_image)
        inputs = self.limited_tokens(question, 'question',
                                     self.config.text_config.max_position_embeddings)
        image_mask = torch.ones(image_states.shape[:-1], dtype=torch.long, device=self.device)
        question_states = self.model.text_encoder(
            **inputs, encoder_hidden_states=image_states, encoder_attention_mask=image_mask,
            return_dict=False)[0]
        # The answer decoder starts from BOS; past its position table it would fail.
        max_new_tokens = min(self.options.vqa_max_new_tokens,
                             self.config.text_config.max_position_embeddings - 1)
        return generate_text(self.model.text_decoder, self.config.text_config, question_states,
                             self.tokenizer, None, max_new_tokens, self.options)
