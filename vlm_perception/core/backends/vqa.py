"""Visual question answering with ViLT (answer classifier) and BLIP VQA (answer generator)."""

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache

from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.backends.blip import generate_text
from vlm_perception.core.frame import Frame, RGBImage


@dataclass
class ViltImageEncoding:
    """ViLT's patch embedding of one frame (position embeddings added), and its mask."""

    patches: torch.Tensor  # (1, 1 + patches, hidden)
    mask: torch.Tensor     # (1, 1 + patches)


class ViltAnswerer(HFBackend):
    """ViLT fuses image and text in one transformer, so only its patch embedding is shared."""

    capability = 'vqa'
    model_class_name = 'ViltForQuestionAnswering'

    def encode_image(self, image: RGBImage) -> ViltImageEncoding:
        """Embed the image patches once; every question on the frame reuses them."""
        inputs = self.pixels(image)
        patches, mask, _ = self.model.vilt.embeddings.visual_embed(
            inputs['pixel_values'], inputs['pixel_mask'],
            max_image_length=self.config.max_image_length)
        return ViltImageEncoding(patches, mask)

    def answer(self, frame: Frame, question: str) -> tuple[str, float]:
        """Return the most probable answer of the answer vocabulary and its probability."""
        encoding = frame.encoding(self.key, self.encode_image, self.tensor_device)
        length = self.config.max_position_embeddings
        # Without truncation an over-long question stays whole, for limited_tokens to refuse.
        inputs = self.limited_tokens(question, 'question', length, padding='max_length',
                                     max_length=length)
        logits = self.model(**inputs, image_embeds=encoding.patches,
                            pixel_mask=encoding.mask).logits[0]
        probabilities = torch.sigmoid(logits.float())
        best = int(probabilities.argmax())
        return self.config.id2label[best], float(probabilities[best])


def _shared_layer(keys: torch.Tensor, values: torch.Tensor) -> DynamicLayer:
    """Return a cache layer holding keys and values as they are (its update would copy them)."""
    layer = DynamicLayer()
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    return layer


@dataclass
class BlipImageEncoding:
    """
    BLIP's vision states of one frame, and the question encoder's cross-attention keys/values.

    Each question-encoder layer projects all image states to keys and values, the same for
    every question on the frame (about a third of a BLIP-base question on the CPU): they are
    computed once, with the states (12 layers at 384 px: 42 MB in fp32).
    """

    states: torch.Tensor  # (1, 1 + patches, hidden)
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (1, heads, 1 + patches, d)

    def cache(self) -> EncoderDecoderCache:
        """
        Return a new cache for one question: the frame's keys/values, no self-attention yet.

        A forward fills the self-attention part, so every question gets its own cache. The
        cross-attention part shares the frame's tensors, never written: a filled layer counts
        as updated, so BlipTextSelfAttention reads it instead of projecting the states again.
        """
        cross = Cache(layers=[_shared_layer(keys, values) for keys, values in self.keys_values])
        return EncoderDecoderCache(DynamicCache(), cross)


class BlipAnswerer(HFBackend):
    """BLIP VQA: the vision encoding and its cross-attention keys/values serve every question."""

    capability = 'vqa'
    model_class_name = 'BlipForQuestionAnswering'

    def encode_image(self, image: RGBImage) -> BlipImageEncoding:
        """Run the vision encoder, then each question-encoder layer's key/value projections."""
        states = self.model.vision_model(pixel_values=self.pixels(image)['pixel_values'])[0]
        keys_values = []
        for layer in self.model.text_encoder.encoder.layer:
            attention = layer.crossattention.self
            # Shaped as BlipTextSelfAttention shapes them: answers stay equal to generate()'s.
            shape = (*states.shape[:-1], -1, attention.attention_head_size)
            keys_values.append((attention.key(states).view(shape).transpose(1, 2),
                                attention.value(states).view(shape).transpose(1, 2)))
        return BlipImageEncoding(states, keys_values)

    def answer(self, frame: Frame, question: str) -> tuple[str, float]:
        """Generate an answer; confidence is the probability of the whole answer."""
        encoding = frame.encoding(self.key, self.encode_image, self.tensor_device)
        inputs = self.limited_tokens(question, 'question',
                                     self.config.text_config.max_position_embeddings)
        image_mask = torch.ones(encoding.states.shape[:-1], dtype=torch.long,
                                device=self.device)
        question_states = self.model.text_encoder(
            **inputs, encoder_hidden_states=encoding.states, encoder_attention_mask=image_mask,
            cache=encoding.cache(), return_dict=False)[0]
        # The answer decoder starts from BOS; past its position table it would fail.
        max_new_tokens = min(self.options.vqa_max_new_tokens,
                             self.config.text_config.max_position_embeddings - 1)
        return generate_text(self.model.text_decoder, self.config.text_config, question_states,
                             self.tokenizer, None, max_new_tokens, self.options)
