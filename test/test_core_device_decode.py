"""Compressed frames decoded for the models' device: JPEG with nvjpeg on CUDA, into a Frame."""

import pathlib

import cv2
import numpy as np
import pytest
import torch
import torchvision.io

from vlm_perception.core import image as core_image
from vlm_perception.core.engine import EngineConfig, PerceptionEngine
from vlm_perception.core.errors import InputError
from vlm_perception.core.frame import Frame
from vlm_perception.core.image import decode_compressed, DeviceJpegDecoder, frame_decoder
from vlm_perception.core.types import Detection
from vlm_perception.ros.stream import SourceFrame

# nvjpeg's IDCT and upsampling are not libjpeg-turbo's: a few levels apart at edges, on average
# well under one (NVIDIA documents no bound; these are loose on purpose).
CUDA_MAX_LEVELS = 24
CUDA_MEAN_LEVELS = 1.0
CUDA_SCORE_TOLERANCE = 1e-2   # each label's best score on the two decodings


def _picture(height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth colour ramps with a few blocks: an image JPEG keeps well."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([cols * 255 // width, rows * 255 // height,
                      (rows + cols) * 127 // (height + width)], axis=-1).astype(np.uint8)
    image[8:20, 10:30] = (200, 30, 40)
    image[28:44, 36:60] = (20, 180, 220)
    return image


def _encoded(image: np.ndarray, extension: str = '.jpg') -> bytes:
    ok, buffer = cv2.imencode(extension, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


def _as_array(pixels: torch.Tensor) -> np.ndarray:
    return pixels.permute(1, 2, 0).cpu().numpy()


def test_a_jpeg_becomes_a_chw_tensor_on_the_device_with_opencvs_pixels() -> None:
    data = _encoded(_picture())
    pixels = DeviceJpegDecoder('cpu')(data)  # torchvision's CPU decoder: the same code path
    assert isinstance(pixels, torch.Tensor)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 48, 64)
    assert pixels.device == torch.device('cpu')
    assert np.array_equal(_as_array(pixels), decode_compressed(data))  # both libjpeg-turbo


def test_other_formats_are_decoded_on_the_cpu_to_an_array() -> None:
    data = _encoded(_picture(), '.png')
    pixels = DeviceJpegDecoder('cpu')(data)
    assert isinstance(pixels, np.ndarray)
    assert np.array_equal(pixels, decode_compressed(data))


def test_bad_data_is_an_input_error_not_a_fallback() -> None:
    reports: list[str] = []
    decode = DeviceJpegDecoder('cpu', reports.append)
    data = _encoded(_picture())
    for bad in (data[:len(data) // 2], data[:3] + b'\x00' * 64):
        with pytest.raises(InputError, match='could not be decoded|corrupt'):
            decode(bad)
    assert reports == []


def test_a_jpeg_over_the_size_limits_is_refused_from_its_header() -> None:
    decode = DeviceJpegDecoder('cpu', max_side=32)
    with pytest.raises(InputError, match='larger than 32 pixels a side'):
        decode(_encoded(_picture()))


def test_a_torchvision_without_gpu_decoding_falls_back_to_the_cpu_and_says_so_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gpu_decoding(*args: object, **kwargs: object) -> None:
        # what decode_jpeg raises for device='cuda' in a torchvision built without nvjpeg
        raise NotImplementedError("Could not run 'image::decode_jpegs_cuda' with arguments "
                                  "from the 'CUDA' backend")

    monkeypatch.setattr(torchvision.io, 'decode_jpeg', no_gpu_decoding)
    reports: list[str] = []
    decode = DeviceJpegDecoder('cuda:0', reports.append)
    data = _encoded(_picture())
    for _ in range(3):
        pixels = decode(data)
        assert isinstance(pixels, np.ndarray)
        assert np.array_equal(pixels, decode_compressed(data))
    assert len(reports) == 1
    assert 'cuda:0' in reports[0] and 'decoded on the CPU' in reports[0]


def test_frames_are_decoded_with_nvjpeg_only_for_cuda() -> None:
    assert frame_decoder('cpu') is decode_compressed
    assert isinstance(frame_decoder('cuda:0'), DeviceJpegDecoder)
    assert frame_decoder('cuda').device == torch.device('cuda')


def test_a_frame_of_a_tensor_keeps_it_and_makes_the_array_only_when_asked() -> None:
    image = _picture()
    pixels = torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()
    frame = Frame(pixels)
    assert (frame.height, frame.width) == (48, 64)
    assert frame.tensor('cpu') is pixels and frame.tensor(torch.device('cpu')) is pixels
    assert frame._image is None  # nothing has asked for the array yet
    assert np.array_equal(frame.image, image) and frame.image.flags.c_contiguous
    assert np.array_equal(frame.crop(_box(10, 8, 30, 20)), image[8:20, 10:30])
    frame.drop_encodings()
    assert frame.tensor('cpu') is pixels  # the frame's own pixels are no encoding


def test_a_tensor_that_is_no_rgb_image_is_an_input_error() -> None:
    for bad in (torch.zeros(3, 4, 5, dtype=torch.float32), torch.zeros(4, 5, 3, dtype=torch.uint8),
                torch.zeros(3, 0, 5, dtype=torch.uint8), torch.zeros(5, 3, dtype=torch.uint8)):
        with pytest.raises(InputError, match='3xHxW uint8'):
            Frame(bad)


def test_detections_on_a_decoded_tensor_equal_those_on_the_array(
        tiny_preset: pathlib.Path) -> None:
    engine = PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cpu'))
    engine.load(['detect', 'tags'])
    data = _encoded(_picture(96, 128))
    on_tensor = engine.frame(DeviceJpegDecoder('cpu')(data))
    on_array = engine.frame(decode_compressed(data))
    assert engine.detect(on_tensor, threshold=0.0) == engine.detect(on_array, threshold=0.0)
    assert engine.tags(on_tensor) == engine.tags(on_array)


def test_a_source_frame_of_tensor_pixels_gives_its_size_and_the_tensor_to_the_engine() -> None:
    image = _picture()
    pixels = torch.from_numpy(image.copy()).permute(2, 0, 1)
    source = SourceFrame(None, 0, lambda: pixels)
    assert source.size == (48, 64)
    made = []
    assert source.engine_frame(lambda given: made.append(given) or 'frame') == 'frame'
    assert made == [pixels]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_nvjpeg_decodes_on_the_gpu_close_to_libjpeg(tiny_preset: pathlib.Path) -> None:
    data = _encoded(_picture(96, 128))
    reports: list[str] = []
    pixels = core_image.frame_decoder('cuda:0', reports.append)(data)
    assert reports == [] and isinstance(pixels, torch.Tensor)
    assert pixels.device.type == 'cuda' and pixels.shape == (3, 96, 128)
    difference = np.abs(_as_array(pixels).astype(int) - decode_compressed(data).astype(int))
    assert difference.max() <= CUDA_MAX_LEVELS and difference.mean() <= CUDA_MEAN_LEVELS
    engine = PerceptionEngine(EngineConfig(preset=str(tiny_preset), device='cuda:0',
                                           dtype='fp32'))
    engine.load(['detect'])
    frame = engine.frame(pixels)
    found = engine.detect(frame, threshold=0.0)
    assert frame.tensor('cuda:0') is pixels  # no copy back and forth
    ours = _best_scores(found)
    reference = _best_scores(engine.detect(decode_compressed(data), threshold=0.0))
    assert set(ours) == set(reference)
    assert all(abs(ours[label] - reference[label]) <= CUDA_SCORE_TOLERANCE for label in ours)


def _box(x0: int, y0: int, x1: int, y1: int) -> Detection:
    return Detection(label='block', score=1.0, center_x=(x0 + x1) / 2, center_y=(y0 + y1) / 2,
                     size_x=x1 - x0, size_y=y1 - y0)


def _best_scores(found: list[Detection]) -> dict[str, float]:
    best: dict[str, float] = {}
    for item in found:
        best[item.label] = max(best.get(item.label, 0.0), item.score)
    return best
