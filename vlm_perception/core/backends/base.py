"""What every backend shares: identity, device, dtype and image preprocessing helpers."""

from typing import Any

from vlm_perception.core.device import torch_dtype
from vlm_perception.core.errors import InputError, ModelLoadError
from vlm_perception.core.frame import RGBImage, to_tensor
from vlm_perception.core.loading import load_hf_config
from vlm_perception.core.options import ModelOptions


class Backend:
    """
    One loaded model serving one capability.

    ``encode_image`` holds the image-only part of the model; the engine stores its result on the
    Frame so that every request on that frame with this model reuses it. ``tensor_device`` says
    how it takes the frame: None, as the HxWx3 array; a device, as the frame's 3xHxW uint8 tensor
    there (Frame.tensor: one upload for every model on that device).
    """

    capability = ''
    tensor_device: str | None = None

    def __init__(self, model_id: str, device: str, dtype: str,
                 options: ModelOptions | None = None) -> None:
        """Record where the model comes from, where it runs and how; subclasses load it."""
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.torch_dtype = torch_dtype(dtype)
        self.options = options or ModelOptions()  # the engine's, replaced when they change

    @property
    def key(self) -> str:
        """Identity of the model in caches."""
        return f'{type(self).__name__}:{self.model_id}:{self.device}:{self.dtype}'

    def encode_image(self, image: RGBImage) -> Any:
        """Run the image-only part of the model on an HxWx3 array or a 3xHxW tensor (uint8 RGB)."""
        raise NotImplementedError

    def compile_modules(self) -> dict[str, Any]:
        """
        Return the torch modules worth torch.compile (EngineConfig.compile), by name.

        Those run per frame or request; by default the whole ``model`` where it is a module.
        """
        import torch

        model = getattr(self, 'model', None)
        return {'model': model} if isinstance(model, torch.nn.Module) else {}


class HFBackend(Backend):
    """A transformers model plus its processor (image processor and tokenizer)."""

    model_class_name = ''

    def __init__(self, model_id: str, device: str, dtype: str,
                 options: ModelOptions | None = None) -> None:
        """Load the model class named by ``model_class_name`` and the model's processor."""
        import transformers

        from vlm_perception.core.loading import load_hf_model, load_hf_processor

        super().__init__(model_id, device, dtype, options)
        what = f'{self.capability} ({self.model_class_name})'
        config = load_hf_config(model_id, what)
        architectures = getattr(config, 'architectures', None) or []
        if architectures and self.model_class_name not in architectures:
            raise ModelLoadError(
                f"model '{model_id}' is a {', '.join(architectures)}, not the "
                f'{self.model_class_name} that {self.capability} needs')
        self.config = config
        self.model = load_hf_model(getattr(transformers, self.model_class_name), model_id,
                                   device, self.torch_dtype, what)
        self.processor = load_hf_processor(model_id, what)
        self.tokenizer = getattr(self.processor, 'tokenizer', None)  # none for SAM's
        self.tensor_device = device  # the processors resize and normalise on the model's device

    def compile_modules(self) -> dict[str, Any]:
        """Return the image encoder (transformers' ``get_encoder('image')``), else the model."""
        encoder = self.model.get_encoder(modality='image')
        return {'model' if encoder is self.model else type(encoder).__name__: encoder}

    def device_images(self, image: RGBImage | list[RGBImage]) -> Any:
        """Return an image, or a list of them, as 3xHxW uint8 tensors on the model's device."""
        if isinstance(image, list):
            return [to_tensor(each, self.device) for each in image]
        return to_tensor(image, self.device)

    def pixels(self, image: RGBImage | list[RGBImage]) -> dict:
        """
        Run the image processor on the model's device; returns its tensors there, in its dtype.

        ``image``: an HxWx3 array, a 3xHxW tensor (Frame.tensor, already there), or a list of
        them (one batch). The processors (transformers' torchvision ones) give the same values
        for the tensor as for the array.
        """
        inputs = self.processor.image_processor(
            images=self.device_images(image), input_data_format='channels_first',
            device=self.device, return_tensors='pt')
        return {name: value.to(self.device, self.torch_dtype) if value.is_floating_point()
                else value.to(self.device) for name, value in inputs.items()}

    def tokens(self, texts: list[str], **kwargs: Any) -> dict:
        """Tokenize texts; returns input_ids and attention_mask on the model's device."""
        encoded = self.tokenizer(texts, return_tensors='pt', **kwargs)
        return {'input_ids': encoded['input_ids'].to(self.device),
                'attention_mask': encoded['attention_mask'].to(self.device)}

    def limited_tokens(self, texts: list[str], what: str, limit: int, **kwargs: Any) -> dict:
        """
        Tokenize questions or prompts as ``tokens`` does, refusing any of more than ``limit``.

        Tokens are counted with the tokenizer's special tokens, as the model gets them. Past its
        position table a model fails deep inside (BLIP) or its text is cut silently (ViLT), so
        the refusal comes first, as an InputError naming the counts. Several texts are padded
        to the longest (``padding`` may say otherwise).
        """
        if len(texts) > 1:
            kwargs.setdefault('padding', True)
        inputs = self.tokens(texts, **kwargs)
        for count in inputs['attention_mask'].sum(dim=1).tolist():  # padding adds none
            if count > limit:
                raise InputError(f'{what} too long: {count} tokens, {self.model_id} takes at '
                                 f'most {limit}')
        return inputs
