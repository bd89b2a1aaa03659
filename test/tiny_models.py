"""
Tiny, randomly initialised models of every real architecture the core supports, saved locally.

Each builder writes a folder in the same format a real model has (``save_pretrained`` for
transformers, open_clip's hub layout for open_clip), so tests load them through the public loading
path a real model id takes. Weights are random: tests check plumbing, shapes and geometry, not
answers. Builds take a few seconds on one CPU thread.
"""

import json
from pathlib import Path

# Word-level vocabulary shared by all tiny models. OWL-ViT and open_clip pool the text at the
# highest token id, so the end token is last; padding is id 0 and the start token is non-zero.
SPECIAL_TOKENS = ['[PAD]', '[UNK]', '[BOS]']
WORDS = ('a an the of photo picture image is are there what which how many colour color '
         'shape where on in left right yes no one two three four red green blue yellow '
         'circle square triangle cup person dog cat chair table bottle car book phone '
         'laptop bag plant door window floor wall'.split())
END_TOKEN = '[EOS]'
TEXT_LENGTH = 16
IMAGE_SIZE = 64
HIDDEN = 32
SEED = 0


def _vocab() -> dict[str, int]:
    tokens = SPECIAL_TOKENS + WORDS + [END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def build_tokenizer():
    """Return a word-level PreTrainedTokenizerFast that adds [BOS] ... [EOS] around text."""
    from tokenizers import normalizers, pre_tokenizers, processors, Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = _vocab()
    tokenizer = Tokenizer(WordLevel(vocab, unk_token='[UNK]'))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f'[BOS] $A {END_TOKEN}',
        special_tokens=[('[BOS]', vocab['[BOS]']), (END_TOKEN, vocab[END_TOKEN])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token='[PAD]', unk_token='[UNK]', bos_token='[BOS]',
        eos_token=END_TOKEN, sep_token=END_TOKEN, cls_token='[BOS]',
        model_max_length=TEXT_LENGTH)


def _ids() -> dict[str, int]:
    vocab = _vocab()
    return {'vocab_size': len(vocab), 'pad_token_id': vocab['[PAD]'],
            'bos_token_id': vocab['[BOS]'], 'eos_token_id': vocab[END_TOKEN]}


def _tower(**extra) -> dict:
    tower = {'hidden_size': HIDDEN, 'intermediate_size': 2 * HIDDEN, 'num_hidden_layers': 2,
             'num_attention_heads': 2}
    tower.update(extra)
    return tower


def _save(model, processor, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def _calm_detection_heads(model) -> None:
    """Give the class and box heads small weights, so boxes start at each patch's default box."""
    import torch

    for head in (model.class_head, model.box_head):
        for layer in head.modules():
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=0.02)
                torch.nn.init.zeros_(layer.bias)
    torch.nn.init.zeros_(model.box_head.dense2.weight)


def _build_owl(folder: Path, version: str, seed: int = SEED) -> Path:
    """OWL detector: 64² input, patch 16 (a 4×4 grid); `version` is 'ViT' or 'v2'."""
    import torch
    import transformers

    def part(kind: str):
        return getattr(transformers, f'Owl{version}{kind}')

    torch.manual_seed(seed)
    ids = _ids()
    config = part('Config')(
        text_config=_tower(max_position_embeddings=TEXT_LENGTH, **ids),
        vision_config=_tower(image_size=IMAGE_SIZE, patch_size=16),
        projection_dim=HIDDEN)
    size = {'height': IMAGE_SIZE, 'width': IMAGE_SIZE}
    # OWL-ViT's processor stretches the image to a square, OWLv2's pads it.
    image_processor = (part('ImageProcessor')(size=size, crop_size=size) if version == 'ViT'
                       else part('ImageProcessor')(size=size))
    processor = part('Processor')(image_processor=image_processor, tokenizer=build_tokenizer())
    model = part('ForObjectDetection')(config).eval()
    _calm_detection_heads(model)
    return _save(model, processor, folder)


def build_owlvit(folder: Path, seed: int = SEED) -> Path:
    """OWL-ViT detector with the stretching image processor (other seeds: other weights)."""
    return _build_owl(folder, 'ViT', seed)


def build_owlv2(folder: Path) -> Path:
    """OWLv2 detector with the padding image processor."""
    return _build_owl(folder, 'v2')


def build_vilt(folder: Path) -> Path:
    """Build a ViLT VQA model: patch 32, shorter side resized to 64, a few answers."""
    import torch
    from transformers import (ViltConfig, ViltForQuestionAnswering, ViltImageProcessor,
                              ViltProcessor)

    torch.manual_seed(SEED)
    answers = ['yes', 'no', 'red', 'green', 'blue', 'two']
    ids = _ids()
    config = ViltConfig(
        vocab_size=ids['vocab_size'], pad_token_id=ids['pad_token_id'],
        max_position_embeddings=TEXT_LENGTH * 2, image_size=IMAGE_SIZE, patch_size=32,
        num_images=1, max_image_length=-1,
        id2label=dict(enumerate(answers)), label2id={a: i for i, a in enumerate(answers)},
        **_tower())
    image_processor = ViltImageProcessor(size={'shortest_edge': IMAGE_SIZE}, size_divisor=32)
    processor = ViltProcessor(image_processor=image_processor, tokenizer=build_tokenizer())
    return _save(ViltForQuestionAnswering(config).eval(), processor, folder)


def _blip_config():
    from transformers import BlipConfig

    ids = _ids()
    text = _tower(max_position_embeddings=TEXT_LENGTH * 4, sep_token_id=ids['eos_token_id'],
                  **ids)
    vision = _tower(image_size=IMAGE_SIZE, patch_size=16, initializer_range=0.02)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=HIDDEN)


def _blip_processor():
    from transformers import BlipImageProcessor, BlipProcessor

    image_processor = BlipImageProcessor(size={'height': IMAGE_SIZE, 'width': IMAGE_SIZE})
    return BlipProcessor(image_processor=image_processor, tokenizer=build_tokenizer())


def build_blip_vqa(folder: Path) -> Path:
    """BLIP VQA: vision encoder, question encoder and answer decoder, 2 layers each."""
    import torch
    from transformers import BlipForQuestionAnswering

    torch.manual_seed(SEED)
    return _save(BlipForQuestionAnswering(_blip_config()).eval(), _blip_processor(), folder)


def build_blip_captioner(folder: Path) -> Path:
    """BLIP captioning: vision encoder and text decoder, 2 layers each."""
    import torch
    from transformers import BlipForConditionalGeneration

    torch.manual_seed(SEED)
    return _save(BlipForConditionalGeneration(_blip_config()).eval(), _blip_processor(), folder)


def open_clip_config() -> dict:
    """open_clip model config of the tiny CLIP (ViT, 64² input, patch 16, word-level text)."""
    return {
        'embed_dim': HIDDEN,
        'vision_cfg': {'image_size': IMAGE_SIZE, 'layers': 2, 'width': HIDDEN, 'head_width': 16,
                       'patch_size': 16},
        'text_cfg': {'context_length': TEXT_LENGTH, 'vocab_size': _ids()['vocab_size'],
                     'width': HIDDEN, 'heads': 2, 'layers': 2},
    }


def build_open_clip(folder: Path) -> Path:
    """Build an open_clip CLIP from a small custom config, written with save_open_clip_model."""
    import open_clip
    import torch

    from vlm_perception.core.loading import save_open_clip_model

    torch.manual_seed(SEED)
    config = open_clip_config()
    model = open_clip.CLIP(**config).eval()
    return save_open_clip_model(model, config, folder, tokenizer=build_tokenizer())


BUILDERS = {
    'detector': build_owlvit,
    'detector_v2': build_owlv2,
    'classifier': build_open_clip,
    'vqa_vilt': build_vilt,
    'vqa_blip': build_blip_vqa,
    'captioner': build_blip_captioner,
}


def build_tiny_models(root: Path) -> dict[str, Path]:
    """Build every tiny model under root; keys as in BUILDERS (detector, classifier, ...)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {key: build(Path(root) / key) for key, build in BUILDERS.items()}
    finally:
        torch.set_num_threads(threads)


TINY_LABELS = ['cup', 'person', 'dog', 'chair', 'bottle']


def build_tiny_preset(root: Path, models: dict[str, Path] | None = None) -> Path:
    """Build a directory preset (preset.json + member folders) made of the tiny models."""
    import shutil

    root = Path(root)
    models = models or build_tiny_models(root / 'models')
    preset = root / 'tiny_preset'
    preset.mkdir(parents=True, exist_ok=True)
    members = {'detector': 'detector', 'classifier': 'classifier', 'vqa': 'vqa_blip',
               'captioner': 'captioner'}
    for role, key in members.items():
        shutil.copytree(models[key], preset / role, dirs_exist_ok=True)
    spec = {'detector': 'detector', 'classifier': 'classifier', 'vqa': 'vqa',
            'captioner': 'captioner', 'labels': TINY_LABELS, 'detection_threshold': 0.0}
    (preset / 'preset.json').write_text(json.dumps(spec, indent=2))
    return preset
