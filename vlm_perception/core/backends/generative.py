"""
Generative VLMs (SmolVLM, Qwen2.5-VL): free-form answers and captions from one chat model.

One backend object serves both VQA and captioning (it keeps the Answerer and the Captioner
contracts), so the engine loads the model once for both. The frame's image part (the processor's
pixels, the vision encoder and the connector, giving the image embeddings) runs once per frame
and is kept on the Frame; every question and caption on that frame gives the stored embeddings to
``generate`` as ``mm_encoder_outputs``, as transformers' generate does itself after encoding
``pixel_values``. The prompt goes through the processor's chat template: one user turn holding the
image and the text, then the assistant's turn, decoded greedily (or with ``num_beams`` beams).
"""

from dataclasses import dataclass
import inspect
import math
from typing import Any

import torch

from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.backends.decoding import generation_arguments, token_log_probs
from vlm_perception.core.errors import InputError
from vlm_perception.core.frame import Frame, RGBImage
from vlm_perception.core.options import ModelOptions

CAPTION_PROMPT = 'Describe the image in one sentence.'  # unless the caption_prompt option
# The processor's outputs of the text side; the rest of its outputs are the image's.
TEXT_OUTPUTS = {'text_replacement_offsets', 'mm_token_type_ids'}


@dataclass
class VLMImageEncoding:
    """A generative VLM's image part of one frame, shared by its questions and captions."""

    placeholder: str            # the image token expanded as the processor expands it
    image_inputs: dict          # non-pixel image outputs generate also needs (image_grid_thw)
    features: Any               # get_image_features' output: pooler_output holds the embeddings


def prompt_messages(text: str) -> list[dict]:
    """Return the one user turn of a request: the image, then the question or prompt."""
    return [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': text}]}]


class GenerativeVLM(HFBackend):
    """
    A transformers image-text-to-text model answering and captioning through its chat template.

    Answers and captions continue the assistant's turn (at most the ``vqa_max_new_tokens`` and
    ``caption_max_new_tokens`` options); an answer's confidence is exp(mean log-probability of
    its generated tokens).
    """

    capability = 'vqa and caption'

    def __init__(self, model_id: str, device: str, dtype: str,
                 options: ModelOptions | None = None) -> None:
        """Load the model (``model_class_name``, as AutoModelForImageTextToText maps it)."""
        super().__init__(model_id, device, dtype, options)
        self.positions = self.config.get_text_config().max_position_embeddings
        self._text_outputs = TEXT_OUTPUTS | set(self.tokenizer.model_input_names)
        self._feature_arguments = set(
            inspect.signature(self.model.get_image_features).parameters) - {'kwargs'}
        # Text that would add image placeholders or turns to the prompt is refused.
        reserved = {*self.tokenizer.all_special_tokens,
                    *self.processor.all_special_multimodal_tokens}
        self._reserved = sorted(token for token in reserved if token)

    def encode_image(self, image: RGBImage) -> VLMImageEncoding:
        """Run the processor's image part (on the model's device) and the vision encoder once."""
        token = self.processor.image_token
        processed = self.processor(text=[token], images=[self.device_images(image)],
                                   return_tensors='pt', return_text_replacement_offsets=True,
                                   input_data_format='channels_first', device=self.device)
        placeholder = processed['text_replacement_offsets'][0][0]['replacement']
        image_inputs = {name: self._on_device(value) for name, value in processed.items()
                        if name not in self._text_outputs}
        features = self.model.get_image_features(
            **{name: value for name, value in image_inputs.items()
               if name in self._feature_arguments}, return_dict=True)
        return VLMImageEncoding(
            placeholder,
            {name: value for name, value in image_inputs.items()
             if not name.startswith('pixel_')},
            features)

    def answer(self, frame: Frame, question: str) -> tuple[str, float]:
        """Return the generated answer and exp(mean log-probability of its tokens)."""
        return self.generate(frame, question, 'question', self.options.vqa_max_new_tokens)

    def caption(self, frame: Frame, prompt: str | None = None) -> str:
        """Return the generated caption; the prompt is the request (default: caption_prompt)."""
        request = prompt or self.options.caption_prompt or CAPTION_PROMPT
        text, _ = self.generate(frame, request, 'prompt', self.options.caption_max_new_tokens)
        return text

    def generate(self, frame: Frame, text: str, what: str,
                 max_new_tokens: int) -> tuple[str, float]:
        """Continue the chat prompt of text on the frame; return (text, confidence)."""
        encoding = frame.encoding(self.key, self.encode_image, self.tensor_device)
        inputs = self.prompt_tokens(encoding, text, what, max_new_tokens)
        output = self.model.generate(
            **inputs, **encoding.image_inputs, mm_encoder_outputs={'image': encoding.features},
            **generation_arguments(self.options, max_new_tokens))
        new_tokens = output.sequences[0, inputs['input_ids'].shape[1]:]
        step_log_probs = token_log_probs(self.model, output)
        confidence = math.exp(float(step_log_probs.mean())) if step_log_probs.numel() else 0.0
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip(), confidence

    def prompt_tokens(self, encoding: VLMImageEncoding, text: str, what: str,
                      max_new_tokens: int) -> dict:
        """
        Tokenize the chat prompt of text as the processor does with the frame's image.

        The prompt and the new tokens must fit the language model's positions: a longer text is
        an InputError naming its count and the most the model takes (its tokens only).
        """
        for token in self._reserved:
            if token in text:
                raise InputError(f'{what} must not contain the control token {token!r}')
        inputs = self._tokenize(encoding, text)
        count = inputs['input_ids'].shape[1]
        limit = self.positions - max_new_tokens
        if count > limit:
            overhead = self._tokenize(encoding, '')['input_ids'].shape[1]
            raise InputError(f'{what} too long: {count - overhead} tokens, {self.model_id} takes '
                             f'at most {limit - overhead}')
        return inputs

    def _tokenize(self, encoding: VLMImageEncoding, text: str) -> dict:
        prompt = self.processor.apply_chat_template(prompt_messages(text),
                                                    add_generation_prompt=True)
        expanded, _ = self.processor.get_text_with_replacements([prompt], [encoding.placeholder])
        inputs = dict(self.tokenizer(expanded, return_tensors='pt'))
        if getattr(self.processor, 'return_mm_token_type_ids', False):
            inputs['mm_token_type_ids'] = torch.tensor(
                self.processor.create_mm_token_type_ids(inputs['input_ids'].tolist()))
        return {name: self._on_device(value) for name, value in inputs.items()}

    def _on_device(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        return value.to(self.device, self.torch_dtype) if value.is_floating_point() \
            else value.to(self.device)


class SmolVLM(GenerativeVLM):
    """SmolVLM2 (model_type smolvlm): SigLIP vision, pixel-shuffle connector, SmolLM2 text."""

    model_class_name = 'SmolVLMForConditionalGeneration'


class Idefics3(GenerativeVLM):
    """SmolVLM (the first release) and Idefics3 (model_type idefics3)."""

    model_class_name = 'Idefics3ForConditionalGeneration'


class Qwen25VL(GenerativeVLM):
    """Qwen2.5-VL (model_type qwen2_5_vl): windowed ViT, 2x2 patch merger, Qwen2 with M-RoPE."""

    model_class_name = 'Qwen2_5_VLForConditionalGeneration'
