"""Text generation settings and token probabilities shared by the generating backends."""

from typing import Any

import torch

from vlm_perception.core.options import ModelOptions


def generation_arguments(options: ModelOptions, max_new_tokens: int) -> dict:
    """Return generate()'s decoding keywords: greedy, or beam search with num_beams > 1."""
    return {'do_sample': False, 'num_beams': options.num_beams, 'max_new_tokens': max_new_tokens,
            'output_scores': True, 'return_dict_in_generate': True}


def token_log_probs(model: Any, output: Any) -> torch.Tensor:
    """
    Return the log-probability of each generated token of the first sequence, finite only.

    Greedy scores are the processed logits of each step (normalised here); beam search scores
    are already log-probabilities, gathered along the chosen beam, whose padding past the end
    of a finished beam (beam index -1) is left out.
    """
    beams = getattr(output, 'beam_indices', None)
    if beams is None:
        steps = model.compute_transition_scores(output.sequences, output.scores,
                                                normalize_logits=True)[0]
    else:
        steps = model.compute_transition_scores(output.sequences, output.scores, beams,
                                                normalize_logits=False)[0]
        steps = steps[beams[0, :steps.shape[0]] >= 0]
    steps = steps.float()
    return steps[torch.isfinite(steps)]
