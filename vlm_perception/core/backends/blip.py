"""BLIP's text decoding, shared by BLIP VQA (answers) and BLIP captioning."""

from typing import Any

import torch

from vlm_perception.core.backends.decoding import generation_arguments, token_log_probs
from vlm_perception.core.options import ModelOptions


def generate_texts(decoder: Any, text_config: Any, encoder_states: torch.Tensor,
                   encoder_mask: torch.Tensor | None, tokenizer: Any, start: torch.Tensor | None,
                   max_new_tokens: int, options: ModelOptions) -> list[tuple[str, float]]:
    """
    Decode over a batch of encoder states; return (text, probability of its generated part) each.

    ``encoder_mask`` (B, L) marks the states each row attends to (None: all). ``start`` holds
    prompt token ids (starting with BOS); None starts every row from BOS alone. Greedy, or beam
    search with ``options.num_beams`` > 1; a row ends at its first end token.
    """
    batch, device = encoder_states.shape[0], encoder_states.device
    if start is None:
        start = torch.full((batch, 1), text_config.bos_token_id, device=device)
    if encoder_mask is None:
        encoder_mask = torch.ones(encoder_states.shape[:-1], dtype=torch.long, device=device)
    output = decoder.generate(
        input_ids=start, eos_token_id=text_config.sep_token_id,
        pad_token_id=text_config.pad_token_id, encoder_hidden_states=encoder_states,
        encoder_attention_mask=encoder_mask, **generation_arguments(options, max_new_tokens))
    results = []
    for row in range(batch):
        step_log_probs = token_log_probs(decoder, output, row, text_config.sep_token_id)
        probability = float(step_log_probs.sum().exp()) if step_log_probs.numel() else 0.0
        generated = output.sequences[row, start.shape[1]:]
        ended = (generated == text_config.sep_token_id).nonzero()
        if len(ended):  # what follows the end token is padding
            generated = generated[:int(ended[0]) + 1]
        text = tokenizer.decode(torch.cat([start[row], generated]),
                                skip_special_tokens=True).strip()
        results.append((text, probability))
    return results
