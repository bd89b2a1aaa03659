"""
Adding a model family: one class keeping a contract plus one registration, nothing else.

The example is the README's ("Adding a model"): CLIP through transformers (model_type ``clip``)
as a tagger. Registered with one ``register`` call, it is reached through the generated
``--tagger`` flag of the CLI and the ``tagger_model`` parameter of the node, and scores as
CLIPModel itself does.
"""

import json
import os
from pathlib import Path
import sys

import numpy as np
import pytest
import torch

from vlm_perception import cli
from vlm_perception.core.backends import register, REGISTRY
from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.backends.classification import EmbeddingTagger, softmax_scores
from vlm_perception.core.engine import EngineConfig, PerceptionEngine

LABELS = ['red circle', 'blue square', 'green triangle']
TEST_DIR = Path(__file__).resolve().parent


# --- the whole addition: a class and a registration -----------------------------------------

class TransformersClipTagger(EmbeddingTagger, HFBackend):
    """CLIP through transformers: softmax over the labels of the scaled cosine similarity."""

    capability = 'tags'
    model_class_name = 'CLIPModel'

    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Return normalised (N, D) image embeddings."""
        features = self.model.get_image_features(**self.pixels(images)).pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def encode_text(self, labels: list[str]) -> list[torch.Tensor]:
        """Return one normalised embedding per label."""
        features = self.model.get_text_features(**self.tokens(labels, padding=True)).pooler_output
        return list(torch.nn.functional.normalize(features.float(), dim=-1))

    def probabilities(self, cosine: torch.Tensor) -> torch.Tensor:
        """Return the softmax over the labels, as CLIP was trained."""
        return softmax_scores(cosine, self.model.logit_scale)


def register_example() -> None:
    """Register the example (the node's process calls this too)."""
    register('tags', 'clip', TransformersClipTagger)


# --- the checks --------------------------------------------------------------------------------

def build_tiny_clip(folder: Path) -> Path:
    """Save a tiny random transformers CLIPModel and its processor (word-level tokenizer)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    import tiny_models

    torch.manual_seed(0)
    config = CLIPConfig(text_config=tiny_models._tower(**tiny_models._ids(),
                                                       max_position_embeddings=16),
                        vision_config=tiny_models._tower(image_size=32, patch_size=8),
                        projection_dim=16)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={'shortest_edge': 32},
                                           crop_size={'height': 32, 'width': 32}),
        tokenizer=tiny_models.build_tokenizer())
    return tiny_models._save(CLIPModel(config).eval(), processor, folder)


@pytest.fixture(scope='module')
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp('clip') / 'clip')


@pytest.fixture(autouse=True)
def registered():
    """Register the example for one test and leave the registry as it was."""
    before = dict(REGISTRY)
    register_example()
    yield
    REGISTRY.clear()
    REGISTRY.update(before)


def _image(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)


def _reference(folder: Path, image: np.ndarray, labels: list[str]) -> np.ndarray:
    """Return the softmax over the labels of CLIPModel's own logits_per_image."""
    from transformers import CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(str(folder))
    model = CLIPModel.from_pretrained(str(folder)).eval()
    inputs = processor(text=labels, images=image, return_tensors='pt', padding=True)
    with torch.inference_mode():
        logits = model(**inputs).logits_per_image[0]
    return torch.softmax(logits, -1).numpy()


def test_one_registration_serves_the_family_as_its_reference(clip_folder: Path) -> None:
    engine = PerceptionEngine(EngineConfig(tagger_model=str(clip_folder), device='cpu'))
    image = _image()
    tags = engine.tags(image, labels=LABELS, top_k=None)
    expected = _reference(clip_folder, image, LABELS)
    assert {tag.label: tag.score for tag in tags} == pytest.approx(
        dict(zip(LABELS, expected.tolist())), abs=1e-5)
    assert len({round(tag.score, 4) for tag in tags}) > 1  # the labels are told apart


def test_the_generated_cli_flag_reaches_it(clip_folder: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    import cv2

    image = _image(2)
    path = tmp_path / 'frame.png'
    cv2.imwrite(str(path), image[:, :, ::-1])
    assert cli.main(['tags', str(path), '--tagger', str(clip_folder), '--labels',
                     ','.join(LABELS), '--json']) == 0
    tags = json.loads(capsys.readouterr().out)['tags']
    expected = dict(zip(LABELS, _reference(clip_folder, image, LABELS).tolist()))
    assert {tag['label']: tag['score'] for tag in tags} == pytest.approx(expected, abs=1e-5)


def test_without_the_registration_the_model_is_refused(clip_folder: Path) -> None:
    from vlm_perception.core.errors import ModelLoadError

    del REGISTRY[('tags', 'clip')]
    engine = PerceptionEngine(EngineConfig(tagger_model=str(clip_folder), device='cpu'))
    with pytest.raises(ModelLoadError, match='is a clip model, which cannot do tags'):
        engine.tags(_image(), labels=LABELS)


@pytest.mark.ros
def test_the_generated_node_parameter_reaches_it(clip_folder: Path, tiny_preset: Path) -> None:
    """The node's own process registers the example, then runs with tagger_model set."""
    pytest.importorskip('rclpy')
    pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')
    from node_harness import (call, ChildProcess, client_of, frame, image_publisher,  # noqa
                              probe, spin_until)

    from vlm_perception import srv

    start = (f'import sys; sys.path.insert(0, {str(TEST_DIR)!r}); '
             'import test_adding_a_backend as example; example.register_example(); '
             'from vlm_perception.ros.node import main; sys.exit(main())')
    node = ChildProcess([sys.executable, '-c', start, '--ros-args', '-p',
                         f'preset:={tiny_preset}', '-p', f'tagger_model:={clip_folder}',
                         '-p', 'capabilities:=[detect, tags]', '-p', 'warmup:=false',
                         '-p', f"labels:=[{', '.join(LABELS)}]"], env=dict(os.environ))
    try:
        with probe(node, 'adding_a_backend_test') as ros:
            publisher = image_publisher(ros)
            client = client_of(ros, srv.QueryScene, 'query')
            image = frame(5)
            response = None

            def answered() -> bool:
                nonlocal response
                publisher.publish(image)
                response = call(ros, client, srv.QueryScene.Request())
                return response.success

            assert spin_until(ros, answered, timeout=60.0), (response, node.output())
        pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(
            image.height, image.width, 3).copy()
        expected = dict(zip(LABELS, _reference(clip_folder, pixels, LABELS).tolist()))
        tags = {tag.label: tag.score for tag in response.scene.tags}
        assert tags == pytest.approx(expected, abs=1e-5)
        assert f'tags: {clip_folder}' in node.output()
    finally:
        node.stop_cleanly()
