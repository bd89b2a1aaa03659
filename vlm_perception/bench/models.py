"""
Real-size models with random weights, built offline once into ``~/.cache/vlm_perception/bench``.

Each has the real widths, depths, input sizes and sequence lengths of a hub model (the
transformers and open_clip default configs, with the few values where the hub model differs)
and a tokenizer made here; only the weights are random. Folders are written under a
``.partial`` name and renamed when complete, so an interrupted build is rebuilt.

Every builder takes ``config`` and ``processor`` overrides (merged into the model config and the
image processor's arguments, sub-configs key by key): the tests build tiny variants through the
same code. A build with overrides is cached under its name plus a digest of them, so a variant
never stands in for the real size. Image processors follow the config's input size, so a config
override alone keeps the two consistent.
"""

import hashlib
import json
from pathlib import Path
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

CACHE = Path('~/.cache/vlm_perception/bench').expanduser()
COMPLETE = 'bench_model_complete'
WORDS = ('a an the of photo picture image is are there what which how many colour color shape '
         'where on in left right yes no one two three four red green blue yellow circle square '
         'triangle cup person dog cat chair table bottle car book phone laptop bag plant door '
         'window floor wall kitchen office street').split()
# Words of the chat prompts and templates (generative VLMs), for the word-level tokenizers.
CHAT_WORDS = ['user', 'assistant', 'system', ':', '.', '?', ',', 'describe', 'in', 'sentence',
              'you', 'helpful', 'open']
SEED = 0
Overrides = Mapping[str, Any]


def merged(base: Mapping[str, Any], overrides: Overrides | None) -> dict[str, Any]:
    """Return base updated by overrides; a mapping in both (a sub-config) is merged key by key."""
    result = dict(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def _bytes_to_unicode() -> list[str]:
    """Return the byte alphabet of CLIP, in its order (the first 256 ids of its vocabulary)."""
    printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
                 + list(range(ord('®'), ord('ÿ') + 1)))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def clip_tokenizer(words: Sequence[str], vocab_size: int = 49408, max_length: int = 16) -> Any:
    """
    Return a CLIPTokenizer made here: CLIP's byte alphabet, merges that make each word one token.

    Its ids fill vocab_size with <|startoftext|> and <|endoftext|> last (OWL-ViT pools the text
    at the highest id), padding is '!' (id 0), as in OWL-ViT's own tokenizer.
    """
    from transformers import CLIPTokenizer

    alphabet = _bytes_to_unicode()
    tokens = alphabet + [char + '</w>' for char in alphabet]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(part for text in words for part in text.lower().split()):
        parts = list(word[:-1]) + [word[-1] + '</w>']
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            if ''.join(pair) not in known:
                tokens.append(''.join(pair))
                known.add(''.join(pair))
            parts = [''.join(pair)] + parts[2:]
    _check_vocab(vocab_size, len(tokens) + 2)
    tokens += [f'<|unused{i}|>' for i in range(vocab_size - 2 - len(tokens))]
    tokens += ['<|startoftext|>', '<|endoftext|>']
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=merges,
                         pad_token='!', model_max_length=max_length)


def _check_vocab(vocab_size: int, needed: int) -> None:
    if vocab_size < needed:
        raise ValueError(f'vocab_size {vocab_size} is too small: the tokenizer holds {needed}')


# The ids bert-base-uncased gives these tokens; Grounding DINO splits its prompt into phrases
# at the ids of [CLS], [SEP], '.' and '?', fixed in the model. WORDS follow [MASK].
BERT_IDS = {'[PAD]': 0, '[UNK]': 100, '[CLS]': 101, '[SEP]': 102, '[MASK]': 103, '.': 1012,
            '?': 1029}


def bert_tokenizer(folder: Path, vocab_size: int, max_length: int) -> Any:
    """Return a BertTokenizerFast over BERT_IDS at their ids, WORDS and unused filler ids."""
    from transformers import BertTokenizerFast

    start = BERT_IDS['[MASK]'] + 1
    _check_vocab(vocab_size, max(BERT_IDS.values()) + 1)
    tokens = [f'[unused{i}]' for i in range(vocab_size)]
    for token, index in BERT_IDS.items():
        tokens[index] = token
    tokens[start:start + len(WORDS)] = WORDS
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / 'bench_vocab.txt'
    vocab.write_text('\n'.join(tokens) + '\n')
    return BertTokenizerFast(vocab_file=str(vocab), model_max_length=max_length)


def word_tokenizer(vocab_size: int, max_length: int, special: Sequence[str],
                   end: str | None = None, **tokens: Any) -> Any:
    """
    Return a word-level PreTrainedTokenizerFast: ``special``, WORDS, CHAT_WORDS, unused filler.

    Text is lower-cased and split at whitespace and punctuation; the special tokens (control and
    image tokens, listed first) are kept whole. With ``end`` each text ends with that token (as
    SigLIP's '</s>'); otherwise nothing is added around the text (a chat template's job).
    ``tokens``: the tokenizer's named tokens (``unk_token`` one of ``special``), chat_template...
    """
    from tokenizers import AddedToken, normalizers, pre_tokenizers, processors, Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys([*special, *WORDS, *CHAT_WORDS]))
    _check_vocab(vocab_size, len(words))
    words += [f'<unused{i}>' for i in range(vocab_size - len(words))]
    vocab = {word: index for index, word in enumerate(words)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=tokens['unk_token']))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                  for token in special])
    if end is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f'$A {end}', special_tokens=[(end, vocab[end])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=max_length,
                                   **tokens)


def cached(name: str, build: Callable[[Path], None], cache: Path = CACHE,
           variant: Sequence[Overrides | None] = ()) -> Path:
    """
    Return cache/name, built by build(folder) once (atomically: .partial, then renamed).

    ``variant``: the builder's overrides; when any is given the folder is name-<their digest>.
    """
    if any(variant):
        digest = hashlib.sha256(json.dumps(list(variant), sort_keys=True, default=str)
                                .encode()).hexdigest()[:10]
        name = f'{name}-{digest}'
    folder = cache / name
    if (folder / COMPLETE).is_file():
        return folder
    import torch

    print(f'building a random {name} into {folder} (once)', flush=True)
    start = time.monotonic()
    partial = folder.with_name(folder.name + '.partial')
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.manual_seed(SEED)
    build(partial)
    (partial / COMPLETE).write_text(f'random weights, torch seed {SEED}\n')
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    print(f'built in {time.monotonic() - start:.0f} s', flush=True)
    return folder


def _save(folder: Path, model: Any, processor: Any) -> None:
    model.eval().save_pretrained(str(folder))
    processor.save_pretrained(str(folder))


def _square(side: int) -> dict[str, int]:
    return {'height': side, 'width': side}


# What the hub models' configs set beyond transformers' defaults, per OWL version.
OWL_CONFIGS: dict[str, dict[str, Any]] = {
    'ViT': {},                                   # google/owlvit-base-patch32: B/32 at 768
    'v2': {'vision_config': {'image_size': 960}},  # google/owlv2-base-patch16-ensemble: B/16
}


def _owl(version: str, labels: Sequence[str], config: Overrides | None,
         processor: Overrides | None) -> Callable[[Path], None]:
    """Return the build of an OWL detector: ``version`` 'ViT' (stretches) or 'v2' (pads)."""
    def build(folder: Path) -> None:
        import transformers

        def part(kind: str) -> Any:
            return getattr(transformers, f'Owl{version}{kind}')

        model_config = part('Config')(**merged(OWL_CONFIGS[version], config))
        size = _square(model_config.vision_config.image_size)
        fitting = {'size': size, **({'crop_size': size} if version == 'ViT' else {})}
        text = model_config.text_config
        model = part('ForObjectDetection')(model_config)
        _calm_owl_heads(model)
        _save(folder, model, part('Processor')(
            image_processor=part('ImageProcessor')(**merged(fitting, processor)),
            tokenizer=clip_tokenizer([*labels, *WORDS], text.vocab_size,
                                     text.max_position_embeddings)))

    return build


# Random detection heads collapse: every OWL patch gets about the same box (duplicate
# suppression leaves a handful), and OWL's and Grounding DINO's scores saturate at 0 or 1
# (thousands tie at 1.0), so no threshold lets the bench's ~10 boxes through. The builds calm
# the heads' inputs or last layers, as a trained model behaves: boxes around each patch or
# query, scores spread below 1. The computation per frame is the same.

def _calm_owl_heads(model: Any) -> None:
    """Zero OWL's last box layer and logit shift/scale: grid-cell boxes, sigmoid(cosine) scores."""
    import torch

    for layer in (model.box_head.dense2, model.class_head.logit_shift,
                  model.class_head.logit_scale):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)


def _calm_grounding_heads(model: Any) -> None:
    """Scale the decoder output norm Grounding DINO's heads read to unit size (logits ~ 1)."""
    import torch

    norm = model.model.decoder.layer_norm
    with torch.no_grad():
        norm.weight.mul_(norm.weight.shape[0] ** -0.5)


def build_owlvit_b32(cache: Path = CACHE, labels: Sequence[str] = (),
                     config: Overrides | None = None,
                     processor: Overrides | None = None) -> Path:
    """OWL-ViT B/32 at 768 px (OwlViTConfig() is google/owlvit-base-patch32's architecture)."""
    return cached('owlvit-b32-random-768', _owl('ViT', labels, config, processor), cache,
                  (config, processor))


def build_owlv2_b16(cache: Path = CACHE, labels: Sequence[str] = (),
                    config: Overrides | None = None,
                    processor: Overrides | None = None) -> Path:
    """OWLv2 B/16 at 960 px (google/owlv2-base-patch16-ensemble's architecture)."""
    return cached('owlv2-b16-random-960', _owl('v2', labels, config, processor), cache,
                  (config, processor))


def build_open_clip_b32(cache: Path = CACHE, config: Overrides | None = None) -> Path:
    """open_clip ViT-B-32 at 224 px (the architecture of ViT-B-32:laion2b_s34b_b79k)."""
    def build(folder: Path) -> None:
        import open_clip

        from vlm_perception.core.loading import save_open_clip_model

        model_config = merged(open_clip.get_model_config('ViT-B-32'), config)
        changed = {key: model_config[key] for key in config or {}}  # open_clip updates these
        model = open_clip.create_model('ViT-B-32', pretrained=None, **changed)
        save_open_clip_model(model, model_config, folder)

    return cached('open-clip-vit-b-32-random', build, cache, (config,))


def _blip(model_class: str, config: Overrides | None,
          processor: Overrides | None) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        import transformers
        from transformers import BlipConfig, BlipImageProcessor, BlipProcessor

        # Salesforce/blip-*-base: ViT-B/16 at 384 px, BERT-base text
        model_config = BlipConfig(**merged({}, config))
        text = model_config.text_config
        size = _square(model_config.vision_config.image_size)
        _save(folder, getattr(transformers, model_class)(model_config), BlipProcessor(
            image_processor=BlipImageProcessor(**merged({'size': size}, processor)),
            tokenizer=bert_tokenizer(folder, text.vocab_size, text.max_position_embeddings)))

    return build


def build_blip_vqa(cache: Path = CACHE, config: Overrides | None = None,
                   processor: Overrides | None = None) -> Path:
    """BLIP-base VQA (Salesforce/blip-vqa-base's architecture)."""
    return cached('blip-vqa-base-random', _blip('BlipForQuestionAnswering', config, processor),
                  cache, (config, processor))


def build_blip_captioner(cache: Path = CACHE, config: Overrides | None = None,
                         processor: Overrides | None = None) -> Path:
    """BLIP-base captioning (Salesforce/blip-image-captioning-base's architecture)."""
    return cached('blip-captioning-base-random', _blip('BlipForConditionalGeneration', config,
                                                       processor), cache, (config, processor))


VILT_ANSWERS = 3129  # dandelin/vilt-b32-finetuned-vqa's answer vocabulary


def build_vilt_b32(cache: Path = CACHE, config: Overrides | None = None,
                   processor: Overrides | None = None) -> Path:
    """ViLT-B/32 VQA with its 3,129 answers (dandelin/vilt-b32-finetuned-vqa's architecture)."""
    def build(folder: Path) -> None:
        from transformers import (ViltConfig, ViltForQuestionAnswering, ViltImageProcessor,
                                  ViltProcessor)

        answers = {'id2label': {i: f'answer {i}' for i in range(VILT_ANSWERS)},
                   'label2id': {f'answer {i}': i for i in range(VILT_ANSWERS)}}
        model_config = ViltConfig(**merged(answers, config))
        tokenizer = bert_tokenizer(folder, model_config.vocab_size,
                                   model_config.max_position_embeddings)
        fitting = {'size': {'shortest_edge': model_config.image_size}}
        _save(folder, ViltForQuestionAnswering(model_config), ViltProcessor(
            image_processor=ViltImageProcessor(**merged(fitting, processor)),
            tokenizer=tokenizer))

    return cached('vilt-b32-vqa-random', build, cache, (config, processor))


def build_grounding_dino_t(cache: Path = CACHE, config: Overrides | None = None,
                           processor: Overrides | None = None) -> Path:
    """
    Grounding DINO-T (IDEA-Research/grounding-dino-tiny's architecture: GroundingDinoConfig()).

    Swin-T backbone, BERT-base text (prompts of at most 256 tokens), 900 queries; the image
    processor resizes the short side to 800 (the long one to at most 1333).
    """
    def build(folder: Path) -> None:
        from transformers import (GroundingDinoConfig, GroundingDinoForObjectDetection,
                                  GroundingDinoImageProcessor, GroundingDinoProcessor)

        model_config = GroundingDinoConfig(**merged({}, config))
        tokenizer = bert_tokenizer(folder, model_config.text_config.vocab_size,
                                   model_config.max_text_len)
        model = GroundingDinoForObjectDetection(model_config)
        _calm_grounding_heads(model)
        _save(folder, model, GroundingDinoProcessor(
            image_processor=GroundingDinoImageProcessor(**merged({}, processor)),
            tokenizer=tokenizer))

    return cached('grounding-dino-tiny-random', build, cache, (config, processor))


def build_siglip_b16(cache: Path = CACHE, config: Overrides | None = None,
                     processor: Overrides | None = None) -> Path:
    """
    Build transformers' SigLIP B/16 at 224 px (google/siglip-base-patch16-224: SiglipConfig()).

    Its tokenizer is word-level here, giving input ids only and ending each text with '</s>', as
    SigLIP's SentencePiece one does; labels are padded to the text model's 64 positions.
    """
    def build(folder: Path) -> None:
        from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

        # special tokens come first, so these are their ids (SiglipTextConfig's are CLIP's)
        ids = {'pad_token_id': 0, 'bos_token_id': None, 'eos_token_id': 1}
        model_config = SiglipConfig(**merged({'text_config': ids}, config))
        text = model_config.text_config
        tokenizer = word_tokenizer(text.vocab_size, text.max_position_embeddings,
                                   ['<pad>', '</s>', '<unk>'], end='</s>', pad_token='<pad>',
                                   eos_token='</s>', unk_token='<unk>',
                                   model_input_names=['input_ids'])
        size = _square(model_config.vision_config.image_size)
        _save(folder, SiglipModel(model_config), SiglipProcessor(
            image_processor=SiglipImageProcessor(**merged({'size': size}, processor)),
            tokenizer=tokenizer))

    return cached('siglip-base-patch16-224-random', build, cache, (config, processor))


# SmolVLM-256M (HuggingFaceTB/SmolVLM2-256M-Video-Instruct, the SmolVLM-256M architecture in
# SmolVLM2's model_type): a SigLIP B/16 at 512 px, a 4x pixel shuffle (64 tokens per 512 px
# tile), SmolLM2-135M (30 layers of 576, 9 heads over 3 key-value heads, untied head).
SMOLVLM_256M = {
    'vision_config': {'hidden_size': 768, 'intermediate_size': 3072, 'num_hidden_layers': 12,
                      'num_attention_heads': 12, 'image_size': 512, 'patch_size': 16},
    'text_config': {'model_type': 'llama', 'vocab_size': 49280, 'hidden_size': 576,
                    'intermediate_size': 1536, 'num_hidden_layers': 30,
                    'num_attention_heads': 9, 'num_key_value_heads': 3,
                    'max_position_embeddings': 8192, 'rms_norm_eps': 1e-5,
                    'rope_parameters': {'rope_type': 'default', 'rope_theta': 100000.0},
                    'tie_word_embeddings': False},
    'scale_factor': 4,
}
SMOLVLM_TILES = 4  # its processor resizes the long side to 4 tiles (2048 px), then splits


def build_smolvlm_256m(cache: Path = CACHE, config: Overrides | None = None,
                       processor: Overrides | None = None) -> Path:
    """
    SmolVLM-256M (SMOLVLM_256M) with its processor: a frame becomes up to 4x4 tiles + 1.

    The tokenizer is word-level with SmolVLM's control and image tokens; the chat template is
    SmolVLM's own.
    """
    def build(folder: Path) -> None:
        from transformers import (SmolVLMConfig, SmolVLMForConditionalGeneration,
                                  SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor)
        from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

        sizes = merged(SMOLVLM_256M, config)
        tiles = [f'<row_{row}_col_{column}>' for row in range(1, SMOLVLM_TILES + 1)
                 for column in range(1, SMOLVLM_TILES + 1)]
        eos = '<end_of_utterance>'
        tokenizer = word_tokenizer(
            sizes['text_config']['vocab_size'], sizes['text_config']['max_position_embeddings'],
            ['<|endoftext|>', '<|im_start|>', '<|im_end|>', eos, '<fake_token_around_image>',
             '<global-img>', '<image>', '<video>', *tiles], unk_token='<|endoftext|>',
            bos_token='<|im_start|>', eos_token=eos, pad_token='<|im_end|>',
            chat_template=DEFAULT_CHAT_TEMPLATE)
        ids = {'pad_token_id': tokenizer.pad_token_id, 'bos_token_id': tokenizer.bos_token_id,
               'eos_token_id': tokenizer.eos_token_id}
        model_config = SmolVLMConfig(**merged(sizes, {
            'text_config': ids, 'image_token_id': tokenizer.convert_tokens_to_ids('<image>'),
            **ids}))
        model = SmolVLMForConditionalGeneration(model_config)
        model.generation_config.eos_token_id = ids['eos_token_id']
        model.generation_config.pad_token_id = ids['pad_token_id']
        vision = model_config.vision_config
        tile = {'longest_edge': vision.image_size}
        fitting = {'do_image_splitting': True, 'max_image_size': tile,
                   'size': {'longest_edge': SMOLVLM_TILES * vision.image_size}}
        tokens_per_tile = (vision.image_size // vision.patch_size) ** 2 \
            // model_config.scale_factor ** 2
        _save(folder, model, SmolVLMProcessor(
            image_processor=SmolVLMImageProcessor(**merged(fitting, processor)),
            tokenizer=tokenizer, video_processor=SmolVLMVideoProcessor(size=tile,
                                                                       max_image_size=tile),
            image_seq_len=tokens_per_tile, chat_template=DEFAULT_CHAT_TEMPLATE))

    return cached('smolvlm-256m-random', build, cache, (config, processor))


def build_sam_b(cache: Path = CACHE, config: Overrides | None = None,
                processor: Overrides | None = None) -> Path:
    """
    SAM ViT-B (facebook/sam-vit-base's architecture: SamConfig()), 1024 px input.

    The image processor resizes the long side to the input and pads to a square; masks come out
    at a quarter of it (256 px) before post-processing.
    """
    def build(folder: Path) -> None:
        from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

        model_config = SamConfig(**merged({}, config))
        side = model_config.vision_config.image_size
        fitting = {'size': {'longest_edge': side}, 'pad_size': _square(side),
                   'mask_size': {'longest_edge': side // 4}, 'mask_pad_size': _square(side // 4)}
        _save(folder, SamModel(model_config), SamProcessor(
            image_processor=SamImageProcessor(**merged(fitting, processor))))

    return cached('sam-vit-base-random', build, cache, (config, processor))
