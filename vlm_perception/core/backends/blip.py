"""BLIP's text decoding, shared by BLIP VQA (answers) and BLIP captioning."""

from typing import Any

import torch

from vlm_perception.core.backends.decoding import generation_arguments, token_log_probs
from vlm_perception.core.options import ModelOptions


def generate_text(decoder: Any, text_config: Any, encoder_states: torch.Tensor, tokenizer: Any,
                  start: torch.Tensor | None, max_new_tokens: int,
                  options: ModelOptions) -> tuple[str, float]:
    """
    Decode over encoder states; return (text, probability of the generated part).

    ``start`` holds prompt token ids (starting with BOS); None starts from BOS alone. Greedy,
    or beam search with ``options.num_beams`` > 1.
    """
    if start is None:
        start = torch.full((1, 1), text_config.bos_token_id, device=encoder_states.device)
    encoder_mask = torch.ones(encoder_states.shape[:-1], dtype=torch.long,
                              device=encoder_states.device)
    output = decoder.generate(
        input_ids=start, eos_token_id=text_config.sep_token_id,
        pad_token_id=text_config.pad_token_id, encoder_hidden_states=encoder_states,
        encoder_attention_mask=encoder_mask, **generation_arguments(options, max_new_tokens))
    step_log_probs = token_log_probs(decoder, output)
    probability = float(step_log_probs.sum().exp()) if step_log_probs.numel() else 0.0
    text = tokenizer.decode(output.sequences[0], skip_special_tokens=True).strip()
    return text, probability
