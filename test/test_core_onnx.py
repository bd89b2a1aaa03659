"""
ONNX export (``vlm-perception export --onnx``) and the onnxruntime runtime of detector and tagger.

The tiny OWL-ViT, OWLv2 and open_clip models are exported through the CLI, then run by engines
with the onnxruntime runtime beside engines with torch (fp32, CPU): encoder outputs, detections
and tag scores must agree, and the torch towers of the onnxruntime engine must not run.
"""

import contextlib
import io
import json
from pathlib import Path
import shutil

import numpy as np
import pytest
import torch

from vlm_perception import cli
from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import ModelLoadError
from vlm_perception.core.options import ModelOptions

LABELS = ['cup', 'person', 'dog', 'red chair', 'a photo of a bottle']
TOLERANCE = 1e-4     # features, embeddings, scores (fp32)
BOX_TOLERANCE = 1e-3  # pixels
PARTS = ('image_encoder', 'text_encoder')


def _images() -> list[np.ndarray]:
    """Non-square random frames: the processors stretch (OWL-ViT), pad (OWLv2) or letterbox."""
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, shape, np.uint8) for shape in
            ((48, 80, 3), (90, 40, 3), (33, 61, 3))]


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _engine(preset: Path, runtime: str, onnx_dir: Path | str = '', **models: str) -> \
        PerceptionEngine:
    options = ModelOptions(detector_runtime=runtime, tagger_runtime=runtime,
                           onnx_dir=str(onnx_dir))
    return PerceptionEngine(EngineConfig(preset=str(preset), device='cpu', dtype='fp32',
                                         options=options, **models))


@pytest.fixture(scope='module')
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_preset: Path) -> Path:
    """Export the tiny preset's detector (OWL-ViT) and tagger (open_clip) with the CLI."""
    out = tmp_path_factory.mktemp('onnx')
    code, stdout, stderr = _cli(['export', '--onnx', str(out), '--preset', str(tiny_preset),
                                 '--json'])
    assert code == 0, stderr
    result = json.loads(stdout)
    assert [export['slot'] for export in result['exports']] == ['detector', 'tagger']
    for export in result['exports']:
        names = sorted(Path(file).name for file in export['files'])
        assert names == ['image_encoder.onnx', 'manifest.json', 'text_encoder.onnx']
        assert all(Path(file).parent == out / export['slot'] for file in export['files'])
        assert export['bytes'] == sum(Path(file).stat().st_size for file in export['files'])
        assert export['model'] == str(tiny_preset / export['slot'])
    return out


@pytest.fixture(scope='module')
def exported_v2(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict) -> Path:
    """Export the tiny OWLv2 detector alone with the CLI (text output)."""
    out = tmp_path_factory.mktemp('onnx_v2')
    code, stdout, stderr = _cli(['export', '--onnx', str(out), '--slot', 'detector',
                                 '--detector', str(tiny_models['detector_v2'])])
    assert code == 0, stderr
    line, = stdout.splitlines()
    assert line.startswith(f"detector: {tiny_models['detector_v2']} -> ")
    assert 'image_encoder.onnx, text_encoder.onnx, manifest.json' in line
    assert sorted(path.name for path in out.iterdir()) == ['detector']  # no tagger
    return out


def test_manifest_names_model_opset_and_inputs(exported: Path, tiny_preset: Path) -> None:
    detector = json.loads((exported / 'detector' / 'manifest.json').read_text())
    assert detector['model'] == str(tiny_preset / 'detector')
    assert detector['backend'] == 'OwlViTDetector' and detector['opset'] == 18
    image = detector['parts']['image_encoder']
    assert image['inputs'] == {'pixel_values': {'shape': ['batch', 3, 64, 64],
                                                'dtype': 'float32'}}
    assert image['outputs'] == ['image_features', 'boxes']
    text = detector['parts']['text_encoder']['inputs']
    assert text == {name: {'shape': ['batch', 16], 'dtype': 'int64'}
                    for name in ('input_ids', 'attention_mask')}
    tagger = json.loads((exported / 'tagger' / 'manifest.json').read_text())
    assert tagger['backend'] == 'OpenClipClassifier'
    assert tagger['parts']['text_encoder']['inputs'] == {
        'input_ids': {'shape': ['batch', 16], 'dtype': 'int64'}}


class _Calls:
    """Counts the forward calls of some torch modules."""

    def __init__(self, *modules: torch.nn.Module) -> None:
        self.count = 0
        for module in modules:
            module.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.count += 1


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float) -> float:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    difference = float((ours - theirs).abs().max())
    assert difference <= tolerance, difference
    return difference


def _assert_same_detections(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs) > 0
    for mine, reference in zip(ours, theirs):
        assert mine.label == reference.label
        assert abs(mine.score - reference.score) <= TOLERANCE
        assert np.abs(np.subtract(mine.box, reference.box)).max() <= BOX_TOLERANCE


@pytest.mark.parametrize('family', ['owlvit', 'owlv2'])
def test_detector_under_onnxruntime_matches_torch(family: str, request: pytest.FixtureRequest,
                                                  tiny_preset: Path, tiny_models: dict) -> None:
    if family == 'owlvit':
        onnx_dir, models = request.getfixturevalue('exported'), {}
    else:
        onnx_dir = request.getfixturevalue('exported_v2')
        models = {'detector_model': str(tiny_models['detector_v2'])}
    reference = _engine(tiny_preset, 'torch', **models)
    engine = _engine(tiny_preset, 'onnxruntime', onnx_dir, **models)
    torch_backend, onnx_backend = reference.backend('detect'), engine.backend('detect')
    assert (torch_backend.runtime, onnx_backend.runtime) == ('torch', 'onnxruntime')
    assert onnx_backend.onnx.providers == ['CPUExecutionProvider']
    clip = onnx_backend.model.owlvit if family == 'owlvit' else onnx_backend.model.owlv2
    towers = _Calls(clip.vision_model, clip.text_model)
    torch_clip = torch_backend.model.owlvit if family == 'owlvit' else torch_backend.model.owlv2
    torch_towers = _Calls(torch_clip.vision_model, torch_clip.text_model)

    images = _images()
    with torch.inference_mode():
        for ours, theirs in zip(onnx_backend.encode_images(images),
                                torch_backend.encode_images(images)):  # a batch of 3
            _assert_close(ours.image_features, theirs.image_features, TOLERANCE)
            _assert_close(ours.boxes, theirs.boxes, TOLERANCE)
            assert (ours.height, ours.width) == (theirs.height, theirs.width)
        one, = onnx_backend.encode_images(images[:1])
        _assert_close(one.boxes, torch_backend.encode_image(images[0]).boxes, TOLERANCE)
        for labels in (LABELS[:1], LABELS):
            _assert_close(torch.stack(onnx_backend.encode_text(labels)),
                          torch.stack(torch_backend.encode_text(labels)), TOLERANCE)
    for image in images:
        _assert_same_detections(engine.detect(image, LABELS, 0.0),
                                reference.detect(image, LABELS, 0.0))
    assert towers.count == 0 and torch_towers.count > 0  # the exports ran, not the towers


def test_tagger_under_onnxruntime_matches_torch(exported: Path, tiny_preset: Path) -> None:
    reference = _engine(tiny_preset, 'torch')
    engine = _engine(tiny_preset, 'onnxruntime', exported)
    torch_backend, onnx_backend = reference.backend('tags'), engine.backend('tags')
    assert onnx_backend.runtime == 'onnxruntime'
    towers = _Calls(onnx_backend.model.visual, onnx_backend.model.transformer)
    torch_towers = _Calls(torch_backend.model.visual, torch_backend.model.transformer)
    images = _images()
    with torch.inference_mode():
        _assert_close(onnx_backend.encode_images(images), torch_backend.encode_images(images),
                      TOLERANCE)
        _assert_close(torch.stack(onnx_backend.encode_text(LABELS)),
                      torch.stack(torch_backend.encode_text(LABELS)), TOLERANCE)
    for image in images:
        ours = {tag.label: tag.score for tag in engine.tags(image, LABELS, top_k=None)}
        theirs = {tag.label: tag.score for tag in reference.tags(image, LABELS, top_k=None)}
        assert ours.keys() == theirs.keys()
        assert max(abs(ours[label] - theirs[label]) for label in LABELS) <= TOLERANCE
    detections = reference.detect(images[0], LABELS, 0.0)[:4]  # crops: a batch of the image tower
    for mine, reference_crop in zip(engine.classify_crops(images[0], detections, LABELS),
                                    reference.classify_crops(images[0], detections, LABELS)):
        assert mine.label == reference_crop.label
        assert abs(mine.score - reference_crop.score) <= TOLERANCE
    assert towers.count == 0 and torch_towers.count > 0


def _copy(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / 'copy'))


def _edit_manifest(folder: Path, **changes: object) -> None:
    path = folder / 'manifest.json'
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_an_export_of_another_model_is_refused(exported: Path, tmp_path: Path,
                                               tiny_preset: Path) -> None:
    copy = _copy(exported, tmp_path)
    _edit_manifest(copy / 'detector', model='google/owlvit-base-patch32')
    engine = _engine(tiny_preset, 'onnxruntime', copy)
    with pytest.raises(ModelLoadError, match="export of 'google/owlvit-base-patch32', not of "
                                             'the detector .*vlm-perception export --onnx'):
        engine.backend('detect')
    engine.backend('tags')  # the tagger's export is fine


def test_a_missing_or_mismatched_export_gives_a_clear_error(exported: Path, tmp_path: Path,
                                                            tiny_preset: Path) -> None:
    with pytest.raises(ModelLoadError, match='needs onnx_dir'):
        _engine(tiny_preset, 'onnxruntime').backend('detect')
    with pytest.raises(ModelLoadError, match=r'no ONNX export of the detector .*manifest.json '
                                             'missing.*vlm-perception export --onnx'):
        _engine(tiny_preset, 'onnxruntime', tmp_path / 'nowhere').backend('detect')
    copy = _copy(exported, tmp_path)
    (copy / 'tagger' / 'text_encoder.onnx').unlink()
    with pytest.raises(ModelLoadError, match='text_encoder of the ONNX tagger is missing'):
        _engine(tiny_preset, 'onnxruntime', copy).backend('tags')
    manifest = json.loads((copy / 'detector' / 'manifest.json').read_text())
    manifest['parts']['image_encoder']['inputs']['pixel_values']['shape'][2:] = [32, 32]
    _edit_manifest(copy / 'detector', parts=manifest['parts'])
    with pytest.raises(ModelLoadError, match='image_encoder was exported for inputs'):
        _engine(tiny_preset, 'onnxruntime', copy).backend('detect')


def test_onnxruntime_is_refused_for_families_without_an_export(
        exported: Path, tiny_preset: Path, tiny_models: dict) -> None:
    engine = _engine(tiny_preset, 'onnxruntime', exported,
                     detector_model=str(tiny_models['grounding_dino']),
                     tagger_model=str(tiny_models['tagger_siglip']))
    with pytest.raises(ModelLoadError, match='detector_runtime onnxruntime runs exported owlv2, '
                                             'owlvit models only.*grounding-dino'):
        engine.backend('detect')
    with pytest.raises(ModelLoadError, match='tagger_runtime onnxruntime runs exported '
                                             'open_clip models only.*siglip'):
        engine.backend('tags')
    code, _, stderr = _cli(['export', '--onnx', str(exported.parent / 'never'), '--slot',
                            'detector', '--detector', str(tiny_models['grounding_dino'])])
    assert code == 1
    assert 'has no ONNX export: exported families are owlv2, owlvit' in stderr
    assert not (exported.parent / 'never' / 'detector' / 'manifest.json').exists()


def test_providers_follow_the_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import onnxruntime

    from vlm_perception.core.onnx_runtime import providers

    assert providers('cpu', 'fp32') == ['CPUExecutionProvider']
    monkeypatch.setattr(onnxruntime, 'get_available_providers', lambda: [
        'TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider'])
    assert providers('cpu', 'fp32') == ['CPUExecutionProvider']  # a CPU engine stays on the CPU
    tensorrt, cuda, cpu = providers('cuda:1', 'fp16', tmp_path)
    assert tensorrt == ('TensorrtExecutionProvider', {
        'device_id': 1, 'trt_fp16_enable': True, 'trt_engine_cache_enable': True,
        'trt_engine_cache_path': str(tmp_path)})
    assert (cuda, cpu) == (('CUDAExecutionProvider', {'device_id': 1}), 'CPUExecutionProvider')
    monkeypatch.setattr(onnxruntime, 'get_available_providers',
                        lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider'])
    assert providers('cuda:0', 'fp32') == [('CUDAExecutionProvider', {'device_id': 0}),
                                           'CPUExecutionProvider']


def test_an_fp16_engine_runs_the_fp32_export(exported: Path, tiny_preset: Path) -> None:
    options = ModelOptions(detector_runtime='onnxruntime', onnx_dir=str(exported))
    engine = PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu', dtype='fp16',
                                           options=options))  # as fp16 on a Jetson's CUDA
    image = _images()[0]
    with torch.inference_mode():
        ours = engine.backend('detect').encode_image(image)
        theirs = _engine(tiny_preset, 'torch').backend('detect').encode_image(image)
    assert ours.image_features.dtype == torch.float16  # the engine's dtype, fed in fp32
    assert float((ours.image_features.float() - theirs.image_features).abs().max()) < 1e-2
    assert len(engine.detect(image, LABELS, 0.0)) > 0
