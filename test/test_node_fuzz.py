"""
Seeded fuzz of perception_node's inputs: images, compressed images, questions and queries.

Two nodes run on the tiny preset, one subscribing raw images (/fuzz_raw) and one compressed
images (/fuzz_compressed). Message i of seed SEED is made from numpy's Generator seeded
[SEED, i] alone (stamps near now excepted), so a failure names the seed and the message, and
`Fuzzer(SEED).message(i)` makes it again (VLM_PERCEPTION_FUZZ_SEED runs another seed,
VLM_PERCEPTION_FUZZ_MESSAGES another count). Every CHECK_EVERY messages both nodes must still
answer a valid query and turn a valid frame into detections, and every Question must have had
exactly one Answer. No reply may be an internal error, no node may log an error or count one
in /diagnostics, invalid requests must fail and valid ones (max_age 0, no question) succeed.
At the end both nodes must be alive and stop cleanly with SIGINT.

Strings are cut at a NUL character by rclpy before they leave this process, so the node sees
(and echoes) only what precedes it; the expectations are made of what the node receives.
"""

from collections import Counter
from dataclasses import dataclass, field
import math
import os
import string
import struct
import time
from typing import Any, Optional
import zlib

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('vlm_perception.msg', reason='needs the colcon build (make build)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402,I100
from node_harness import frame, ros_node, spin_until  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from vlm_perception import msg, srv  # noqa: E402

SEED = int(os.environ.get('VLM_PERCEPTION_FUZZ_SEED', '20250917'))
MESSAGES = int(os.environ.get('VLM_PERCEPTION_FUZZ_MESSAGES', '400'))
CHECK_EVERY = 50
MAX_OUTSTANDING = 5  # Questions without their Answer yet, per node (its subscription keeps 10)
IMAGE_PAUSE_S = 0.03  # after each image, so that the node's depth-1 subscription takes most
REPLY_TIMEOUT_S = 30.0
NAMESPACES = {'raw': '/fuzz_raw', 'compressed': '/fuzz_compressed'}
KEEP_ALL = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
MAX_TEXT = 512  # characters of a question or label the node takes
MAX_LABELS = 256

KINDS = ('image', 'compressed', 'question', 'query')
KIND_WEIGHTS = (0.35, 0.35, 0.15, 0.15)
ENCODINGS = {  # the raw encodings the node reads: channels, bytes per channel
    'rgb8': (3, 1), 'bgr8': (3, 1), 'rgba8': (4, 1), 'bgra8': (4, 1), 'mono8': (1, 1),
    '8UC1': (1, 1), 'rgb16': (3, 2), 'bgr16': (3, 2), 'rgba16': (4, 2), 'bgra16': (4, 2),
    'mono16': (1, 2), '16UC1': (1, 2)}
ODD_ENCODINGS = ['', 'RGB8', 'rgb8 ', ' rgb8', 'rgb8\t', 'Rgb8', 'rgb', 'mono', '32FC1',
                 '32FC3', '64FC1', '8UC3', '8UC4', '8SC1', '16SC1', '32SC1', '16UC3',
                 'bayer_rggb8', 'bayer_bggr16', 'yuv422', 'yuv422_yuy2', 'nv21', 'jpeg', 'png',
                 'rgb８', 'rgb8\u200b', 'mono8; jpeg compressed', '../../etc/passwd', '%s%n%x']
FORMATS = ['jpeg', 'png', 'rgb8; jpeg compressed bgr8', 'bgr8; png compressed bgr8', '',
           'JPEG', 'tiff', 'gif', 'webp', 'bmp', 'h264', 'compressedDepth', 'ĵpeg', ' png ']
WORDS = ('what is the of a colour color shape where on in left right cup person dog chair '
         'bottle table red green blue how many there are').split()
ASCII = string.ascii_letters + string.digits + string.punctuation + ' '
WHITESPACE = ' \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u2028\u2029\u3000'
UNICODE = ('éüßñøÅ中文字日本語한국어שלוםمرحباΩπ€¥😀🚀👍🏽\u0301\u0336\u200b\u200d\u202e\ufeff'
           '\ufffd\U0001d54f\U0010fffd')
CONTROL = ''.join(map(chr, range(1, 32))) + '\x7f\x80\x9f'
INT32_MAX, UINT32_MAX = 2**31 - 1, 2**32 - 1
MAX_RAW_BYTES = 4_000_000  # pixel data of one valid raw image, at most


def shorten(value: Any, limit: int = 60) -> str:
    """Return repr(value), cut in the middle (its length said) when longer than limit."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f'{text[:limit // 2]}...{text[-limit // 4:]} ({len(value)} long)'


def received(text: str) -> str:
    """Return the part of text that rclpy sends: up to the first NUL character."""
    return text.split('\x00')[0]


def collapsed(text: str) -> str:
    """Return text as the node cleans it: stripped, each run of whitespace one space."""
    return ' '.join(received(text).split())


def chars(rng: np.random.Generator, length: int, alphabet: str) -> str:
    """Return length characters drawn from alphabet."""
    if length <= 0:
        return ''
    return ''.join(rng.choice(list(alphabet), int(length)))


def pick(rng: np.random.Generator, options: list) -> Any:
    """Return one of options (any Python objects), uniformly."""
    return options[int(rng.integers(len(options)))]


@dataclass(repr=False)
class Fuzzed:
    """One generated message: what, to which node, and what the node must do with it."""

    index: int
    kind: str  # image, compressed, question, query
    target: str  # raw or compressed
    message: Any
    case: str
    summary: str
    must: Optional[str] = None  # 'fail' or 'succeed' where the outcome is known, else None

    def describe(self) -> str:
        """Say which message this is, for a failure report."""
        return (f'seed {SEED}, message #{self.index} ({self.kind} to {self.target}, '
                f'case {self.case}): {self.summary}')


class Fuzzer:
    """Messages of one seed; message i is made from numpy's Generator seeded [seed, i] alone."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def message(self, index: int) -> Fuzzed:
        """Return message index of this seed."""
        rng = np.random.default_rng([self.seed, index])
        kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
        target = {'image': 'raw', 'compressed': 'compressed'}.get(kind) or pick(
            rng, ['raw', 'compressed'])
        made = getattr(self, f'_{kind}')(rng)
        return Fuzzed(index, kind, target, *made)

    # --- pieces -------------------------------------------------------------------------------

    def text(self, rng: np.random.Generator) -> tuple[str, str]:
        """Return (case, text) of a question: empty, blank, unicode, control, long, ..."""
        case = pick(rng, ['empty', 'whitespace', 'short', 'short', 'unicode', 'control', 'nul',
                          'len511', 'len512', 'len513', 'len512 padded', 'collapses to 512',
                          'long', 'huge', 'words'])
        core = ASCII.replace(' ', '')
        if case == 'empty':
            return case, ''
        if case == 'whitespace':
            return case, chars(rng, rng.integers(1, 60), WHITESPACE)
        if case == 'short':
            return case, ' '.join(pick(rng, WORDS) for _ in range(rng.integers(1, 7))) + '?'
        if case == 'unicode':
            return case, chars(rng, rng.integers(1, 120), UNICODE + ASCII)
        if case == 'control':
            return case, chars(rng, rng.integers(1, 120), CONTROL + ASCII)
        if case == 'nul':
            return case, pick(rng, ['', 'what is', '\x00']) + '\x00' + chars(rng, 20, ASCII)
        if case.startswith('len5'):
            text = chars(rng, int(case[3:6]), core)
            if case.endswith('padded'):
                text = chars(rng, 5, ' \t\n') + text + chars(rng, 5, ' \t\n')
            return case, text
        if case == 'collapses to 512':  # over 512 characters until its whitespace collapses
            words = [chars(rng, 7, core) for _ in range(64)]
            words[0] += 'x'  # 64 words of 7 characters and 63 spaces, one character short
            return case, ''.join(word + chars(rng, rng.integers(1, 4), WHITESPACE)
                                 for word in words)
        if case == 'long':
            return case, chars(rng, rng.integers(514, 5000), ASCII)
        if case == 'huge':
            return case, chars(rng, 3, core) * int(rng.integers(20_000, 40_000))
        return case, ' '.join(pick(rng, WORDS) for _ in range(rng.integers(10, 60)))

    def frame_id(self, rng: np.random.Generator) -> str:
        """Return a frame_id: empty, usual, random, unicode, very long."""
        return pick(rng, [
            '', 'camera_optical_frame', chars(rng, rng.integers(1, 30), ASCII),
            chars(rng, rng.integers(1, 30), UNICODE), '/' * int(rng.integers(1, 5)),
            chars(rng, rng.integers(2000, 20000), ASCII),
            chars(rng, 10, ASCII) + '\x00' + 'hidden'])

    def header(self, rng: np.random.Generator) -> Header:
        """Return a header of a random frame_id and stamp (0, negative, far future, ...)."""
        now = int(time.time())
        sec = pick(rng, [0, 1, -1, -INT32_MAX - 1, INT32_MAX, now, now, now + 1_000_000,
                         now - 1_000_000, int(rng.integers(-INT32_MAX - 1, INT32_MAX))])
        nanosec = pick(rng, [0, 42, 999_999_999, 1_000_000_000, UINT32_MAX,
                             int(rng.integers(0, UINT32_MAX))])
        header = Header(frame_id=self.frame_id(rng))
        header.stamp.sec, header.stamp.nanosec = sec, nanosec
        return header

    def side(self, rng: np.random.Generator) -> int:
        """Return an image side: tiny, small, usual or long."""
        return pick(rng, [1, 2, 3, int(rng.integers(1, 64)), int(rng.integers(16, 200)),
                          int(rng.integers(16, 200)), 640, int(rng.integers(1000, 8193))])

    # --- raw images ---------------------------------------------------------------------------

    def _image(self, rng: np.random.Generator) -> tuple[Image, str, str]:
        case = pick(rng, ['valid', 'valid', 'valid', 'wrong step', 'truncated', 'zero size',
                          'huge size', 'odd encoding', 'big-endian flag', 'extra data'])
        encoding = pick(rng, list(ENCODINGS))
        channels, depth = ENCODINGS[encoding]
        width, height = self.side(rng), self.side(rng)
        while width * height * channels * depth > MAX_RAW_BYTES:
            width, height = max(1, width // 2), max(1, height // 2)
        row = width * channels * depth
        step = row + pick(rng, [0, 0, 0, 1, 3, int(rng.integers(1, 64))])
        size = step * height
        bigendian = int(rng.integers(0, 2))
        if case == 'wrong step':
            step = pick(rng, [0, 1, max(0, row - 1), int(rng.integers(0, row + 1)),
                              step + int(rng.integers(1, 1000)), UINT32_MAX])
        elif case == 'truncated':
            size = int(rng.integers(0, size))
        elif case == 'zero size':
            width, height = pick(rng, [(0, height), (width, 0), (0, 0)])
            size = pick(rng, [0, size])
        elif case == 'huge size':
            big = pick(rng, [8193, 8192, 65535, 2**16, 2**20, 2**31, UINT32_MAX])
            width, height = pick(rng, [(big, height), (width, big), (big, big), (8192, 4882),
                                       (6325, 6325)])
            step = pick(rng, [width * channels * depth, step, UINT32_MAX])
            step = min(step, UINT32_MAX)
            size = min(size, 10_000)
        elif case == 'odd encoding':
            encoding = pick(rng, ODD_ENCODINGS + [chars(rng, rng.integers(1, 300), ASCII)])
        elif case == 'big-endian flag':
            bigendian = pick(rng, [1, 2, 127, 255])
        elif case == 'extra data':
            size += int(rng.integers(1, 10_000))
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        header = self.header(rng)
        image = Image(header=header, height=height, width=width, encoding=encoding,
                      is_bigendian=bigendian, step=step, data=data)
        return image, case, (
            f'{encoding!r} {width}x{height} step {step} data {len(data)} bytes, is_bigendian '
            f'{bigendian}, frame_id {shorten(header.frame_id)}, stamp '
            f'{header.stamp.sec}.{header.stamp.nanosec:09d}')

    # --- compressed images --------------------------------------------------------------------

    def encoded(self, rng: np.random.Generator, extension: str) -> bytes:
        """Return a small valid image file (random pixels; grey, colour or with alpha)."""
        width, height = int(rng.integers(1, 129)), int(rng.integers(1, 129))
        if rng.random() < 0.1:  # a long strip
            width, height = pick(rng, [(int(rng.integers(1000, 4000)), 1),
                                       (1, int(rng.integers(1000, 4000)))])
        channels = pick(rng, [1, 3, 3, 4] if extension != '.jpg' else [1, 3])
        dtype = np.uint16 if extension == '.png' and rng.random() < 0.3 else np.uint8
        pixels = rng.integers(0, np.iinfo(dtype).max + 1, (height, width, channels), dtype=dtype)
        params = ([cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(1, 101))]
                  if extension == '.jpg' else [])
        ok, data = cv2.imencode(extension, pixels, params)
        assert ok, extension
        return data.tobytes()

    def _compressed(self, rng: np.random.Generator) -> tuple[CompressedImage, str, str]:
        case = pick(rng, ['valid jpeg', 'valid jpeg', 'valid png', 'valid png', 'valid bmp',
                          'truncated', 'random bytes', 'jpeg claims huge', 'png claims huge',
                          'header only', 'empty', 'other format bomb', 'garbage after'])
        if case.startswith('valid'):
            data = self.encoded(rng, {'jpeg': '.jpg', 'png': '.png', 'bmp': '.bmp'}[case[6:]])
        elif case == 'truncated':
            whole = self.encoded(rng, pick(rng, ['.jpg', '.png', '.bmp']))
            data = whole[:int(rng.integers(1, len(whole)))]
        elif case == 'random bytes':
            data = rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
        elif case == 'jpeg claims huge':
            data = self.jpeg_claiming(rng)
        elif case == 'png claims huge':
            data = self.png_claiming(rng)
        elif case == 'header only':
            data = pick(rng, [b'\xff\xd8', b'\xff\xd8\xff', b'\xff\xd8\xff\xc0\x00\x11\x08',
                              b'\x89PNG\r\n\x1a\n', b'\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR',
                              b'RIFF\x00\x00\x00\x00WEBP', b'RIFF\x00\x00\x00\x00WEBPVP8X',
                              b'BM', b'BM' + bytes(24), b'GIF89a', b'GIF87a\xff\xff',
                              b'P6\n', b'\x00', b'\xff' * 64])
        elif case == 'empty':
            data = b''
        elif case == 'other format bomb':
            data = self.other_claiming(rng)
        else:
            data = self.encoded(rng, '.jpg') + rng.integers(
                0, 256, int(rng.integers(1, 2000)), dtype=np.uint8).tobytes()
        fmt = pick(rng, FORMATS + [chars(rng, rng.integers(1, 200), ASCII + UNICODE)])
        header = self.header(rng)
        image = CompressedImage(header=header, format=fmt, data=data)
        return image, case, (f'format {shorten(fmt)}, {len(data)} bytes starting '
                             f'{data[:24].hex()}, frame_id {shorten(header.frame_id)}, stamp '
                             f'{header.stamp.sec}.{header.stamp.nanosec:09d}')

    def claimed(self, rng: np.random.Generator) -> tuple[int, int]:
        """Return a (width, height) for a header to claim: huge, empty or at the node's cap."""
        return pick(rng, [(65535, 65535), (20000, 20000), (8193, 1), (1, 8193), (0, 0),
                          (0, 64), (8192, 4882), (6000, 6000), (2**31 - 1, 2**31 - 1),
                          (int(rng.integers(1, 65536)), int(rng.integers(1, 65536)))])

    def jpeg_claiming(self, rng: np.random.Generator) -> bytes:
        """Return a small JPEG whose frame header (SOF) claims another size."""
        data = bytearray(self.encoded(rng, '.jpg'))
        width, height = self.claimed(rng)
        sof = data.find(b'\xff\xc0')
        assert sof > 0
        struct.pack_into('>HH', data, sof + 5, height & 0xFFFF, width & 0xFFFF)
        return bytes(data)

    def png_claiming(self, rng: np.random.Generator) -> bytes:
        """Return a small PNG whose IHDR claims another size (its CRC fixed, or not)."""
        data = bytearray(self.encoded(rng, '.png'))
        width, height = self.claimed(rng)
        struct.pack_into('>II', data, 16, width, height)
        if rng.random() < 0.7:
            struct.pack_into('>I', data, 29, zlib.crc32(bytes(data[12:29])))
        return bytes(data)

    def other_claiming(self, rng: np.random.Generator) -> bytes:
        """Return a header of WebP, BMP, GIF, PPM or Radiance HDR that claims a huge size."""
        width, height = self.claimed(rng)
        width, height = max(width, 1), max(height, 1)
        tail = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        kind = pick(rng, ['webp', 'bmp', 'gif', 'ppm', 'pgm', 'hdr'])
        if kind == 'webp':
            canvas = ((width - 1) & 0xFFFFFF).to_bytes(3, 'little') + (
                (height - 1) & 0xFFFFFF).to_bytes(3, 'little')
            return b'RIFF' + struct.pack('<I', 30 + len(tail)) + b'WEBPVP8X' + struct.pack(
                '<I', 10) + bytes(4) + canvas + tail
        if kind == 'bmp':
            return b'BM' + struct.pack('<IHHI', 54 + len(tail), 0, 0, 54) + struct.pack(
                '<IiiHHIIiiII', 40, width & 0x7FFFFFFF, height & 0x7FFFFFFF, 1, 24, 0, 0, 0,
                0, 0, 0) + tail
        if kind == 'gif':
            return b'GIF89a' + struct.pack('<HH', width & 0xFFFF, height & 0xFFFF) + tail
        if kind in ('ppm', 'pgm'):
            magic = b'P6' if kind == 'ppm' else b'P5'
            return magic + f'\n{width} {height}\n255\n'.encode() + tail
        return (b'#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n'
                + f'-Y {height} +X {width}\n'.encode() + tail)

    # --- questions and queries ----------------------------------------------------------------

    def question_id(self, rng: np.random.Generator) -> str:
        """Return a Question id: empty, repeated, random, unicode, long."""
        return pick(rng, ['', 'same', 'q', chars(rng, rng.integers(1, 20), ASCII),
                          chars(rng, rng.integers(1, 20), UNICODE + CONTROL),
                          chars(rng, rng.integers(500, 3000), ASCII), 'id\x00cut'])

    def _question(self, rng: np.random.Generator) -> tuple[msg.Question, str, str, str]:
        case, text = self.text(rng)
        question = msg.Question(id=self.question_id(rng), question=text)
        cleaned = collapsed(text)
        must = 'fail' if not cleaned or len(cleaned) > MAX_TEXT else None
        return question, case, f'id {shorten(question.id)}, question {shorten(text)}', must

    def labels(self, rng: np.random.Generator) -> tuple[str, list[str]]:
        """Return (case, labels) of a query: empty, duplicates, blank, long, many, unicode."""
        case = pick(rng, ['none', 'none', 'few', 'duplicates', 'all blank', 'some blank',
                          'label 512', 'label 513', 'label long', 'many', 'many repeated',
                          'unicode', 'control'])
        if case == 'none':
            return case, []
        if case == 'few':
            return case, [pick(rng, WORDS) for _ in range(rng.integers(1, 6))]
        if case == 'duplicates':
            return case, ['cup', 'cup', ' cup ', 'cup\t', 'dog', 'dog']
        if case == 'all blank':
            return case, [chars(rng, rng.integers(0, 10), WHITESPACE)
                          for _ in range(rng.integers(1, 6))]
        if case == 'some blank':
            return case, ['', ' ', 'chair', '\t\n', 'bottle']
        if case in ('label 512', 'label 513'):
            return case, ['cup', chars(rng, int(case[-3:]), ASCII.replace(' ', ''))]
        if case == 'label long':
            return case, [chars(rng, rng.integers(514, 5000), ASCII)]
        if case == 'many':
            count = pick(rng, [255, 256, 257, 300, 1000, int(rng.integers(1, 400))])
            return f'{case} {count}', [f'thing {n}' for n in range(count)]
        if case == 'many repeated':  # 600 labels, at most 200 different
            return case, [f'thing {int(n)}' for n in rng.integers(0, 200, 600)]
        if case == 'unicode':
            return case, [chars(rng, rng.integers(1, 40), UNICODE)
                          for _ in range(rng.integers(1, 8))]
        return case, [chars(rng, rng.integers(1, 20), CONTROL + 'ab\x00')
                      for _ in range(rng.integers(1, 8))]

    def _query(self, rng: np.random.Generator) -> tuple[Any, str, str, str]:
        label_case, labels = self.labels(rng)
        text_case, text = self.text(rng) if rng.random() < 0.5 else ('no question', '')
        max_age = pick(rng, [0.0, 0.0, 0.0, -0.0, -1.0, -1e-9, math.nan, math.inf, -math.inf,
                             1e-9, 0.5, 1e6, 3.4e38, float(rng.uniform(0, 100))])
        request = srv.QueryScene.Request(labels=labels, question=text,
                                         caption=bool(rng.integers(0, 2)), max_age=max_age)
        cleaned = [collapsed(label) for label in labels]
        unique = {label for label in cleaned if label}
        question = collapsed(text)
        bad = (not math.isfinite(max_age) or max_age < 0
               or (labels and not unique) or any(len(label) > MAX_TEXT for label in cleaned)
               or len(unique) > MAX_LABELS or len(question) > MAX_TEXT)
        must = 'fail' if bad else ('succeed' if max_age == 0 and not question else None)
        summary = (f'{len(labels)} labels {shorten(labels)}, question {shorten(text)}, caption '
                   f'{request.caption}, max_age {max_age!r}')
        return request, f'{label_case} / {text_case}', summary, must


@dataclass(repr=False)  # a failure report prints the test's arguments: keep them short
class Peer:
    """What the test holds of one perception node: its process, its topics and its replies."""

    name: str
    process: Any
    image_pub: Any = None
    question_pub: Any = None
    query: Any = None
    answers: list = field(default_factory=list)  # (id, question, success, error)
    asked: Counter = field(default_factory=Counter)  # (id, question) of the Questions sent
    expected: dict = field(default_factory=dict)  # (id, question) -> Fuzzed
    detections: list = field(default_factory=list)  # (frame_id, sec, nanosec)
    headers: set = field(default_factory=set)  # (frame_id, sec, nanosec) of the images sent
    log_offset: int = 0
    recent: list = field(default_factory=list)  # the last messages sent to this node
    outcomes: Counter = field(default_factory=Counter)  # (kind, must, success) of the replies

    def outstanding(self) -> int:
        """Return how many Questions still wait for their Answer."""
        return sum(self.asked.values()) - len(self.answers)

    def new_log_errors(self) -> list[str]:
        """Return the lines logged since the last call that show an error or a traceback."""
        output = self.process.output()
        fresh, self.log_offset = output[self.log_offset:], len(output)
        return [line for line in fresh.splitlines()
                if '[ERROR]' in line or '[FATAL]' in line or 'Traceback' in line]


@pytest.fixture(scope='module')
def perception(tiny_preset):
    """Start a raw-image and a compressed-image perception_node on the tiny preset."""
    common = ['-p', f'preset:={tiny_preset}', '-p', 'warmup:=false']
    processes = {
        'raw': ros_node('vlm_perception.ros.node', [*common, '-r', '__ns:=/fuzz_raw']),
        'compressed': ros_node('vlm_perception.ros.node', [
            *common, '-p', 'compressed:=true', '-r', '__ns:=/fuzz_compressed'])}
    yield processes
    for process in processes.values():  # the test stops them; this is for a failed test
        if process.alive():
            process.stop()


@pytest.fixture(scope='module')
def ros(perception):
    """Return this test's node and a matched Peer per perception node."""
    for process in perception.values():
        process.require_ready()
    rclpy.init()
    node = rclpy.create_node('node_fuzz_test')
    peers = {}
    for name, process in perception.items():
        namespace = NAMESPACES[name]
        peer = Peer(name, process)
        topic, kind = ((f'{namespace}/image', Image) if name == 'raw'
                       else (f'{namespace}/image/compressed', CompressedImage))
        peer.image_pub = node.create_publisher(kind, topic, QoSProfile(depth=1))
        peer.question_pub = node.create_publisher(msg.Question, f'{namespace}/questions',
                                                  KEEP_ALL)
        peer.query = node.create_client(srv.QueryScene, f'{namespace}/query')
        answers = node.create_subscription(
            msg.Answer, f'{namespace}/answers',
            lambda a, peer=peer: peer.answers.append((a.id, a.question, a.success, a.error)),
            KEEP_ALL)
        detections = node.create_subscription(
            msg.DetectionArray, f'{namespace}/detections',
            lambda d, peer=peer: peer.detections.append(
                (d.header.frame_id, d.header.stamp.sec, d.header.stamp.nanosec)), 50)
        matched = spin_until(node, lambda: peer.image_pub.get_subscription_count() > 0
                             and peer.question_pub.get_subscription_count() > 0
                             and answers.get_publisher_count() > 0
                             and detections.get_publisher_count() > 0, timeout=30.0)
        assert matched and peer.query.wait_for_service(timeout_sec=30.0), process.output()
        peers[name] = peer
    node.diagnostics = {}  # status name -> its latest key values

    def keep(array: DiagnosticArray) -> None:
        node.diagnostics.update({status.name: {kv.key: kv.value for kv in status.values}
                                 for status in array.status})

    node.create_subscription(DiagnosticArray, '/diagnostics', keep, 10)
    yield node, peers
    node.destroy_node()
    rclpy.shutdown()


def pause(node, seconds: float) -> None:
    """Spin node for seconds."""
    spin_until(node, lambda: False, timeout=seconds)


def request(node, peer: Peer, query: Any, context: str) -> Any:
    """Call peer's query service; fail the test (naming context) when no response comes."""
    future = peer.query.call_async(query)
    if not spin_until(node, future.done, timeout=REPLY_TIMEOUT_S):
        raise AssertionError(f'{peer.name} node: no query response in {REPLY_TIMEOUT_S} s to '
                             f'{context}\n{peer.process.output()[-4000:]}')
    return future.result()


def valid_frame(peer: Peer, check: int) -> tuple[Any, str]:
    """Return a normal frame for peer (rgb8 96x64, or its JPEG) with a frame_id of check."""
    image = frame(1000 + check, frame_id=f'fuzz_check_{check}')
    if peer.name == 'raw':
        return image, image.header.frame_id
    pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.width, 3)
    ok, data = cv2.imencode('.jpg', pixels)
    assert ok
    return (CompressedImage(header=image.header, format='jpeg', data=data.tobytes()),
            image.header.frame_id)


def checkpoint(node, peers: dict, check: int, problems: list) -> None:
    """Check that both nodes live, answered each Question once and still serve valid input."""
    for peer in peers.values():
        context = f'checkpoint {check} (seed {SEED}) on the {peer.name} node'
        recent = '; '.join(fuzzed.describe() for fuzzed in peer.recent[-3:]) or 'none'
        assert peer.process.alive(), (f'{context}: the node died; last messages: {recent}\n'
                                      f'{peer.process.output()[-6000:]}')
        if not spin_until(node, lambda: peer.outstanding() <= 0, timeout=REPLY_TIMEOUT_S):
            problems.append(f'{context}: {peer.outstanding()} Questions without an Answer')
        replies = Counter((answer[0], answer[1]) for answer in peer.answers)
        if replies != peer.asked:
            problems.append(f'{context}: Answers do not match the Questions one to one: '
                            f'missing {shorten(list((peer.asked - replies).elements()), 300)}, '
                            f'extra {shorten(list((replies - peer.asked).elements()), 300)}')
            peer.asked = replies  # the next checkpoint reports only what goes wrong after this
        steps = [query_check, frame_check] if check else [frame_check, query_check]
        for step in steps:  # at 0, a frame first: before it the node has no image to query
            step(node, peer, check, context, recent, problems)


def query_check(node, peer: Peer, check: int, context: str, recent: str,
                problems: list) -> None:
    """Check that a valid query about the latest frame (fuzzed or not) has a summary."""
    query = srv.QueryScene.Request(labels=['cup', 'dog'], question='what is on the table',
                                   caption=True, max_age=0.0)
    response = request(node, peer, query, context)
    if not response.success or not response.scene.summary:
        problems.append(f'{context}: the valid query failed ({response.message!r}, summary '
                        f'{response.scene.summary!r}); last messages: {recent}')


def frame_check(node, peer: Peer, check: int, context: str, recent: str,
                problems: list) -> None:
    """Check that a valid frame of a known frame_id comes back as a detections message."""
    image, frame_id = valid_frame(peer, check)
    peer.headers.add((frame_id, image.header.stamp.sec, image.header.stamp.nanosec))
    deadline = time.monotonic() + 20.0
    seen = False
    while not seen and time.monotonic() < deadline:
        peer.image_pub.publish(image)
        seen = spin_until(node, lambda: any(d[0] == frame_id for d in peer.detections),
                          timeout=1.0)
    if not seen:
        problems.append(f'{context}: no detections for the valid frame {frame_id}; last '
                        f'messages: {recent}')


def send(node, peer: Peer, fuzzed: Fuzzed, problems: list) -> None:
    """Send one fuzzed message to peer and check the reply where one comes at once."""
    peer.recent = (peer.recent + [fuzzed])[-5:]
    if fuzzed.kind in ('image', 'compressed'):
        header = fuzzed.message.header
        peer.headers.add((received(header.frame_id), header.stamp.sec, header.stamp.nanosec))
        peer.image_pub.publish(fuzzed.message)
        pause(node, IMAGE_PAUSE_S)
    elif fuzzed.kind == 'question':
        if not spin_until(node, lambda: peer.outstanding() < MAX_OUTSTANDING,
                          timeout=REPLY_TIMEOUT_S):
            raise AssertionError(f'{peer.name} node stopped answering Questions before '
                                 f'{fuzzed.describe()}\n{peer.process.output()[-4000:]}')
        key = (received(fuzzed.message.id), received(fuzzed.message.question))
        peer.asked[key] += 1
        peer.expected[key] = fuzzed
        peer.question_pub.publish(fuzzed.message)
        rclpy.spin_once(node, timeout_sec=0.0)
    else:
        response = request(node, peer, fuzzed.message, fuzzed.describe())
        peer.outcomes[('query', fuzzed.must, response.success)] += 1
        wrong = check_reply(fuzzed, response.success, response.message)
        if wrong:
            problems.append(f'{fuzzed.describe()}: {wrong}')


def check_reply(fuzzed: Fuzzed, success: bool, message: str) -> str:
    """Return what is wrong with a reply (query response or Answer) to fuzzed, or ''."""
    if 'internal error' in message:
        return f'internal error reply: {message!r}'
    if not success and not message:
        return 'failed without saying why'
    if fuzzed.must == 'fail' and success:
        return 'succeeded, but the input is invalid'
    if fuzzed.must == 'succeed' and not success:
        return f'failed: {message!r}'
    return ''


def test_fuzzed_inputs_never_break_the_nodes(ros) -> None:
    node, peers = ros
    started = time.monotonic()
    problems: list[str] = []
    fuzzer = Fuzzer(SEED)
    for peer in peers.values():
        peer.new_log_errors()  # what was logged at start is not the fuzz's doing
    checkpoint(node, peers, 0, problems)  # every node has a frame before any query
    counts: Counter = Counter()
    for index in range(1, MESSAGES + 1):
        fuzzed = fuzzer.message(index)
        counts[(fuzzed.kind, fuzzed.target)] += 1
        send(node, peers[fuzzed.target], fuzzed, problems)
        for peer in peers.values():
            errors = peer.new_log_errors()
            if errors:
                recent = '; '.join(fuzzed.describe() for fuzzed in peer.recent[-3:])
                problems.append(f'{peer.name} node logged, after {recent}:\n  '
                                + '\n  '.join(errors))
        if index % CHECK_EVERY == 0:
            checkpoint(node, peers, index // CHECK_EVERY, problems)
    pause(node, 1.0)  # late replies and a fresh diagnostics report
    for peer in peers.values():
        for answer_id, question, success, error in peer.answers:
            fuzzed = peer.expected.get((answer_id, question))
            if fuzzed is None:
                problems.append(f'{peer.name} node: an Answer to no Question sent: '
                                f'{shorten(answer_id)} {shorten(question)}')
                continue
            peer.outcomes[('question', fuzzed.must, success)] += 1
            wrong = check_reply(fuzzed, success, error)
            if wrong:
                problems.append(f'{fuzzed.describe()}: Answer {wrong}')
        unknown = [d for d in peer.detections if d not in peer.headers]
        if unknown:
            problems.append(f'{peer.name} node: detections with a header of no image sent: '
                            f'{shorten(unknown, 300)}')
    diagnostics = {name: values for name, values in node.diagnostics.items()
                   if name.startswith(('/fuzz_raw/', '/fuzz_compressed/'))}
    for name, values in diagnostics.items():
        errors = {key: value for key, value in values.items() if key.startswith('errors:')}
        if errors:
            problems.append(f'{name} diagnostics count errors: {errors}')
    fuzzing_s = time.monotonic() - started
    print(f'\nfuzz seed {SEED}: {MESSAGES} messages in {fuzzing_s:.1f} s; by kind and node: '
          + ', '.join(f'{kind} -> {target}: {n}' for (kind, target), n in sorted(counts.items())))
    for peer in peers.values():
        print(f'{peer.name} node replies (kind, must, success): ' + ', '.join(
            f'{key}: {n}' for key, n in sorted(peer.outcomes.items(), key=str)))
    for name, values in sorted(diagnostics.items()):
        print(f'{name}: ' + ', '.join(f'{key} {value}' for key, value in sorted(values.items())
                                      if key.startswith(('rejected', 'dropped', 'errors'))))
    for peer in peers.values():  # as ChildProcess.stop_cleanly, with the problems reported
        assert peer.process.alive(), f'{peer.name} node died\n{peer.process.output()[-6000:]}'
        status, output = peer.process.stop()
        if status != 0 or 'Traceback' in output:
            problems.append(f'{peer.name} node: SIGINT gave exit status {status}\n'
                            f'{output[-6000:]}')
    assert not problems, f'fuzz seed {SEED}: {len(problems)} problems:\n' + '\n'.join(problems)
