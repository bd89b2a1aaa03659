"""
The bench's engine part: stage timing, the random builds (as tiny variants), --all, slot flags.

Stages are exclusive, on the backends' own steps, undone after; the builds load as folders.
"""

import argparse
import dataclasses
import json
from pathlib import Path
import time

import numpy as np
import pytest

from vlm_perception.bench import command, models, stages
from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.slots import SLOT_OF
from vlm_perception.core.types import Detection


def test_nested_stages_count_once() -> None:
    timer = stages.StageTimer()
    with timer.request():
        time.sleep(0.02)
        with timer.stage('image encoder'):
            time.sleep(0.03)
            with timer.stage('preprocessing'):
                time.sleep(0.01)
    sample = timer.samples[0]
    assert sample['preprocessing'] == pytest.approx(0.01, abs=0.008)
    assert sample['image encoder'] == pytest.approx(0.03, abs=0.008)
    assert sample[stages.REQUEST] == pytest.approx(0.02, abs=0.008)
    assert timer.summary()['total_ms']['p50'] == pytest.approx(60, abs=15)


def test_timed_requests_time_the_backends_steps_and_leave_them_as_they_were(
        tiny_preset) -> None:
    engine = PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu'))
    engine.load(['detect', 'tags'], warmup=True)
    tagger = engine.backend('tags')
    preprocess = tagger.preprocess
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    result = stages.timed_requests(engine, 'tags', frames, lambda frame: engine.tags(frame))
    assert result['requests'] == 2  # the first one warms up
    assert {'preprocessing', 'image encoder'} <= set(result['stages_ms'])
    assert 'text encoder' not in result['stages_ms']  # the vocabulary was cached by the warm-up
    assert tagger.preprocess is preprocess and 'encode_image' not in vars(tagger)
    words = iter(['table', 'car', 'book'])  # a label never seen, each request
    new_labels = stages.timed_requests(engine, 'tags', frames,
                                       lambda frame: engine.tags(frame, [next(words)]))
    assert 'text encoder' in new_labels['stages_ms']  # new text, encoded once per request


def test_table_and_plot(tmp_path) -> None:
    timer = stages.StageTimer()
    for _ in range(2):
        with timer.request(), timer.stage('image encoder'):
            time.sleep(0.001)
    figures = {'capabilities': {'detect': timer.summary()},
               'comparisons': {'labels_12_vs_1': 1.05, 'questions_4_vs_1': 1.7}}
    text = command.table(figures)
    assert 'labels_12_vs_1: 1.05 (target <= 1.1: met)' in text
    assert 'questions_4_vs_1: 1.70 (target <= 1.5: MISSED)' in text
    pytest.importorskip('matplotlib')
    assert command.plot(figures, tmp_path / 'stages.png').stat().st_size > 1000


# --- the engine part: random builds, their stages, --all and the slot flags -----------------

TOWER = {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 1,
         'num_attention_heads': 2}
# Tiny variants of the real-size builds, through the same builders: (config, processor) overrides.
TINY = {
    'owlv2': (models.build_owlv2_b16, {
        'text_config': {**TOWER, 'vocab_size': 1000, 'max_position_embeddings': 16},
        'vision_config': {**TOWER, 'image_size': 64, 'patch_size': 16}, 'projection_dim': 32},
        None),
    'grounding_dino': (models.build_grounding_dino_t, {
        'backbone_config': {'model_type': 'swin', 'embed_dim': 8, 'depths': [1, 1, 1, 1],
                            'num_heads': [1, 1, 1, 1], 'window_size': 2, 'out_indices': [2, 3, 4]},
        'text_config': {'model_type': 'bert', **TOWER, 'vocab_size': 1100,
                        'max_position_embeddings': 64},
        'max_text_len': 32, 'num_queries': 20, 'd_model': 32, 'encoder_layers': 1,
        'decoder_layers': 2, 'encoder_ffn_dim': 64, 'decoder_ffn_dim': 64,
        'encoder_attention_heads': 2, 'decoder_attention_heads': 2, 'encoder_n_points': 2,
        'decoder_n_points': 2}, {'size': {'shortest_edge': 64, 'longest_edge': 96}}),
    'siglip': (models.build_siglip_b16, {
        'text_config': {**TOWER, 'vocab_size': 200, 'max_position_embeddings': 16},
        'vision_config': {**TOWER, 'image_size': 64, 'patch_size': 16}}, None),
    'smolvlm': (models.build_smolvlm_256m, {  # 32 px tiles: 4 image tokens each, 4x3 + 1 tiles
        'text_config': {**TOWER, 'num_key_value_heads': 1, 'vocab_size': 200,
                        'max_position_embeddings': 256},
        'vision_config': {**TOWER, 'image_size': 32, 'patch_size': 8}, 'scale_factor': 2},
        None),
    'sam': (models.build_sam_b, {
        'vision_config': {**TOWER, 'image_size': 64, 'patch_size': 8, 'output_channels': 16,
                          'window_size': 4, 'global_attn_indexes': [0], 'mlp_dim': 64,
                          'num_pos_feats': 8},
        'prompt_encoder_config': {'hidden_size': 16, 'image_size': 64, 'patch_size': 8,
                                  'mask_input_channels': 4},
        'mask_decoder_config': {'hidden_size': 16, 'num_hidden_layers': 1,
                                'num_attention_heads': 2, 'mlp_dim': 32,
                                'iou_head_hidden_dim': 16}}, None),
}
# What each tiny model is asked, and the stages that must show beside heads + post-processing.
REQUESTS = {
    'owlv2': ('detect', lambda engine, frame: engine.detect(frame, ['cup', 'dog'], 0.0),
              {'preprocessing', 'image encoder'}),
    'grounding_dino': ('detect', lambda engine, frame: engine.detect(frame, ['cup'], 0.0),
                       {'preprocessing', 'image encoder', 'text encoder'}),  # every request
    'siglip': ('tags', lambda engine, frame: engine.tags(frame, ['cup', 'dog']),
               {'preprocessing', 'image encoder'}),
    'smolvlm': ('vqa', lambda engine, frame: engine.answer(frame, 'what colour is the cup'),
                {'preprocessing', 'image encoder'}),
    'sam': ('segment', lambda engine, frame: engine.segment(
        frame, [Detection('cup', 1.0, 320, 240, 100, 80)]), {'preprocessing', 'image encoder'}),
}


@pytest.fixture(scope='module')
def tiny_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the tiny variant of each real-size random model --all adds, once per module."""
    cache = tmp_path_factory.mktemp('bench_cache')
    return {name: build(cache, config=config, processor=processor)
            for name, (build, config, processor) in TINY.items()}


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    return parser.parse_args(['bench', *argv])


@pytest.mark.parametrize('name', list(TINY))
def test_random_builds_load_as_folders_and_time_their_stages(tiny_builds, name) -> None:
    folder = tiny_builds[name]
    assert (folder / models.COMPLETE).is_file()
    capability, request, expected = REQUESTS[name]
    engine = PerceptionEngine(EngineConfig(device='cpu',
                                           **{SLOT_OF[capability].parameter: str(folder)}))
    backend = engine.backend(capability)
    image_processor = backend.processor.image_processor
    result = stages.timed_requests(engine, capability, stages.render_frames(2),
                                   lambda frame: request(engine, frame))
    assert result['requests'] == 1 and result['total_ms']['p50'] > 0
    assert expected <= set(result['stages_ms']) <= set(stages.STAGES)
    assert backend.processor.image_processor is image_processor  # every step given back
    assert not {'pixels', 'encode_image', 'encode_images', 'encode_text'} & set(vars(backend))
    assert not any('forward' in vars(module) for module in backend.model.modules())


def test_a_variant_is_cached_apart_from_the_real_size_build(tmp_path) -> None:
    built = []
    first = models.cached('model', built.append, tmp_path)
    again = models.cached('model', built.append, tmp_path)
    tiny = models.cached('model', built.append, tmp_path, ({'hidden_size': 8}, None))
    assert first == again == tmp_path / 'model' and tiny.name.startswith('model-')
    assert len(built) == 2 and not list(tmp_path.glob('*.partial'))


def test_all_adds_a_row_per_family_and_slot_flags_replace_the_defaults() -> None:
    def rows(*argv: str) -> list[str]:
        return [row for entry in command.entries(_parse(*argv)) for _, row in entry.rows]

    assert rows() == ['detect', 'tags', 'vqa', 'vqa_vilt', 'caption']
    assert rows('--all') == ['detect', 'tags', 'vqa', 'vqa_vilt', 'caption', 'detect_owlv2',
                             'detect_grounding_dino', 'tags_siglip', 'vqa_smolvlm',
                             'caption_smolvlm', 'segment']
    chosen = command.entries(_parse('--all', '--detector', 'org/my-detector', '--segmenter',
                                    '/models/sam', '--only', 'detect', '--only', 'segment'))
    assert [entry.rows for entry in chosen] == [  # the slots' models, then what --all adds
        (('detect', 'detect'),), (('segment', 'segment'),), (('detect', 'detect_owlv2'),),
        (('detect', 'detect_grounding_dino'),), (('segment', 'segment_sam'),)]
    assert chosen[0].model_id() == 'org/my-detector' and chosen[1].model_id() == '/models/sam'
    assert chosen[1].detector.model_id() == chosen[4].detector.model_id() == 'org/my-detector'
    assert [entry.name for entry in command.ALL if entry.cuda_only] == ['smolvlm']
    engine = command._engine({'detect': 'org/my-detector'}, _parse('--compile'))
    assert engine.config.compile and engine.model_ids['detect'] == 'org/my-detector'


def test_engine_figures_of_given_models_with_a_cuda_only_one_skipped_on_the_cpu(
        tiny_builds, tmp_path) -> None:
    options = _parse('--device', 'cpu', '--frames', '1', '--only', 'detect', '--only', 'segment',
                     '--detector', str(tiny_builds['grounding_dino']),
                     '--detector', str(tiny_builds['owlv2']),
                     '--segmenter', str(tiny_builds['sam']))
    chosen = command.entries(options)
    smolvlm = next(entry for entry in command.ALL if entry.cuda_only)
    chosen.append(dataclasses.replace(smolvlm, source=lambda: pytest.fail('built on a CPU'),
                                      rows=(('vqa', 'vqa_smolvlm'),)))
    figures = command.engine_figures(options, chosen)
    owlv2 = chosen[1].rows[0][1]
    assert owlv2.startswith('detect_owlv2_b16_random_960_')
    capabilities = figures['capabilities']
    assert list(capabilities) == ['detect', owlv2, 'segment', 'vqa_smolvlm']
    assert capabilities['vqa_smolvlm'] == {'model': smolvlm.title, 'capability': 'vqa',
                                           'skipped': 'CUDA only'}
    for row in ('detect', owlv2, 'segment'):
        result = capabilities[row]
        assert result['total_ms']['p50'] > 0 and result['fps'] > 0
        assert result['gpu_memory_mb'] is None and result['requests'] == 1
    assert 5 <= capabilities['detect']['boxes_per_frame'] <= 20  # the threshold's ~10 boxes
    assert capabilities['segment']['detector'] == str(tiny_builds['grounding_dino'])
    assert capabilities['segment']['boxes_per_frame'] >= 1
    # Grounding DINO does not batch images: no cameras_4 of it
    assert set(figures['comparisons']) == {'labels_12_vs_1', f'labels_12_vs_1{owlv2[6:]}',
                                           f'cameras_4{owlv2[6:]}'}
    text = command.table(figures)
    assert 'vqa_smolvlm | skipped: CUDA only |' in text and f'\n{owlv2} | ' in text
    json.dumps(figures)
    pytest.importorskip('matplotlib')
    assert command.plot(figures, tmp_path / 'stages.png').stat().st_size > 1000
