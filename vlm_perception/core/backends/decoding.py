"""Text generation settings and token probabilities shared by the generating backends."""

from typing import Any

import torch

from vlm_perception.core.options import ModelOptions


def generation_arguments(options: ModelOptions, max_new_tokens: int) -> dict:
    """Return generate()'s decoding keywords: greedy, or beam search with num_beams > 1."""
    return {'do_sample': False, 'num_beams': options.num_beams, 'max_new_tokens': max_new_tokens,
            'output_scores': True, 'return_dict_in_generate': True}


def token_log_probs(model: Any, output: Any, row: int = 0,
                    eos_token_id: int | None = None) -> torch.Tensor:
    """
    Return the log-probability of each generated token of one sequence, finite only.

    Greedy scores are the processed logits of each step (normalised here), up to the row's
    first ``eos_token_id`` (in a batch, later steps only pad a finished row); beam search
    scores are already log-probabilities, gathered along the chosen beam, whose padding past
    the end of a finished beam (beam index -1) is left out.
    """
    beams = getattr(output, 'beam_indices', None)
    if beams is None:
        steps = model.compute_transition_scores(output.sequences, output.scores,
                                                normalize_logits=True)[row]
        if eos_token_id is not None:
            generated = output.sequences[row, output.sequences.shape[1] - steps.shape[0]:]
            ended = (generated == eos_token_id).nonzero()
            if len(ended):
                steps = steps[:int(ended[0]) + 1]
    else:
        steps = model.compute_transition_scores(output.sequences, output.scores, beams,
                                                normalize_logits=False)[row]
        steps = steps[beams[row, :steps.shape[0]] >= 0]
    steps = steps.float()
    return steps[torch.isfinite(steps)]
