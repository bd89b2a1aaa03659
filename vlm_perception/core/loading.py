"""
Where models come from: model ids, offline errors, and the local open_clip folder format.

A model id is one of:

* a local folder: a transformers ``save_pretrained`` folder, or an open_clip folder in open_clip's
  own hub layout (``open_clip_config.json`` + ``open_clip_model.safetensors`` + the HF tokenizer
  files, as written by ``save_open_clip_model`` or open_clip's ``push_to_hf_hub.save_for_hf``);
* a Hugging Face hub id (``google/owlvit-base-patch32``), found in the HF cache or downloaded;
* for open_clip, ``NAME:PRETRAINED`` (``ViT-B-32:laion2b_s34b_b79k``) or ``hf-hub:org/repo``.

Every failure to load becomes a ``ModelLoadError`` whose one-line message names the model and
says how to fetch it or where to point instead, except torch's out of memory, which goes through
unchanged (the engine makes it an ``OutOfMemory``: the model is fine, the device is full).

Progress bars (the hub's download bars, transformers' "Loading weights") are shown during a load
only where someone watches them: environment variable ``VLM_PERCEPTION_PROGRESS=1`` shows them,
``0`` hides them, and unset (or empty) shows them only when stderr is a terminal, so that logs,
pipes and tests get no bar lines. The launch file sets ``0`` (unless the variable is already set):
``ros2 launch`` gives the node a pseudo-terminal (emulate_tty) of no width, where each bar is an
empty ``[perception_node-1]`` line. ``HF_HUB_DISABLE_PROGRESS_BARS``, when set, is the hub's own
switch and wins. The bar state found before a load is restored after it.
"""

import contextlib
import copy
import json
import logging
import os
from pathlib import Path
import sys
from typing import Any, Iterator

from vlm_perception.core.errors import ModelLoadError

OPEN_CLIP_CONFIG = 'open_clip_config.json'
OPEN_CLIP_WEIGHTS = 'open_clip_model.safetensors'
OPEN_CLIP_TYPE = 'open_clip'
HF_HUB_PREFIX = 'hf-hub:'
PROGRESS_ENV = 'VLM_PERCEPTION_PROGRESS'


def local_folder(model_id: str) -> Path | None:
    """
    Return the folder a model id names, or None when it is a hub id / open_clip name.

    Raises ModelLoadError when the id is written as a path (absolute, ``./``, ``../``, ``~``)
    but no such folder exists.
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path.resolve()
    if model_id.startswith(('/', './', '../', '~', '.\\')) or path.is_file():
        raise ModelLoadError(f"model folder '{model_id}' does not exist (or is not a folder)")
    return None


def is_open_clip_id(model_id: str) -> bool:
    """Whether a model id names an open_clip model rather than a transformers one."""
    folder = local_folder(model_id)
    if folder is not None:
        return (folder / OPEN_CLIP_CONFIG).is_file()
    return ':' in model_id


def model_type(model_id: str) -> str:
    """Return the architecture key of a model id: ``open_clip`` or a transformers model_type."""
    if is_open_clip_id(model_id):
        return OPEN_CLIP_TYPE
    return load_hf_config(model_id).model_type


def _fetch_hint(model_id: str, hub_repo: str | None = None) -> str:
    repo = hub_repo or model_id
    return (f'fetch it on a machine with network (`hf download {repo}`, then copy the HF cache '
            f'{_hf_cache_dir()}), or pass a local folder instead')


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an error is torch's (CUDA) out of memory, which loads let through unchanged."""
    torch = sys.modules.get('torch')  # not imported yet: the error cannot be torch's
    return torch is not None and isinstance(error, torch.OutOfMemoryError)


def _is_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get('HF_HUB_OFFLINE', '').strip().lower() in ('1', 'true', 'yes', 'on')
    return flag or constants.HF_HUB_OFFLINE


def show_progress() -> bool:
    """Whether loads show progress bars: ``VLM_PERCEPTION_PROGRESS``, else stderr is a TTY."""
    value = os.environ.get(PROGRESS_ENV, '').strip().lower()
    if value:
        return value not in ('0', 'false', 'no', 'off')
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except ValueError:  # stderr closed
        return False


@contextlib.contextmanager
def progress_bars() -> Iterator[None]:
    """Show or hide the hub's and transformers' progress bars for one load (show_progress)."""
    from huggingface_hub import constants
    from huggingface_hub import utils as hub_utils

    if constants.HF_HUB_DISABLE_PROGRESS_BARS is not None:  # the user's explicit choice
        yield
        return
    # transformers keeps a flag of its own; only touch it once imported (not for open_clip)
    hf_logging = sys.modules.get('transformers.utils.logging')
    before = (not hub_utils.are_progress_bars_disabled(),
              hf_logging is not None and hf_logging.is_progress_bar_enabled())
    show = show_progress()
    _set_progress_bars(hub_utils, hf_logging, show, show)
    try:
        yield
    finally:
        _set_progress_bars(hub_utils, hf_logging, *before)


def _set_progress_bars(hub_utils: Any, hf_logging: Any, hub: bool, transformers: bool) -> None:
    if hf_logging is not None:  # this sets the hub's state too, hence the hub's after it
        (hf_logging.enable_progress_bar if transformers else hf_logging.disable_progress_bar)()
    (hub_utils.enable_progress_bars if hub else hub_utils.disable_progress_bars)()


@contextlib.contextmanager
def hf_load_errors(model_id: str, what: str) -> Iterator[None]:
    """Turn the errors of a transformers / hub load into one ModelLoadError line; bars as set."""
    try:
        with progress_bars():
            yield
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: B902 (hub, file, format and config errors alike)
        if is_out_of_memory(error):  # not the model's fault: the engine reports it as such
            raise
        if local_folder(model_id) is not None:
            raise ModelLoadError(
                f"cannot load {what} model from folder '{model_id}': {_first_line(error)}"
            ) from error
        where = 'offline mode (HF_HUB_OFFLINE=1)' if _is_offline() else 'the hub'
        raise ModelLoadError(
            f"cannot load {what} model '{model_id}': not in the Hugging Face cache and not "
            f'available from {where} ({_first_line(error)}); {_fetch_hint(model_id)}'
        ) from error


def load_hf_config(model_id: str, what: str = 'the') -> Any:
    """Load a transformers config (folder or hub id) or raise ModelLoadError."""
    from transformers import AutoConfig

    with hf_load_errors(model_id, what):
        return AutoConfig.from_pretrained(str(local_folder(model_id) or model_id))


def load_hf_model(model_class: Any, model_id: str, device: str, dtype: Any, what: str) -> Any:
    """
    Load a transformers model in eval mode on a device and dtype, or raise ModelLoadError.

    Attention is torch's scaled_dot_product_attention (``sdpa``) where the architecture has it;
    where it does not (BLIP, ViLT, Grounding DINO, OmDet-Turbo: a ValueError), the model's
    default, which still gives sdpa to the sub-models that have it.
    """
    source = str(local_folder(model_id) or model_id)
    with hf_load_errors(model_id, what):
        try:
            model = model_class.from_pretrained(source, dtype=dtype, attn_implementation='sdpa')
        except ValueError:  # no sdpa here; any other fault comes back from the plain load
            model = model_class.from_pretrained(source, dtype=dtype)
    return model.to(device).eval()


def load_hf_processor(model_id: str, what: str) -> Any:
    """Load the transformers processor (image processor + tokenizer) of a model."""
    from transformers import AutoProcessor

    with hf_load_errors(model_id, what):
        return AutoProcessor.from_pretrained(str(local_folder(model_id) or model_id))


class _DropOpenClipLogs(logging.Filter):
    """open_clip logs its load failures on the root logger; we raise them as one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 (logging's API name)
        return f'{os.sep}open_clip{os.sep}' not in record.pathname


def open_clip_source(model_id: str) -> tuple[str, str | None]:
    """Split an open_clip model id into open_clip's (model_name, pretrained) arguments."""
    folder = local_folder(model_id)
    if folder is not None:
        return f'local-dir:{folder}', None
    if model_id.startswith(HF_HUB_PREFIX):
        return model_id, None
    name, _, pretrained = model_id.partition(':')
    if not name or not pretrained:
        raise ModelLoadError(
            f"open_clip model '{model_id}' must be NAME:PRETRAINED (e.g. "
            'ViT-B-32:laion2b_s34b_b79k), hf-hub:org/repo, or a local folder')
    return name, pretrained


def load_open_clip(model_id: str, device: str, dtype: Any,
                   resize_mode: str | None = None) -> tuple[Any, Any, Any]:
    """
    Load an open_clip model: returns (model in eval mode, image preprocess, tokenizer).

    ``resize_mode`` (shortest, longest, squash) overrides how the preprocessing fits an image to
    the model's input (open_clip's ``image_resize_mode``); None keeps the model's own.
    """
    import open_clip

    name, pretrained = open_clip_source(model_id)
    log_filter = _DropOpenClipLogs()
    root = logging.getLogger()
    root.addFilter(log_filter)
    try:
        with progress_bars():
            model, preprocess = open_clip.create_model_from_pretrained(
                name, pretrained=pretrained, image_resize_mode=resize_mode)
            tokenizer = open_clip.get_tokenizer(name)
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: B902 (hub, file, format and config errors alike)
        if is_out_of_memory(error):
            raise
        hub_repo = None
        if pretrained is not None:
            tag = open_clip.get_pretrained_cfg(name, pretrained) or {}
            hub_repo = (tag.get('hf_hub') or '').rstrip('/') or None
        elif name.startswith(HF_HUB_PREFIX):
            hub_repo = name[len(HF_HUB_PREFIX):]
        if hub_repo is None and pretrained is not None:
            hint = (f'known tags for {name}: '
                    f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}")
        elif hub_repo is None:
            hint = f'check that the folder holds {OPEN_CLIP_CONFIG} and {OPEN_CLIP_WEIGHTS}'
        else:
            hint = _fetch_hint(model_id, hub_repo)
        raise ModelLoadError(
            f"cannot load open_clip model '{model_id}': {_first_line(error)}; {hint}") from error
    finally:
        root.removeFilter(log_filter)
    return model.to(device=device, dtype=dtype).eval(), preprocess, tokenizer


def save_open_clip_model(model: Any, model_cfg: dict, out_dir: str | os.PathLike,
                         tokenizer: Any = None, preprocess_cfg: dict | None = None) -> Path:
    """
    Write an open_clip model as a folder that ``load_open_clip`` (and open_clip) can read.

    The layout is open_clip's own hub layout: ``open_clip_config.json`` ({"model_cfg",
    "preprocess_cfg"}), ``open_clip_model.safetensors`` (the state dict), and, when a tokenizer is
    given (a transformers tokenizer or an open_clip ``HFTokenizer``), its files in the same folder;
    the config then names it in ``text_cfg.hf_tokenizer_name``, which makes open_clip load the
    tokenizer from the folder. Without a tokenizer, open_clip's default CLIP BPE tokenizer is used.
    ``preprocess_cfg`` (mean, std, interpolation, resize_mode) defaults to the one open_clip
    attached to the model when it created it, else to open_clip's defaults (OpenAI mean/std).
    """
    import dataclasses

    import safetensors.torch
    from open_clip.transform import PreprocessCfg

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model_cfg)
    if tokenizer is not None:
        hf_tokenizer = getattr(tokenizer, 'tokenizer', tokenizer)
        hf_tokenizer.save_pretrained(str(out))
        text_cfg = config.setdefault('text_cfg', {})
        text_cfg['hf_tokenizer_name'] = text_cfg.get('hf_tokenizer_name') or out.name
    preprocess = preprocess_cfg or getattr(model.visual, 'preprocess_cfg', None) or {}
    defaults = dataclasses.asdict(PreprocessCfg())
    preprocess = {key: list(value) if isinstance(value, tuple) else value
                  for key, value in {**defaults, **preprocess}.items()
                  if key in ('mean', 'std', 'interpolation', 'resize_mode')}
    with open(out / OPEN_CLIP_CONFIG, 'w', encoding='utf-8') as config_file:
        json.dump({'model_cfg': config, 'preprocess_cfg': preprocess}, config_file, indent=2)
    tensors = {key: value.detach().to('cpu').contiguous()
               for key, value in model.state_dict().items()}
    safetensors.torch.save_file(tensors, str(out / OPEN_CLIP_WEIGHTS))
    return out
