"""Prompt templates and the tagger's resize mode, on tiny real models against the references."""

import contextlib
from typing import Iterator

import numpy as np
from PIL import Image
import pytest
import torch

from vlm_perception.core.cache import TextEmbeddingCache
from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError
from vlm_perception.core.options import ModelOptions, RESIZE_MODES
from vlm_perception.core.prompts import embed_labels, prompts, resolve_templates

RNG = np.random.default_rng(23)
LABELS = ['cup', 'dog', 'red car']
TEMPLATES = ['a photo of a {}.', 'a drawing of a {}.']


def _image(height: int = 45, width: int = 80) -> np.ndarray:  # 16:9
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _engine(tiny_preset, **config) -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu', **config))


def _scores(tags) -> dict[str, float]:
    return {tag.label: tag.score for tag in tags}


@contextlib.contextmanager
def batches(module: torch.nn.Module) -> Iterator[list[int]]:
    """Record the batch size of every forward call of a module while the block runs."""
    sizes: list[int] = []

    def record(_module, args, kwargs, _output) -> None:
        first = next(value for value in (*args, *kwargs.values())
                     if isinstance(value, torch.Tensor))
        sizes.append(first.shape[0])

    handle = module.register_forward_hook(record, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


def _open_clip_reference(folder, resize_mode: str = 'longest'):
    import open_clip

    name = f'local-dir:{folder}'
    model, preprocess = open_clip.create_model_from_pretrained(name,
                                                               image_resize_mode=resize_mode)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def _zero_shot_tags(folder, image: np.ndarray, templates) -> tuple[torch.Tensor, list[float]]:
    """open_clip's zero-shot classifier weights (D, Q) and CLIP's softmax tag scores."""
    import open_clip

    model, preprocess, tokenizer = _open_clip_reference(folder)
    resolved = list(open_clip.OPENAI_IMAGENET_TEMPLATES) if templates == ['openai'] \
        else templates
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(model, tokenizer, LABELS, resolved)
        features = model.encode_image(preprocess(Image.fromarray(image))[None], normalize=True)
        scores = torch.softmax(model.logit_scale.exp() * features @ weights, dim=-1)[0]
    return weights, scores.tolist()


@pytest.mark.parametrize('templates', [TEMPLATES, ['openai']])
def test_tag_embeddings_are_open_clips_zero_shot_classifier(tiny_preset, tiny_models: dict,
                                                            templates: list[str]) -> None:
    folder = tiny_models['classifier']
    image = _image()
    engine = _engine(tiny_preset, tagger_model=str(folder))
    plain = _scores(engine.tags(image, LABELS, top_k=None))
    engine.set_options(tag_templates=templates)  # at run time, on the loaded model
    tags = _scores(engine.tags(image, LABELS, top_k=None))
    weights, expected = _zero_shot_tags(folder, image, templates)
    backend = engine.backend('tags')
    with torch.inference_mode():
        ours = torch.stack(embed_labels(LABELS, templates, backend.encode_text))
    torch.testing.assert_close(ours, weights.T, atol=1e-6, rtol=0)
    assert [tags[label] for label in LABELS] == pytest.approx(expected, abs=1e-6)
    assert max(abs(tags[label] - plain[label]) for label in LABELS) > 1e-3  # templates matter
    assert sum(tags.values()) == pytest.approx(1.0, abs=1e-5)


def test_crops_are_classified_through_the_tag_templates(tiny_preset, tiny_models: dict) -> None:
    from vlm_perception.core.types import Detection

    folder = tiny_models['classifier']
    engine = _engine(tiny_preset, tagger_model=str(folder),
                     options=ModelOptions(tag_templates=tuple(TEMPLATES)))
    frame = engine.frame(_image(60, 90))
    detection = Detection('thing', 0.9, 30.0, 25.0, 40.0, 30.0)
    label, = engine.classify_crops(frame, [detection], labels=LABELS)
    _, expected = _zero_shot_tags(folder, frame.crop(detection), TEMPLATES)
    best = int(np.argmax(expected))
    assert (label.label, label.score) == (LABELS[best], pytest.approx(expected[best], abs=1e-6))


@pytest.mark.parametrize('key', ['tagger_siglip', 'tagger_siglip2'])
def test_siglip_tags_average_the_normalised_prompt_embeddings(tiny_preset, tiny_models: dict,
                                                              key: str) -> None:
    import transformers

    folder = tiny_models[key]
    image = _image()
    engine = _engine(tiny_preset, tagger_model=str(folder),
                     options=ModelOptions(tag_templates=tuple(TEMPLATES)))
    tags = _scores(engine.tags(image, LABELS, top_k=None))
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    processor = transformers.AutoProcessor.from_pretrained(str(folder))
    texts = [template.format(label) for label in LABELS for template in TEMPLATES]
    text = processor.tokenizer(texts, padding='max_length', return_tensors='pt',
                               max_length=model.config.text_config.max_position_embeddings)
    text = {name: text[name] for name in ('input_ids', 'attention_mask') if name in text}
    pixels = processor.image_processor(images=image, return_tensors='pt')
    with torch.no_grad():
        prompt = model.get_text_features(**text).pooler_output
        prompt = torch.nn.functional.normalize(prompt, dim=-1).reshape(len(LABELS), 2, -1)
        label = torch.nn.functional.normalize(prompt.mean(dim=1), dim=-1)
        picture = torch.nn.functional.normalize(
            model.get_image_features(**pixels).pooler_output, dim=-1)
        expected = torch.sigmoid(model.logit_scale.exp() * picture @ label.T +
                                 model.logit_bias)[0]
    assert [tags[name] for name in LABELS] == pytest.approx(expected.tolist(), abs=1e-5)


def _owl_reference(folder, image: np.ndarray, templates: list[str]) -> dict[str, float]:
    """Best score of each label over the patches it wins: OWL's class head on mean queries."""
    import transformers

    model = transformers.OwlViTForObjectDetection.from_pretrained(str(folder)).eval()
    processor = transformers.OwlViTProcessor.from_pretrained(str(folder))
    texts = [template.format(label) for label in LABELS for template in templates]
    inputs = processor(text=[texts], images=image, return_tensors='pt', padding='max_length',
                       truncation=True)
    with torch.no_grad():
        out = model(**inputs)
        patches = out.image_embeds.reshape(1, -1, out.image_embeds.shape[-1])
        head = model.class_head

        def logits(queries: torch.Tensor) -> torch.Tensor:
            queries = queries / (queries.norm(dim=-1, keepdim=True) + 1e-6)
            return (out.class_embeds @ queries.T + head.logit_shift(patches)) * \
                (torch.nn.functional.elu(head.logit_scale(patches)) + 1)

        # the formula written out is OWL's own: it gives the model's logits for the prompts
        torch.testing.assert_close(logits(out.text_embeds[0]), out.logits)
        unit = torch.nn.functional.normalize(out.text_embeds[0], dim=-1)
        mean = unit.reshape(len(LABELS), len(templates), -1).mean(dim=1)
        probabilities = torch.sigmoid(logits(torch.nn.functional.normalize(mean, dim=-1)))[0]
    scores, winner = probabilities.max(dim=-1)
    return {LABELS[q]: float(scores[winner == q].max()) for q in winner.unique().tolist()}


def _best_per_label(detections) -> dict[str, float]:
    best: dict[str, float] = {}
    for detection in detections:
        best[detection.label] = max(best.get(detection.label, 0.0), detection.score)
    return best


def test_owl_queries_are_the_mean_of_the_prompt_embeddings(tiny_preset,
                                                           tiny_models: dict) -> None:
    folder = tiny_models['detector']
    image = _image(64, 64)
    engine = _engine(tiny_preset, detector_model=str(folder), detection_threshold=0.0)
    plain = _best_per_label(engine.detect(image, LABELS))
    engine.set_options(detection_templates=TEMPLATES)
    detections = engine.detect(image, LABELS)
    assert {detection.label for detection in detections} <= set(LABELS)  # not the prompts
    best = _best_per_label(detections)
    assert best == pytest.approx(_owl_reference(folder, image, TEMPLATES), abs=1e-5)
    assert plain == pytest.approx(_owl_reference(folder, image, ['{}']), abs=1e-5)
    assert best != pytest.approx(plain, abs=1e-4)  # templates matter


def test_one_plain_template_keeps_the_raw_owl_queries(tiny_preset, tiny_models: dict) -> None:
    engine = _engine(tiny_preset, detector_model=str(tiny_models['detector']))
    backend = engine.backend('detect')
    with torch.inference_mode():
        raw = torch.stack(backend.encode_text(LABELS))
        same = torch.stack(embed_labels(LABELS, ('{}',), backend.encode_text))
    assert torch.equal(same, raw)  # bit for bit: no averaging, no normalising
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(LABELS)), atol=1e-3)


@pytest.mark.parametrize('capability, option', [('detect', 'detection_templates'),
                                                ('tags', 'tag_templates')])
def test_text_is_encoded_once_per_vocabulary_and_templates(tiny_preset, tiny_models: dict,
                                                           capability: str, option: str) -> None:
    engine = _engine(tiny_preset, detector_model=str(tiny_models['detector']),
                     tagger_model=str(tiny_models['classifier']),
                     options=ModelOptions(**{option: tuple(TEMPLATES)}))
    backend = engine.backend(capability)
    encoder = backend.model.owlvit.text_model if capability == 'detect' else \
        backend.model.token_embedding
    run = engine.detect if capability == 'detect' else engine.tags
    with batches(encoder) as sizes:
        run(_image(), LABELS)
        assert sizes == [len(TEMPLATES) * len(LABELS)]  # one batch of every prompt
        run(_image(), LABELS)
        assert len(sizes) == 1  # the next frame encodes no text
        run(_image(), [*LABELS, 'chair'])
        assert sizes[1:] == [len(TEMPLATES)]  # only the new label
        engine.set_options(**{option: ['openai']})
        run(_image(), LABELS)
        assert sizes[2:] == [80 * len(LABELS)]  # other templates: nothing reused
        engine.set_options(**{option: TEMPLATES})
        run(_image(), LABELS)
        assert len(sizes) == 3  # the first templates' embeddings are still cached
    assert backend.key in engine._text_cache.model_keys()
    other = 'detector_v2' if capability == 'detect' else 'classifier_siglip'
    engine.replace_model(capability, str(tiny_models[other]))
    assert backend.key not in engine._text_cache.model_keys()  # every template list cleared


def test_cache_keeps_variants_apart_and_clears_them_all() -> None:
    cache = TextEmbeddingCache()
    encoded = []

    def encode(texts: list[str]) -> list[str]:
        encoded.append(list(texts))
        return [f'{text}!' for text in texts]

    cache.get('m', ['a', 'b'], encode, variant='x')
    cache.get('m', ['a'], encode, variant='y')
    cache.get('m', ['a', 'b'], encode, variant='x')
    cache.get('n', ['a'], encode, variant='x')
    assert encoded == [['a', 'b'], ['a'], ['a']]
    assert cache.model_keys() == {'m', 'n'}
    cache.clear('m')
    assert cache.model_keys() == {'n'} and len(cache) == 1


@pytest.mark.parametrize('mode', RESIZE_MODES)
def test_tag_resize_mode_is_open_clips_own(tiny_preset, tiny_models: dict, mode: str) -> None:
    from open_clip.transform import image_transform_v2, PreprocessCfg

    folder = tiny_models['classifier']
    engine = _engine(tiny_preset, tagger_model=str(folder),
                     options=ModelOptions(tag_resize_mode=mode))
    image = Image.fromarray(_image(90, 160))  # 16:9
    ours = engine.backend('tags').preprocess(image)
    _, theirs, _ = _open_clip_reference(folder, mode)
    assert torch.equal(ours, theirs(image))
    size = ours.shape[-1]
    assert torch.equal(ours, image_transform_v2(PreprocessCfg(size=size, resize_mode=mode),
                                                is_train=False)(image))
    others = [m for m in RESIZE_MODES if m != mode]
    assert all(not torch.equal(ours, _open_clip_reference(folder, m)[1](image)) for m in others)


def test_longest_sees_the_whole_frame_and_is_the_default(tiny_preset, tiny_models: dict) -> None:
    folder = tiny_models['classifier']
    image = _image(90, 160)
    edge = image.copy()
    edge[:, :25] = 255 - edge[:, :25]  # the left 16 %: outside a centre crop of a 16:9 frame
    longest = _engine(tiny_preset, tagger_model=str(folder)).backend('tags')
    engine = _engine(tiny_preset, tagger_model=str(folder),
                     options=ModelOptions(tag_resize_mode='shortest'))
    shortest = engine.backend('tags')

    def same(backend) -> bool:
        return torch.equal(backend.preprocess(Image.fromarray(image)),
                           backend.preprocess(Image.fromarray(edge)))

    assert ModelOptions().tag_resize_mode == 'longest'
    assert not same(longest) and same(shortest)
    engine.set_options(tag_resize_mode='squash')  # applied at load: the loaded model keeps it
    assert same(engine.backend('tags'))
    engine.unload()
    assert not same(engine.backend('tags'))


@pytest.mark.parametrize('templates', [['a photo'], ['{} and {}'], ['a {x}'], [],
                                       ['openai', 'a {}'], 'a {}', ['{}', 3]])
def test_bad_templates_are_refused(tiny_preset, templates) -> None:
    engine = _engine(tiny_preset)
    before = engine.options
    for option in ('detection_templates', 'tag_templates'):
        with pytest.raises(InputError, match=option):
            engine.set_options(**{option: templates})
        with pytest.raises(InputError):
            ModelOptions(**{option: templates}).checked()
    assert engine.options is before
    with pytest.raises(InputError):
        resolve_templates(templates)


def test_openai_names_open_clips_template_set() -> None:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    resolved = resolve_templates(['openai'])
    assert len(resolved) == 80
    assert prompts(['cup'], resolved) == [template('cup') for template in
                                          OPENAI_IMAGENET_TEMPLATES]
    assert prompts(['cup', 'dog'], ('a {}.', '{}!')) == ['a cup.', 'cup!', 'a dog.', 'dog!']


def test_grounding_dino_ignores_the_templates(tiny_preset, tiny_models: dict) -> None:
    engine = _engine(tiny_preset, detector_model=str(tiny_models['grounding_dino']),
                     detection_threshold=0.0)
    frame = engine.frame(_image(40, 70))
    plain = engine.detect(frame, LABELS)
    assert plain
    engine.set_options(detection_templates=TEMPLATES)
    assert engine.detect(frame, LABELS) == plain


def test_many_prompts_are_encoded_in_batches_of_whole_labels(tiny_preset, tiny_models: dict,
                                                             monkeypatch) -> None:
    from vlm_perception.core import prompts as prompts_module

    engine = _engine(tiny_preset, tagger_model=str(tiny_models['classifier']))
    backend = engine.backend('tags')
    labels = [*LABELS, 'chair', 'book']
    with torch.inference_mode():
        whole = torch.stack(embed_labels(labels, TEMPLATES, backend.encode_text))
        monkeypatch.setattr(prompts_module, 'PROMPT_BATCH', 5)  # two labels' prompts a call
        with batches(backend.model.token_embedding) as sizes:
            split = torch.stack(embed_labels(labels, TEMPLATES, backend.encode_text))
    assert sizes == [4, 4, 2]
    torch.testing.assert_close(split, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize('shape', [(1, 1000, 3), (2, 1000, 3), (1000, 1, 3), (3, 640, 3)])
def test_longest_side_fit_tags_slivers_too(tiny_models: dict, shape: tuple) -> None:
    engine = PerceptionEngine(EngineConfig(tagger_model=str(tiny_models['classifier']),
                                           device='cpu'))
    assert engine.options.tag_resize_mode == 'longest'
    tags = engine.tags(np.full(shape, 200, np.uint8), labels=['cup', 'dog'])
    assert len(tags) == 2 and all(0.0 <= tag.score <= 1.0 for tag in tags)
