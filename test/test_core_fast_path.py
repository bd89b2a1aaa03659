"""The fast path: preprocessing on the model's device, SDPA attention, and torch.compile."""

import pathlib
from typing import Any

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters
import transformers

from vlm_perception import cli
from vlm_perception.core import compiling, frame as frame_module
from vlm_perception.core.backends import create_backend
from vlm_perception.core.backends.base import HFBackend
from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import CompileFallback
from vlm_perception.core.frame import Frame
from vlm_perception.ros import parameters

PIXEL_TOLERANCE = 1e-5      # the frame's tensor against the processor on the array, on the CPU
CUDA_TOLERANCE = 1e-3       # CUDA against CPU: resampling kernels differ in the last bits
RESULT_TOLERANCE = 1e-5     # compiled against eager detections
# Each family's tiny model (tiny_models keys) and the capability it serves.
IMAGE_FAMILIES = {'detector': 'detect', 'detector_v2': 'detect', 'grounding_dino': 'detect',
                  'omdet_turbo': 'detect', 'tagger_siglip': 'tags', 'tagger_siglip2': 'tags',
                  'vqa_vilt': 'vqa', 'vqa_blip': 'vqa', 'captioner': 'caption',
                  'segmenter': 'segment', 'segmenter_sam2': 'segment'}
GENERATIVE_FAMILIES = ('smolvlm', 'qwen2_5_vl')  # their processor takes text and images at once
# Traces the model as inductor would but makes no code: seconds, not a minute, on a CPU.
TEST_COMPILER = 'aot_eager'
LABELS = ['cup', 'dog', 'chair']


def _image(height: int = 37, width: int = 53, seed: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def models(tiny_models: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every tiny model, with those build_tiny_models leaves out (OmDet-Turbo, generative)."""
    import tiny_models as builders

    root = tmp_path_factory.mktemp('fast_path')
    extra = {**builders.OTHER_BUILDERS, **builders.GENERATIVE_BUILDERS}
    return {**tiny_models, **{key: build(root / key) for key, build in extra.items()}}


def assert_same_inputs(ours: Any, reference: Any, tolerance: float) -> None:
    """Assert equal processor outputs: floats within tolerance, everything else exactly."""
    assert set(ours) == set(reference)
    for name, expected in reference.items():
        value = ours[name]
        if not isinstance(expected, torch.Tensor):
            assert value == expected, name
            continue
        value = value.cpu()
        assert value.shape == expected.shape and value.dtype == expected.dtype, name
        if expected.is_floating_point():
            assert float((value.double() - expected.double()).abs().max()) <= tolerance, name
        else:
            assert torch.equal(value, expected), name


class RecordingProcessor:
    """A processor that keeps what each call returned, and is the processor otherwise."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.outputs: list = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self.processor(*args, **kwargs)
        self.outputs.append(output)
        return output

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)


# --- preprocessing on the device ----------------------------------------------------------------

def test_frame_tensor_is_the_array_as_chw_uint8_made_once_per_device() -> None:
    image = _image()
    frame = Frame(image)
    tensor = frame.tensor('cpu')
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 37, 53)
    assert torch.equal(tensor, torch.from_numpy(image).permute(2, 0, 1))
    assert frame.tensor(torch.device('cpu')) is tensor
    assert tensor.data_ptr() == frame.image.ctypes.data  # shares the array's memory
    assert frame_module.image_size(tensor) == frame_module.image_size(frame.image) == (37, 53)


@pytest.mark.parametrize('key', sorted(IMAGE_FAMILIES))
def test_pixels_of_the_frame_tensor_equal_the_processor_on_the_array(models: dict,
                                                                     key: str) -> None:
    backend = create_backend(IMAGE_FAMILIES[key], str(models[key]), 'cpu', 'fp32')
    processor = transformers.AutoProcessor.from_pretrained(str(models[key])).image_processor
    for height, width in ((37, 53), (64, 48)):  # wide and tall: padding, aspect ratio
        image = _image(height, width)
        before = image.copy()
        reference = processor(images=image, input_data_format='channels_last',
                              return_tensors='pt')
        frame = Frame(image)
        assert_same_inputs(backend.pixels(frame.tensor('cpu')), reference, PIXEL_TOLERANCE)
        assert np.array_equal(image, before)  # the processor left the shared pixels alone
    batch = [_image(30, 40, seed=1), _image(50, 20, seed=2)]  # crops go as a list, arrays too
    assert_same_inputs(backend.pixels(batch),
                       processor(images=batch, input_data_format='channels_last',
                                 return_tensors='pt'), PIXEL_TOLERANCE)


@pytest.mark.parametrize('key', GENERATIVE_FAMILIES)
def test_generative_processors_take_the_frame_tensor_too(models: dict, key: str) -> None:
    backend = create_backend('vqa', str(models[key]), 'cpu', 'fp32')
    reference_processor = transformers.AutoProcessor.from_pretrained(str(models[key]))
    backend.processor = recording = RecordingProcessor(backend.processor)
    image = _image()
    with torch.inference_mode():
        backend.encode_image(Frame(image).tensor('cpu'))
    reference = reference_processor(text=[reference_processor.image_token], images=[image],
                                    return_tensors='pt', return_text_replacement_offsets=True,
                                    input_data_format='channels_last')
    ours, = recording.outputs
    assert_same_inputs(ours, reference, PIXEL_TOLERANCE)


def test_one_upload_per_frame_serves_every_model(tiny_preset: pathlib.Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    engine = PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu'))
    engine.load(['detect', 'vqa', 'caption'])
    uploads, seen = [], []
    to_tensor, pixels = frame_module.to_tensor, HFBackend.pixels
    monkeypatch.setattr(frame_module, 'to_tensor',
                        lambda *args: uploads.append(1) or to_tensor(*args))
    monkeypatch.setattr(HFBackend, 'pixels',
                        lambda self, image: seen.append(image) or pixels(self, image))
    frame = engine.frame(_image())
    engine.detect(frame)
    engine.answer(frame, 'is there a cup?')
    engine.caption(frame)
    images = [each for image in seen for each in (image if isinstance(image, list) else [image])]
    assert len(images) == 3  # OWL-ViT, BLIP VQA, BLIP captioning
    assert all(image is frame.tensor('cpu') for image in images) and len(uploads) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('key', sorted(IMAGE_FAMILIES))
def test_pixels_on_cuda_are_those_on_the_cpu(models: dict, key: str) -> None:
    cpu = create_backend(IMAGE_FAMILIES[key], str(models[key]), 'cpu', 'fp32')
    cuda = create_backend(IMAGE_FAMILIES[key], str(models[key]), 'cuda:0', 'fp32')
    image = _image()
    frame = Frame(image)
    tensor = frame.tensor('cuda:0')
    assert tensor.device.type == 'cuda' and tensor.shape == (3, 37, 53)
    ours = cuda.pixels(tensor)
    assert all(value.device.type == 'cuda' for value in ours.values())
    assert_same_inputs(ours, cpu.pixels(image), CUDA_TOLERANCE)


# --- SDPA ---------------------------------------------------------------------------------------

def test_models_run_sdpa_where_their_architecture_has_it(
        models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention',
                        lambda *args, **kwargs: calls.append(1) or sdpa(*args, **kwargs))
    image = Frame(_image()).tensor('cpu')

    def sdpa_calls(encode: Any, *args: Any, **kwargs: Any) -> int:
        calls.clear()
        with torch.inference_mode():
            encode(*args, **kwargs)
        return len(calls)

    owl = create_backend('detect', str(models['detector']), 'cpu', 'fp32')
    assert sdpa_calls(owl.encode_image, image) > 0
    blip = create_backend('caption', str(models['captioner']), 'cpu', 'fp32')
    assert sdpa_calls(blip.encode_image, image) == 0  # BLIP has none: loaded with its default
    # The reference tests load with transformers' default: sdpa too, so they compare like.
    default = transformers.OwlViTForObjectDetection.from_pretrained(str(models['detector']))
    assert sdpa_calls(default.eval().owlvit.vision_model,
                      pixel_values=owl.pixels(image)['pixel_values']) > 0


# --- torch.compile ------------------------------------------------------------------------------

def _detector_engine(models: dict, **config: Any) -> PerceptionEngine:
    return PerceptionEngine(EngineConfig(preset='default', detector_model=str(models['detector']),
                                         device='cpu', labels=LABELS, **config))


def _vision_tower(engine: PerceptionEngine) -> torch.nn.Module:
    return engine.backend('detect').model.owlvit.vision_model


def assert_same_detections(ours: list, reference: list) -> None:
    assert [d.label for d in ours] == [d.label for d in reference] and reference
    for detection, expected in zip(ours, reference):
        assert abs(detection.score - expected.score) <= RESULT_TOLERANCE
        assert np.allclose(detection.box, expected.box, rtol=0, atol=RESULT_TOLERANCE)


@pytest.fixture()
def test_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compiling.BACKEND_ENV, TEST_COMPILER)


def test_compiled_detector_equals_eager(models: dict, test_compiler: None) -> None:
    images = [_image(40, 70), _image(64, 48, seed=9)]
    eager = _detector_engine(models)
    reference = [eager.detect(image, threshold=0.0) for image in images]
    graphs = counters['stats']['unique_graphs']
    engine = _detector_engine(models, compile=True)
    engine.load(['detect'], warmup=True)  # the warm-up compiles
    assert compiling.is_compiled(_vision_tower(engine))
    assert counters['stats']['unique_graphs'] > graphs
    for image, expected in zip(images, reference):
        assert_same_detections(engine.detect(image, threshold=0.0), expected)
    assert not compiling.is_compiled(_vision_tower(eager))


@pytest.mark.parametrize('failure', ['compile', 'first run'])
def test_a_failed_compile_falls_back_to_eager_with_a_warning(
        models: dict, monkeypatch: pytest.MonkeyPatch, test_compiler: None,
        failure: str) -> None:
    def broken_compile(function: Any, **options: Any) -> Any:
        if failure == 'compile':
            raise RuntimeError('no compiler here')

        def compiled(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError('unsupported op')
        return compiled

    image = _image(40, 70)
    reference = _detector_engine(models).detect(image, threshold=0.0)
    monkeypatch.setattr(torch, 'compile', broken_compile)
    engine = _detector_engine(models, compile=True)
    reason = 'no compiler here' if failure == 'compile' else 'unsupported op'
    with pytest.warns(CompileFallback, match=rf"detect model '{models['detector']}'.*{reason}"):
        engine.load(['detect'], warmup=True)
    assert not compiling.is_compiled(_vision_tower(engine))
    assert_same_detections(engine.detect(image, threshold=0.0), reference)


def test_compile_is_a_cli_flag_and_a_read_only_parameter() -> None:
    parser = cli.build_parser()
    assert cli.make_engine(parser.parse_args(['detect', 'x.png', '--compile'])).config.compile
    assert not cli.make_engine(parser.parse_args(['detect', 'x.png'])).config.compile
    spec = parameters.SPEC_BY_NAME['compile']
    assert spec.kind == 'bool' and spec.default is False and spec.read_only
