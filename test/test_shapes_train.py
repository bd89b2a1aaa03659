"""Shapes training: tokenizer, weight conversions, detection targets and losses, a smoke run."""

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.shapes import train, world
from vlm_perception.shapes.tokenizer import build_tokenizer, VOCAB

TINY = train.Sizes(clip_image=64, image=64, patch=16, vision_width=32, vision_layers=2,
                   vision_heads=2, text_width=24, text_layers=2, text_heads=2)


@pytest.fixture(scope='module')
def tokenizer():
    return build_tokenizer()


def test_tokenizer_ids_suit_clip_owlvit_and_blip(tokenizer) -> None:
    ids = tokenizer('red circle')['input_ids']
    assert tokenizer.pad_token_id == 0, 'OWL-ViT masks queries whose first id is 0'
    assert ids[0] == tokenizer.cls_token_id != 0
    assert ids[-1] == tokenizer.sep_token_id == len(VOCAB) - 1, 'CLIP pools at the highest id'
    assert tokenizer.unk_token_id not in tokenizer(world.NAMES[5] + ' what color')['input_ids']


def test_tokenizer_round_trips_captions_and_questions(tokenizer) -> None:
    scene = world.sample_scene(np.random.default_rng(3))
    for text in [scene.caption, *(q for q, _ in scene.qa)]:
        ids = tokenizer(text)['input_ids']
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_clip_towers_convert_exactly_to_owlvit(tokenizer) -> None:
    from transformers import OwlViTForObjectDetection

    torch.manual_seed(0)
    clip = open_clip.CLIP(**train.clip_config(TINY, len(tokenizer))).eval()
    owl = OwlViTForObjectDetection(train.owlvit_config(TINY, tokenizer)).eval()
    train.clip_to_owlvit(clip, owl)
    pixels = torch.randn(2, 3, 64, 64)
    texts = tokenizer(['red circle', 'triangle'], padding='max_length', max_length=16,
                      return_tensors='pt')
    with torch.no_grad():
        image_clip = clip.encode_image(pixels)
        image_owl = owl.owlvit.get_image_features(pixel_values=pixels).pooler_output
        text_clip = clip.encode_text(texts['input_ids'])
        text_owl = owl.owlvit.get_text_features(**texts).pooler_output
    assert torch.allclose(image_clip, image_owl, atol=1e-5)
    assert torch.allclose(text_clip, text_owl, atol=1e-5)


def test_position_embeddings_interpolate_to_a_finer_grid() -> None:
    positions = torch.randn(1 + 4 * 4, 8)
    resized = train._resize_positions(positions, 6)
    assert resized.shape == (1 + 36, 8)
    assert torch.equal(resized[0], positions[0])


def test_owlvit_vision_tower_loads_into_blip(tokenizer) -> None:
    from transformers import BlipForConditionalGeneration, OwlViTForObjectDetection

    torch.manual_seed(1)
    owl = OwlViTForObjectDetection(train.owlvit_config(TINY, tokenizer)).eval()
    blip = BlipForConditionalGeneration(train.blip_config(TINY, tokenizer)).eval()
    batch = next(iter(train.SceneBatches('detector', 4, TINY, seed=0)))
    pixels = train.to_pixels(batch['images'], torch.device('cpu'))
    train.owlvit_to_blip_vision(owl.owlvit.vision_model, blip.vision_model, pixels)
    with torch.no_grad():
        expected = owl.owlvit.vision_model(pixel_values=pixels).last_hidden_state
        got = blip.vision_model(pixel_values=pixels).last_hidden_state
    # The class token's pre-layernorm folds exactly; patches up to their spread's variation.
    cosine = torch.nn.functional.cosine_similarity(expected, got, dim=-1)
    assert cosine.mean() > 0.9


def test_each_object_claims_the_patches_inside_its_shape_and_its_centre_patch() -> None:
    grid = 8  # patch centres at (k + 0.5) / 8: box units 1/8, 3/8, 5/8, 7/8 in a half-image box
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0],
                           [0.70, 0.70, 0.74, 0.74]]])
    names = ('red circle', 'green triangle', 'blue square', 'yellow triangle')
    labels = torch.tensor([[world.NAMES.index(name) for name in names]])
    owner = train.assign_patches(boxes, labels, grid).reshape(grid, grid)
    circle, triangle, square = owner[:4, :4], owner[:4, 4:], owner[4:, :4]
    corners = torch.zeros(4, 4, dtype=torch.bool)
    corners[0, 0] = corners[0, 3] = corners[3, 0] = corners[3, 3] = True
    assert (circle[~corners] == 0).all() and (circle[corners] == -1).all(), \
        'the circle leaves its box corners to the background'
    rows = [(triangle[k] == 1).nonzero().flatten().tolist() for k in range(4)]
    assert rows == [[], [1, 2], [1, 2], [0, 1, 2, 3]], 'the triangle widens downwards'
    assert (square == 2).all(), 'a square fills its box'
    assert owner[5, 5] == 3, 'an object smaller than a patch still gets its centre patch'
    assert (owner >= 0).sum() == 12 + 8 + 16 + 1


def test_shape_membership_matches_the_rendered_pixels() -> None:
    for shape in world.SHAPES:
        obj = world.ShapeObject('red', shape, 10, 20, 101, world.COLOURS['red'])
        clean = world.draw_clean([obj], (130, 130, 130), 140, 140)
        drawn = np.abs(clean.astype(int) - 130).sum(-1) > 150  # at least half covered
        ys, xs = np.mgrid[0:140, 0:140]
        inside = world.inside_shape(shape, (xs + 0.5 - obj.x) / obj.size,
                                    (ys + 0.5 - obj.y) / obj.size)
        assert (drawn != inside).sum() < 0.03 * drawn.sum(), f'{shape}: only edge pixels differ'


def test_detection_targets_mark_the_name_and_its_shape() -> None:
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5]]])
    labels = torch.tensor([[world.NAMES.index('blue square')]])
    targets, box_targets, assigned = train.detection_targets(boxes, labels, 4)
    positive = targets[0, 0].nonzero().flatten().tolist()
    assert [train.TEXTS[i] for i in positive] == ['blue square', 'square']
    assert assigned[0].sum() == 4 and torch.equal(box_targets[0, 0], boxes[0, 0])


def test_detection_loss_boxes_vanish_for_perfect_boxes() -> None:
    boxes = torch.tensor([[[0.1, 0.2, 0.4, 0.6]]])
    labels = torch.tensor([[0]])
    grid = 4
    cxcywh = torch.tensor([0.25, 0.4, 0.3, 0.4]).expand(1, grid * grid, 4)
    logits = torch.zeros(1, grid * grid, len(train.TEXTS))
    _, stats = train.detection_loss(logits, cxcywh, boxes, labels, grid)
    assert stats['l1'] < 1e-6 and stats['giou'] < 1e-6 and stats['focal'] > 0


def test_multi_positive_loss_rewards_mass_on_any_positive() -> None:
    positives = torch.tensor([[1.0, 1.0, 0.0]])
    split = train.multi_positive_nll(torch.tensor([[5.0, 5.0, -5.0]]), positives)
    wrong = train.multi_positive_nll(torch.tensor([[-5.0, -5.0, 5.0]]), positives)
    assert split < 0.01 < wrong


def test_smoke_run_writes_a_preset_the_engine_loads(tmp_path: Path) -> None:
    out = tmp_path / 'shapes'
    assert train.main(['--smoke', '--out', str(out), '--work-dir', str(tmp_path / 'work'),
                       '--workers', '0', '--device', 'cpu']) == 0
    preset = json.loads((out / 'preset.json').read_text())
    assert preset['labels'] == list(world.NAMES)
    assert {'detector', 'tagger', 'vqa', 'captioner'} <= set(preset)
    assert set(json.loads((out / 'training.json').read_text())['stages']) == set(train.STAGES)
    engine = PerceptionEngine(EngineConfig(preset=str(out), device='cpu'))
    assert engine.options.tag_resize_mode == 'squash'  # as the tagger was trained
    frame = engine.frame(world.sample_scene(np.random.default_rng(0)).image)
    assert isinstance(engine.detect(frame), list)
    assert engine.tags(frame, top_k=1)[0].label in world.NAMES
    assert isinstance(engine.answer(frame, 'how many objects are there?').answer, str)
    assert isinstance(engine.caption(frame), str)
    # A rerun skips the finished stages.
    assert train.main(['--smoke', '--out', str(out), '--work-dir', str(tmp_path / 'work'),
                       '--workers', '0', '--device', 'cpu']) == 0
