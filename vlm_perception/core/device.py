"""Device and dtype choice: ``auto`` picks CUDA when present, fp16 on CUDA and fp32 on CPU."""

import re
from typing import Any

from vlm_perception.core.errors import InputError

DTYPES = ('auto', 'fp32', 'fp16', 'bf16')
_DEVICE_PATTERN = re.compile(r'^(auto|cpu|cuda(:\d+)?)$')


def resolve_device(device: str = 'auto') -> str:
    """Return a concrete torch device ('cpu', 'cuda:0', ...) for auto|cpu|cuda|cuda:N."""
    import torch

    name = (device or 'auto').strip().lower()
    if not _DEVICE_PATTERN.match(name):
        raise InputError(f"device '{device}' is not one of auto, cpu, cuda, cuda:N")
    if name == 'auto':
        return 'cuda:0' if torch.cuda.is_available() else 'cpu'
    if name == 'cpu':
        return 'cpu'
    if not torch.cuda.is_available():
        raise InputError(f"device '{device}' asked for, but CUDA is not available here")
    index = int(name.partition(':')[2] or 0)
    if index >= torch.cuda.device_count():
        raise InputError(
            f"device '{device}' asked for, but only {torch.cuda.device_count()} CUDA "
            'device(s) exist')
    return f'cuda:{index}'


def resolve_dtype(dtype: str = 'auto', device: str = 'cpu') -> str:
    """Return 'fp32', 'fp16' or 'bf16'; 'auto' is fp16 on CUDA and fp32 on CPU."""
    name = (dtype or 'auto').strip().lower()
    if name not in DTYPES:
        raise InputError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    if name == 'auto':
        return 'fp16' if device.startswith('cuda') else 'fp32'
    return name


def torch_dtype(dtype: str) -> Any:
    """Map 'fp32' | 'fp16' | 'bf16' to the torch dtype."""
    import torch

    return {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[dtype]
