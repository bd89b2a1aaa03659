"""Visual question answering with ViLT (answer classifier) and BLIP VQA (answer generator)."""

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache

from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.backends.blip import generate_texts
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
        return self.answer_many(frame, [question])[0]

    def answer_many(self, frame: Frame, questions: list[str]) -> list[tuple[str, float]]:
        """Answer several questions on the frame in one forward pass (each as answer would)."""
        encoding = frame.encoding(self.key, self.encode_image, self.tensor_device)
        length = self.config.max_position_embeddings
        # Without truncation an over-long question stays whole, for limited_tokens to refuse.
        inputs = self.limited_tokens(questions, 'question', length, padding='max_length',
                                     max_length=length)
        batch = (len(questions), -1, -1)
        logits = self.model(**inputs, image_embeds=encoding.patches.expand(*batch),
                            pixel_mask=encoding.mask.expand(len(questions), -1)).logits
        probabilities = torch.sigmoid(logits.float())  # (questions, answers)
        best = probabilities.argmax(dim=1).tolist()
        return [(self.config.id2label[index], float(row[index]))
                for index, row in zip(best, probabilities)]


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

    def cache(self, questions: int = 1) -> EncoderDecoderCache:
        """
        Return a new cache for a batch of questions: the frame's keys/values, no self-attention.

        A forward fills the self-attention part, so every call gets its own cache. The
        cross-attention part shares the frame's tensors (expanded to the batch, not copied),
        never written: a filled layer counts as updated, so BlipTextSelfAttention reads it
        instead of projecting the states again.
        """
        batch = (questions, -1, -1, -1)
        cross = Cache(layers=[_shared_layer(keys.expand(*batch), values.expand(*batch))
                              for keys, values in self.keys_values])
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
        return self.answer_many(frame, [question])[0]

    def answer_many(self, frame: Frame, questions: list[str]) -> list[tuple[str, float]]:
        """
        Answer several questions on the frame in one batch, each as answer would.

        The questions are padded to the longest: the question encoder masks the padding, and
        the answer decoder attends to each question's own tokens only.
        """
        encoding = frame.encoding(self.key, self.encode_image, self.tensor_device)
        inputs = self.limited_tokens(questions, 'question',
                                     self.config.text_config.max_position_embeddings)
        states = encoding.states.expand(len(questions), -1, -1)
        image_mask = torch.ones(states.shape[:-1], dtype=torch.long, device=self.device)
        question_states = self.model.text_encoder(
            **inputs, encoder_hidden_states=states, encoder_attention_mask=image_mask,
            cache=encoding.cache(len(questions)), return_dict=False)[0]
        # The answer decoder starts from BOS; past its position table it would fail.
        max_new_tokens = min(self.options.vqa_max_new_tokens,
                             self.config.text_config.max_position_embeddings - 1)
        return generate_texts(self.model.text_decoder, self.config.text_config, question_states,
                              inputs['attention_mask'], self.tokenizer, None, max_new_tokens,
                              self.options)
