"""SigLIP / SigLIP2 scene tags on tiny real models: sigmoid per label, against the references."""

import numpy as np
from PIL import Image
import pytest
import torch

from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.types import Detection

RNG = np.random.default_rng(11)
LABELS = ['cup', 'dog', 'red car', 'a photo of a person', 'green bottle']
TRANSFORMERS_SIGLIP = {'tagger_siglip': 'SiglipTagger', 'tagger_siglip2': 'Siglip2Tagger'}


def _image(height: int = 40, width: int = 70) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _engine(tiny_preset, model) -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(preset=str(tiny_preset), tagger_model=str(model),
                                         device='cpu'))


def _scores(tags) -> dict[str, float]:
    return {tag.label: tag.score for tag in tags}


@pytest.mark.parametrize('key', sorted(TRANSFORMERS_SIGLIP))
def test_transformers_siglip_tags_equal_the_zero_shot_pipeline(
        tiny_preset, tiny_models: dict, key: str) -> None:
    import transformers

    engine = _engine(tiny_preset, tiny_models[key])
    image = _image()  # not square: SigLIP2's NaFlex processor keeps the aspect ratio
    tags = engine.tags(image, LABELS, top_k=None)
    assert type(engine.backend('tags')).__name__ == TRANSFORMERS_SIGLIP[key]
    pipe = transformers.pipeline('zero-shot-image-classification', model=str(tiny_models[key]),
                                 device='cpu')
    expected = {result['label']: result['score'] for result in pipe(
        Image.fromarray(image), candidate_labels=LABELS, hypothesis_template='{}')}
    assert set(_scores(tags)) == set(LABELS)
    assert _scores(tags) == pytest.approx(expected, abs=1e-5)
    assert abs(sum(tag.score for tag in tags) - 1.0) > 0.1  # not a softmax over the labels


def test_several_labels_can_score_high(tiny_preset, tiny_models: dict) -> None:
    # the tiny SigLIP's random weights put every label at a cosine of about 0.35 with this image
    engine = _engine(tiny_preset, tiny_models['tagger_siglip'])
    assert sum(tag.score > 0.5 for tag in engine.tags(_image(), LABELS, top_k=None)) >= 2


@pytest.mark.parametrize('key', ['classifier_siglip', *sorted(TRANSFORMERS_SIGLIP)])
def test_a_label_scores_the_same_whatever_the_other_labels(tiny_preset, tiny_models: dict,
                                                           key: str) -> None:
    engine = _engine(tiny_preset, tiny_models[key])
    frame = engine.frame(_image())
    among = _scores(engine.tags(frame, LABELS, top_k=None))
    for label in ('cup', 'green bottle'):
        alone = _scores(engine.tags(frame, [label], top_k=None))
        assert alone[label] == pytest.approx(among[label], abs=1e-6)


def test_open_clip_siglip_scores_are_a_sigmoid_of_scaled_cosine_plus_bias(
        tiny_preset, tiny_models: dict) -> None:
    import open_clip

    folder = tiny_models['classifier_siglip']
    engine = _engine(tiny_preset, folder)
    image = _image()
    tags = _scores(engine.tags(image, LABELS, top_k=None))
    assert engine.backend('tags').sigmoid

    name = f'local-dir:{folder}'
    # the engine fits the frame as its tag_resize_mode option says (default: longest)
    model, preprocess = open_clip.create_model_from_pretrained(
        name, image_resize_mode=engine.options.tag_resize_mode)
    tokenizer = open_clip.get_tokenizer(name)
    assert model.logit_bias is not None
    with torch.no_grad():
        image_features = model.eval().encode_image(preprocess(Image.fromarray(image))[None])
        text_features = model.encode_text(tokenizer(LABELS))
        cosine = torch.nn.functional.normalize(image_features, dim=-1) @ \
            torch.nn.functional.normalize(text_features, dim=-1).T
        expected = torch.sigmoid(model.logit_scale.exp() * cosine + model.logit_bias)[0]
    assert [tags[label] for label in LABELS] == pytest.approx(expected.tolist(), abs=1e-5)


def test_open_clip_clip_keeps_its_softmax(tiny_preset, tiny_models: dict) -> None:
    engine = _engine(tiny_preset, tiny_models['classifier'])
    tags = engine.tags(_image(), LABELS, top_k=None)
    assert not engine.backend('tags').sigmoid
    assert sum(tag.score for tag in tags) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize('key', ['classifier_siglip', *sorted(TRANSFORMERS_SIGLIP)])
def test_crops_are_classified_in_one_batch_as_each_alone(tiny_preset, tiny_models: dict,
                                                         key: str) -> None:
    engine = _engine(tiny_preset, tiny_models[key])
    frame = engine.frame(_image(50, 60))
    boxes = [(10.0, 12.0, 16.0, 20.0), (30.0, 25.0, 40.0, 12.0), (50.0, 40.0, 5.0, 30.0)]
    detections = [Detection('thing', 0.9, *box) for box in boxes]
    classes = engine.classify_crops(frame, detections, labels=['cup', 'dog', 'chair'])
    assert len(classes) == len(detections)
    for detection, label in zip(detections, classes):
        assert label.label in ('cup', 'dog', 'chair')
        best = engine.tags(frame.crop(detection), ['cup', 'dog', 'chair'], top_k=1)[0]
        assert (label.label, label.score) == (best.label, pytest.approx(best.score, abs=1e-5))
    assert engine.classify_crops(frame, [], labels=['cup']) == []


@pytest.mark.parametrize('key', ['classifier_siglip', *sorted(TRANSFORMERS_SIGLIP)])
def test_bf16_runs_on_cpu(tiny_preset, tiny_models: dict, key: str) -> None:
    engine = PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu', dtype='bf16',
                                           tagger_model=str(tiny_models[key])))
    scores = [tag.score for tag in engine.tags(_image(), LABELS, top_k=None)]
    assert len(scores) == len(LABELS) and all(0.0 <= score <= 1.0 for score in scores)
