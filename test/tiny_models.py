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


# Grounding DINO splits its prompt into phrases at BERT's ids of [CLS], [SEP], '.' and '?' (fixed
# in the model), so its word-piece vocabulary keeps those ids; unused slots fill the rest.
BERT_IDS = {'[PAD]': 0, '[UNK]': 100, '[CLS]': 101, '[SEP]': 102, '[MASK]': 103, '.': 1012,
            '?': 1029}


def build_bert_tokenizer():
    """Return a BertTokenizer (uncased word pieces) over WORDS, with BERT's special token ids."""
    from transformers import BertTokenizer

    tokens = [f'[unused{index}]' for index in range(max(BERT_IDS.values()) + 1)]
    for token, index in BERT_IDS.items():
        tokens[index] = token
    tokens[104:104 + len(WORDS)] = WORDS
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)})


def build_grounding_dino(folder: Path, seed: int = SEED, max_text_len: int = 32,
                         mm: bool = False) -> Path:
    """
    Grounding DINO (MM Grounding DINO with ``mm``): a 4-stage ResNet, 1-layer BERT, 20 queries.

    ``max_text_len`` is the model's prompt limit in tokens (256 in the released models); the
    image processor resizes the shorter side to 64 (the longer to at most 96).
    """
    import torch
    import transformers
    from transformers import BertConfig, ResNetConfig

    prefix = 'MMGroundingDino' if mm else 'GroundingDino'
    torch.manual_seed(seed)
    tokenizer = build_bert_tokenizer()
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                            out_features=['stage2', 'stage3', 'stage4'])
    text = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=2 * max_text_len,
                      **_tower(num_hidden_layers=1))
    config = getattr(transformers, f'{prefix}Config')(
        backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
        text_config=text, max_text_len=max_text_len, num_queries=20, d_model=HIDDEN,
        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=2 * HIDDEN,
        decoder_ffn_dim=2 * HIDDEN, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_n_points=2, decoder_n_points=2, disable_custom_kernels=True)
    image_processor = transformers.GroundingDinoImageProcessor(
        size={'shortest_edge': IMAGE_SIZE, 'longest_edge': IMAGE_SIZE * 3 // 2})
    processor = transformers.GroundingDinoProcessor(image_processor=image_processor,
                                                    tokenizer=tokenizer)
    model = getattr(transformers, f'{prefix}ForObjectDetection')(config).eval()
    for module in model.modules():  # MM's heads start at a 1% prior; a random model scores 0..1
        if type(module).__name__.endswith('ContrastiveEmbedding') and hasattr(module, 'bias'):
            torch.nn.init.zeros_(module.bias)
    return _save(model, processor, folder)


OMDET_TEXT_LENGTH = 77  # OmDetTurboProcessor pads every text to 77 tokens, whatever the model


def _spread_omdet_heads(model, processor) -> None:
    """
    Spread a random OmDet-Turbo's scores over labels, and its boxes around their anchors.

    Its class logits are cosines: random class embeddings share one direction and so do the
    decoder's query features, so one label would win every query. The class heads get a bias
    cancelling the vocabulary's mean embedding, and the last one's output is made orthogonal to
    the mean query feature of a few random images; scores then spread around 0.5 per label.
    """
    import numpy as np
    import torch

    decoder = model.decoder
    with torch.no_grad():
        ids = processor.tokenizer(WORDS, padding='max_length', max_length=OMDET_TEXT_LENGTH,
                                  return_tensors='pt')['input_ids']
        mean = model.language_backbone(ids, encode_type='class').mean(dim=0)
        for head in (*decoder.decoder_class_head, decoder.encoder_class_head):
            head.bias.copy_(-(head.weight @ mean))
        images = list(np.random.default_rng(SEED).integers(0, 256, (4, 48, 80, 3), np.uint8))
        inputs = processor(images=images, text=[WORDS[:4]] * 4, return_tensors='pt')
        query = model(**inputs, output_hidden_states=True).decoder_hidden_states[-1]
        direction = torch.nn.functional.normalize(query.flatten(0, 1).mean(dim=0), dim=0)
        away = torch.eye(direction.shape[0]) - torch.outer(direction, direction)
        last = decoder.decoder_class_head[-1]
        last.weight.copy_(away @ last.weight)
        last.bias.copy_(away @ last.bias)
        for head in decoder.decoder_bbox_head:  # zero at init: boxes would be the anchors
            torch.nn.init.normal_(head.layers[-1].weight, std=0.3)
            # Larger boxes: neighbours overlap (NMS has work), many cross the image's border.
            head.layers[-1].bias.copy_(torch.tensor([0.0, 0.0, 2.0, 2.0]))


def build_omdet_turbo(folder: Path, seed: int = SEED) -> Path:
    """
    OmDet-Turbo: timm's test_convnext backbone (random), a 1-layer CLIP text tower, 20 queries.

    The image processor stretches the image to 64²; the three feature levels are 8², 4², 2².
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    dim = HIDDEN // 2  # encoder and decoder width; the text tower and class embeddings: HIDDEN
    text = transformers.CLIPTextConfig(max_position_embeddings=OMDET_TEXT_LENGTH,
                                       **_tower(num_hidden_layers=1), **_ids())
    # timm's test models are ~200k parameters; test_convnext's stages 1-3 give strides 8-32.
    backbone = transformers.TimmBackboneConfig(backbone='test_convnext', out_indices=[1, 2, 3])
    config = transformers.OmDetTurboConfig(
        backbone_config=backbone, text_config=text, image_size=IMAGE_SIZE,
        apply_layernorm_after_vision_backbone=False,  # its layer norms expect swin's NHWC maps
        encoder_in_channels=[32, 48, 64], text_projection_in_dim=HIDDEN,
        text_projection_out_dim=HIDDEN, class_embed_dim=HIDDEN, task_encoder_hidden_dim=2 * HIDDEN,
        num_queries=20, encoder_hidden_dim=dim, vision_features_channels=[dim] * 3,
        encoder_attention_heads=2, encoder_dim_feedforward=2 * dim, decoder_hidden_dim=dim,
        decoder_num_heads=2, decoder_num_layers=2, decoder_dim_feedforward=2 * dim,
        decoder_num_points=2, disable_custom_kernels=True)
    image_processor = transformers.DetrImageProcessor(
        size={'height': IMAGE_SIZE, 'width': IMAGE_SIZE})
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = OMDET_TEXT_LENGTH
    processor = transformers.OmDetTurboProcessor(image_processor=image_processor,
                                                 tokenizer=tokenizer)
    model = transformers.OmDetTurboForObjectDetection(config).eval()
    _spread_omdet_heads(model, processor)
    return _save(model, processor, folder)


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


# SigLIP pads every text to its full length (64 in the released models, and the length the
# zero-shot pipeline pads SigLIP to) and starts from temperature 10. Its released bias (-10)
# would put every random-weight score near 0, so the tiny models keep a bias of 0: mid-range
# scores, several over 0.5.
SIGLIP_TEXT_LENGTH = 64
SIGLIP_LOGIT_SCALE = 2.302585092994046  # log(10)
SIGLIP_LOGIT_BIAS = 0.0


def build_siglip2_tokenizer():
    """Return a Siglip2Tokenizer (Gemma-style BPE, lower-cased) over single characters."""
    import string

    from transformers import Siglip2Tokenizer

    tokens = ['<pad>', '<eos>', '<bos>', '<unk>', '<mask>'] + list(string.ascii_lowercase + '▁')
    return Siglip2Tokenizer(vocab={token: index for index, token in enumerate(tokens)},
                            merges=[], model_max_length=SIGLIP_TEXT_LENGTH)


def build_siglip(folder: Path, version: int = 1) -> Path:
    """
    Build a SigLIP (``version`` 2: SigLIP2) for tags: 64² input, patch 16, 64 text positions.

    SigLIP's tokenizer is word-level here, giving input ids only (as SentencePiece SigLIP does);
    SigLIP2 gets its own tokenizer class over characters and the NaFlex image processor, which
    cuts an image into at most 16 patches of 16² keeping its aspect ratio.
    """
    import torch
    import transformers

    torch.manual_seed(SEED)
    prefix = 'Siglip' if version == 1 else 'Siglip2'
    if version == 1:
        tokenizer = build_tokenizer()
        tokenizer.model_max_length = SIGLIP_TEXT_LENGTH
        tokenizer.model_input_names = ['input_ids']  # saved from init_kwargs:
        tokenizer.init_kwargs['model_input_names'] = tokenizer.model_input_names
        ids = _ids()
        vision = _tower(image_size=IMAGE_SIZE, patch_size=16)
        image_processor = transformers.SiglipImageProcessor(
            size={'height': IMAGE_SIZE, 'width': IMAGE_SIZE})
    else:
        tokenizer = build_siglip2_tokenizer()
        ids = {'vocab_size': len(tokenizer), 'pad_token_id': tokenizer.pad_token_id,
               'bos_token_id': tokenizer.bos_token_id, 'eos_token_id': tokenizer.eos_token_id}
        patches = (IMAGE_SIZE // 16) ** 2
        vision = _tower(num_patches=patches, patch_size=16)
        image_processor = transformers.Siglip2ImageProcessor(patch_size=16,
                                                             max_num_patches=patches)
    config = getattr(transformers, f'{prefix}Config')(
        text_config=_tower(max_position_embeddings=SIGLIP_TEXT_LENGTH, **ids),
        vision_config=vision)
    model = getattr(transformers, f'{prefix}Model')(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(SIGLIP_LOGIT_SCALE)
        model.logit_bias.fill_(SIGLIP_LOGIT_BIAS)
    processor = getattr(transformers, f'{prefix}Processor')(image_processor=image_processor,
                                                            tokenizer=tokenizer)
    return _save(model, processor, folder)


def build_siglip2(folder: Path) -> Path:
    """SigLIP2 (NaFlex image processor, its own tokenizer class); see build_siglip."""
    return build_siglip(folder, version=2)


def open_clip_siglip_config() -> dict:
    """open_clip config of a tiny SigLIP: as ViT-B-16-SigLIP, a logit bias and last-token text."""
    config = open_clip_config()
    config.update({'init_logit_scale': SIGLIP_LOGIT_SCALE, 'init_logit_bias': SIGLIP_LOGIT_BIAS,
                   'custom_text': True})
    config['text_cfg'].update({'context_length': SIGLIP_TEXT_LENGTH, 'no_causal_mask': True,
                               'pool_type': 'last', 'proj_bias': True,
                               'tokenizer_kwargs': {'clean': 'canonicalize'}})
    return config


def build_open_clip_siglip(folder: Path) -> Path:
    """Build an open_clip SigLIP (CustomTextCLIP with a logit_bias), mean and std 0.5."""
    import open_clip
    import torch

    from vlm_perception.core.loading import save_open_clip_model

    torch.manual_seed(SEED)
    config = open_clip_siglip_config()
    model = open_clip.CustomTextCLIP(**{key: value for key, value in config.items()
                                        if key != 'custom_text'}).eval()
    return save_open_clip_model(model, config, folder, tokenizer=build_tokenizer(),
                                preprocess_cfg={'mean': [0.5] * 3, 'std': [0.5] * 3})


# Generative VLMs (SmolVLM, Qwen2.5-VL) speak through a chat template: their tiny tokenizers add
# the template's words and the processor's image tokens, as special tokens, to the shared words.
CHAT_WORDS = ['user', 'assistant', 'system', ':', '.', '?', ',', 'describe', 'sentence',
              'you', 'helpful']
GENERATIVE_TEXT_LENGTH = 96  # positions of the tiny language models


def build_chat_tokenizer(special: list[str], eos: str, chat_template: str):
    """
    Return a word-level tokenizer for a generative VLM: no tokens added around the text.

    ``special`` are the model's control and image tokens (kept whole, skipped when decoding);
    ``eos`` is the one that ends an answer.
    """
    from tokenizers import AddedToken, normalizers, pre_tokenizers, Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tokens = SPECIAL_TOKENS + WORDS + CHAT_WORDS + special
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token='[UNK]'))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                  for token in special])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token='[PAD]', unk_token='[UNK]', bos_token='[BOS]',
        eos_token=eos, model_max_length=GENERATIVE_TEXT_LENGTH, chat_template=chat_template)


def _chat_ids(tokenizer, eos: str) -> dict:
    return {'vocab_size': len(tokenizer), 'pad_token_id': tokenizer.pad_token_id,
            'bos_token_id': tokenizer.bos_token_id,
            'eos_token_id': tokenizer.convert_tokens_to_ids(eos)}


def build_smolvlm(folder: Path, seed: int = SEED) -> Path:
    """
    SmolVLM: a 2-layer SigLIP-style vision tower (32² input, patch 8) and a 2-layer Llama.

    No image splitting: every frame is resized to 32² and becomes 4 image tokens (16 patches
    shuffled by 2). The chat template is SmolVLM's own.
    """
    import torch
    from transformers import (SmolVLMConfig, SmolVLMForConditionalGeneration,
                              SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor)
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    torch.manual_seed(seed)
    eos = '<end_of_utterance>'
    tokenizer = build_chat_tokenizer(
        ['<|im_start|>', eos, '<fake_token_around_image>', '<global-img>', '<image>',
         '<video>'], eos, DEFAULT_CHAT_TEMPLATE)
    ids = _chat_ids(tokenizer, eos)
    size, patch, scale = 32, 8, 2
    config = SmolVLMConfig(
        text_config={'model_type': 'llama', 'max_position_embeddings': GENERATIVE_TEXT_LENGTH,
                     'num_key_value_heads': 1, **_tower(), **ids},
        vision_config=_tower(image_size=size, patch_size=patch), scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids('<image>'), **ids)
    model = SmolVLMForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids['eos_token_id']
    model.generation_config.pad_token_id = ids['pad_token_id']
    edge = {'longest_edge': size}
    image_processor = SmolVLMImageProcessor(do_image_splitting=False, size=edge,
                                            max_image_size=edge)
    video_processor = SmolVLMVideoProcessor(size=edge, max_image_size=edge)
    processor = SmolVLMProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor,
                                 image_seq_len=(size // patch) ** 2 // scale ** 2,
                                 chat_template=DEFAULT_CHAT_TEMPLATE)
    return _save(model, processor, folder)


# Qwen2.5-VL's chat template (its system turn by default), less the vision ids option.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}'
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    '<|vision_start|><|image_pad|><|vision_end|>'
    "{% elif content['type'] == 'video' or 'video' in content %}"
    '<|vision_start|><|video_pad|><|vision_end|>'
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    '{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}')


def build_qwen2_5_vl(folder: Path, seed: int = SEED) -> Path:
    """
    Qwen2.5-VL: a 2-layer windowed ViT (patch 8, 2×2 merge) and a 2-layer Qwen2 with M-RoPE.

    Frames are resized to at most 32² pixels keeping their aspect ratio (multiples of 16): at
    most 4 image tokens, their count depending on the frame's shape.
    """
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    torch.manual_seed(seed)
    eos = '<|im_end|>'
    tokenizer = build_chat_tokenizer(
        ['<|endoftext|>', '<|im_start|>', eos, '<|vision_start|>', '<|vision_end|>',
         '<|image_pad|>', '<|video_pad|>'], eos, QWEN_CHAT_TEMPLATE)
    ids = _chat_ids(tokenizer, eos)
    patch, merge = 8, 2
    text = {'hidden_size': HIDDEN, 'intermediate_size': 2 * HIDDEN, 'num_hidden_layers': 2,
            'num_attention_heads': 2, 'num_key_value_heads': 1,
            'max_position_embeddings': GENERATIVE_TEXT_LENGTH,
            'rope_parameters': {'rope_type': 'default', 'rope_theta': 10000.0,
                                'mrope_section': [2, 3, 3]}, **ids}
    vision = {'depth': 2, 'hidden_size': HIDDEN, 'intermediate_size': 2 * HIDDEN, 'num_heads': 2,
              'patch_size': patch, 'spatial_merge_size': merge, 'temporal_patch_size': 2,
              'window_size': patch * merge * 2, 'fullatt_block_indexes': [1],
              'out_hidden_size': HIDDEN}
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids('<|image_pad|>'),
        video_token_id=tokenizer.convert_tokens_to_ids('<|video_pad|>'),
        vision_start_token_id=tokenizer.convert_tokens_to_ids('<|vision_start|>'),
        vision_end_token_id=tokenizer.convert_tokens_to_ids('<|vision_end|>'))
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids['eos_token_id']
    model.generation_config.pad_token_id = ids['pad_token_id']
    pixels = {'patch_size': patch, 'merge_size': merge, 'temporal_patch_size': 2,
              'size': {'shortest_edge': 16 * 16, 'longest_edge': 32 * 32}}
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels),
                                    tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(**pixels),
                                    chat_template=QWEN_CHAT_TEMPLATE)
    return _save(model, processor, folder)


def build_sam(folder: Path, seed: int = SEED) -> Path:
    """
    SAM: a 2-layer ViT (64² input, patch 8: an 8×8 embedding of 16 channels), 2-layer decoder.

    The image processor resizes the longest side to 64 and pads to 64²; the decoder's logits are
    32², post-processed to the image's size.
    """
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(seed)
    patch, channels = 8, HIDDEN // 2
    vision = {**_tower(), 'image_size': IMAGE_SIZE, 'patch_size': patch,
              'output_channels': channels, 'window_size': 4, 'global_attn_indexes': [1],
              'mlp_dim': 2 * HIDDEN, 'num_pos_feats': channels // 2}
    prompt = {'hidden_size': channels, 'image_size': IMAGE_SIZE, 'patch_size': patch,
              'mask_input_channels': 4}
    decoder = {'hidden_size': channels, 'num_hidden_layers': 2, 'num_attention_heads': 2,
               'mlp_dim': 2 * channels, 'iou_head_hidden_dim': channels}
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                       mask_decoder_config=decoder)
    mask_edge = IMAGE_SIZE // 4
    image_processor = SamImageProcessor(
        size={'longest_edge': IMAGE_SIZE}, pad_size={'height': IMAGE_SIZE, 'width': IMAGE_SIZE},
        mask_size={'longest_edge': mask_edge},
        mask_pad_size={'height': mask_edge, 'width': mask_edge})
    return _save(SamModel(config).eval(), SamProcessor(image_processor=image_processor), folder)


def build_sam2(folder: Path, seed: int = SEED) -> Path:
    """
    SAM2: a 4-stage Hiera (64² input; 16², 8², 4² feature maps), FPN width 16, 2-layer decoder.

    The image processor stretches the image to 64²; the decoder's logits are 16².
    """
    import torch
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    torch.manual_seed(seed)
    channels = HIDDEN // 2
    # A stage's first block pools its queries, so the global-attention block is not one.
    backbone = {'model_type': 'sam2_hiera_det_model', 'hidden_size': 8,
                'image_size': [IMAGE_SIZE, IMAGE_SIZE], 'blocks_per_stage': [1, 1, 2, 1],
                'embed_dim_per_stage': [8, 16, 32, 64],
                'num_attention_heads_per_stage': [1, 1, 2, 2],
                'window_size_per_stage': [4, 2, 2, 2], 'global_attention_blocks': [3],
                'window_positional_embedding_background_size': [2, 2]}
    vision = {'backbone_config': backbone, 'backbone_channel_list': [64, 32, 16, 8],
              'backbone_feature_sizes': [[16, 16], [8, 8], [4, 4]], 'fpn_hidden_size': channels}
    prompt = {'hidden_size': channels, 'image_size': IMAGE_SIZE, 'patch_size': 16,
              'mask_input_channels': 4}
    decoder = {'hidden_size': channels, 'mlp_dim': 2 * channels, 'num_hidden_layers': 2,
               'num_attention_heads': 2, 'iou_head_hidden_dim': channels}
    config = Sam2Config(vision_config=vision, prompt_encoder_config=prompt,
                        mask_decoder_config=decoder)
    image_processor = Sam2ImageProcessor(size={'height': IMAGE_SIZE, 'width': IMAGE_SIZE},
                                         mask_size={'height': 16, 'width': 16})
    processor = Sam2Processor(image_processor=image_processor, target_size=IMAGE_SIZE)
    return _save(Sam2Model(config).eval(), processor, folder)


BUILDERS = {
    'detector': build_owlvit,
    'detector_v2': build_owlv2,
    'classifier': build_open_clip,
    'classifier_siglip': build_open_clip_siglip,
    'tagger_siglip': build_siglip,
    'tagger_siglip2': build_siglip2,
    'vqa_vilt': build_vilt,
    'vqa_blip': build_blip_vqa,
    'captioner': build_blip_captioner,
    'grounding_dino': build_grounding_dino,
    'segmenter': build_sam,
    'segmenter_sam2': build_sam2,
}
# Built by the tests that use them, not by build_tiny_models (each takes a few seconds).
GENERATIVE_BUILDERS = {'smolvlm': build_smolvlm, 'qwen2_5_vl': build_qwen2_5_vl}
OTHER_BUILDERS = {'omdet_turbo': build_omdet_turbo}  # likewise


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
    members = {'detector': 'detector', 'tagger': 'classifier', 'vqa': 'vqa_blip',
               'captioner': 'captioner', 'segmenter': 'segmenter'}  # slot -> tiny model
    for slot, key in members.items():
        shutil.copytree(models[key], preset / slot, dirs_exist_ok=True)
    spec = {'detector': 'detector', 'tagger': 'tagger', 'vqa': 'vqa',
            'captioner': 'captioner', 'segmenter': 'segmenter', 'labels': TINY_LABELS,
            'detection_threshold': 0.0}
    (preset / 'preset.json').write_text(json.dumps(spec, indent=2))
    return preset


if __name__ == '__main__':
    # python test/tiny_models.py FAMILY OUT: build one tiny model into the folder OUT; FAMILY is
    # a BUILDERS key, '-' standing for '_' (grounding-dino).
    import sys

    builders = {**BUILDERS, **GENERATIVE_BUILDERS, **OTHER_BUILDERS}
    if len(sys.argv) != 3 or sys.argv[1].replace('-', '_') not in builders:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(builders)}}} OUT")
    print(builders[sys.argv[1].replace('-', '_')](Path(sys.argv[2])))
