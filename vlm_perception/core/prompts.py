"""
Prompt templates: a label's text embedding as the mean over its prompts.

A template holds one ``{}`` for the label (``'a photo of a {}.'``); the single name ``'openai'``
stands for open_clip's 80 OpenAI ImageNet templates. With several templates a label's embedding
is the mean of its prompts' normalised embeddings, normalised again: the weights of
``open_clip.build_zero_shot_classifier``. With one template it is that prompt's embedding as the
model gives it (the plain ``{}`` leaves today's embeddings untouched, normalised or not).

For CLIP and SigLIP taggers the result is the label's unit text embedding. OWL-ViT's class head
normalises each query itself, so the mean of normalised prompt embeddings is a sound query there
too; its raw, unnormalised query is kept with one template. Grounding DINO reads the labels
inside one joint phrase prompt, so templates do not apply to it.
"""

from typing import Callable, Sequence

import torch

from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.errors import InputError
from vlm_perception.core.options import template_problem

Template = str | Callable[[str], str]
OPENAI = 'openai'
# Prompts per text-encoder call: a vocabulary of many labels times 80 templates is split in
# batches of whole labels, so that memory stays bounded.
PROMPT_BATCH = 1024


def resolve_templates(templates: Sequence[str]) -> tuple[Template, ...]:
    """Return the templates as format strings or callables; InputError for a bad list."""
    templates = tuple(templates) if not isinstance(templates, str) else templates
    reason = template_problem('templates', templates)
    if reason:
        raise InputError(reason)
    if templates == (OPENAI,):
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return tuple(OPENAI_IMAGENET_TEMPLATES)
    return templates


def prompts(labels: Sequence[str], templates: Sequence[Template]) -> list[str]:
    """Return every label's prompts, label by label, in template order (open_clip's order)."""
    return [template.format(label) if isinstance(template, str) else template(label)
            for label in labels for template in templates]


def embed_labels(labels: Sequence[str], templates: Sequence[str],
                 encode: Callable[[list[str]], Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """
    Return one text embedding per label: the mean over templates of its prompts' embeddings.

    ``encode(prompts)`` is a backend's text encoder (one (D,) row per prompt). With several
    templates each row is normalised, the rows of a label averaged and the mean normalised, as
    ``open_clip.build_zero_shot_classifier`` computes them (in float32, returned in the encoder's
    dtype); with one template the rows are returned as ``encode`` gives them.
    """
    resolved = resolve_templates(templates)
    count = len(resolved)
    step = max(1, PROMPT_BATCH // count)
    rows: list[torch.Tensor] = []
    for start in range(0, len(labels), step):
        chunk = list(labels[start:start + step])
        encoded = list(encode(prompts(chunk, resolved)))
        if count == 1:
            rows.extend(encoded)
            continue
        stacked = torch.stack(encoded)
        unit = torch.nn.functional.normalize(stacked.float(), dim=-1)
        mean = unit.reshape(len(chunk), count, -1).mean(dim=1)
        rows.extend(torch.nn.functional.normalize(mean, dim=-1).to(stacked.dtype))
    return rows


def cached_label_embeddings(text_cache: TextEmbeddingCache, model_key: str,
                            labels: Sequence[str], templates: Sequence[str],
                            encode: Callable[[list[str]], Sequence[torch.Tensor]]
                            ) -> list[torch.Tensor]:
    """
    Return ``embed_labels`` of the labels through the text cache: only labels new to it encoded.

    Rows are kept per label under the model key and the template list (the cache's variant), so
    other templates never reuse them and clearing the model key drops every template list's.
    """
    templates = tuple(templates)
    return text_cache.get(model_key, list(labels),
                          lambda missing: embed_labels(missing, templates, encode),
                          variant=repr(templates))
