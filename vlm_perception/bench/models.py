"""
Real-size models with random weights, built offline once into ``~/.cache/vlm_perception/bench``.

Each has the real widths, depths, input sizes and sequence lengths of a default hub model (the
transformers and open_clip default configs are those models' architectures) and a tokenizer made
here; only the weights are random. Folders are written under a ``.partial`` name and renamed
when complete, so an interrupted build is rebuilt.
"""

from pathlib import Path
import shutil
import time
from typing import Any, Callable, Sequence

CACHE = Path('~/.cache/vlm_perception/bench').expanduser()
COMPLETE = 'bench_model_complete'
WORDS = ('a an the of photo picture image is are there what which how many colour color shape '
         'where on in left right yes no one two three four red green blue yellow circle square '
         'triangle cup person dog cat chair table bottle car book phone laptop bag plant door '
         'window floor wall kitchen office street').split()
SEED = 0


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
    tokens += [f'<|unused{i}|>' for i in range(vocab_size - 2 - len(tokens))]
    tokens += ['<|startoftext|>', '<|endoftext|>']
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=merges,
                         pad_token='!', model_max_length=max_length)


def bert_tokenizer(folder: Path, vocab_size: int, max_length: int) -> Any:
    """Return a BertTokenizerFast over BERT's special tokens, WORDS and unused filler ids."""
    from transformers import BertTokenizerFast

    special = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    filler = [f'[unused{i}]' for i in range(vocab_size - len(special) - len(WORDS))]
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / 'bench_vocab.txt'
    vocab.write_text('\n'.join(special + WORDS + filler) + '\n')
    return BertTokenizerFast(vocab_file=str(vocab), model_max_length=max_length)


def cached(name: str, build: Callable[[Path], None], cache: Path = CACHE) -> Path:
    """Return cache/name, built by build(folder) once (atomically: .partial, then renamed)."""
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


def build_owlvit_b32(cache: Path = CACHE, labels: Sequence[str] = ()) -> Path:
    """OWL-ViT B/32 at 768 px (OwlViTConfig() is google/owlvit-base-patch32's architecture)."""
    def build(folder: Path) -> None:
        from transformers import (OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor,
                                  OwlViTProcessor)

        config = OwlViTConfig()
        processor = OwlViTProcessor(
            image_processor=OwlViTImageProcessor(),
            tokenizer=clip_tokenizer([*labels, *WORDS], config.text_config.vocab_size,
                                     config.text_config.max_position_embeddings))
        OwlViTForObjectDetection(config).eval().save_pretrained(str(folder))
        processor.save_pretrained(str(folder))

    return cached('owlvit-b32-random-768', build, cache)


def build_open_clip_b32(cache: Path = CACHE) -> Path:
    """open_clip ViT-B-32 at 224 px (the architecture of ViT-B-32:laion2b_s34b_b79k)."""
    def build(folder: Path) -> None:
        import open_clip

        from vlm_perception.core.loading import save_open_clip_model

        model = open_clip.create_model('ViT-B-32', pretrained=None)
        save_open_clip_model(model, open_clip.get_model_config('ViT-B-32'), folder)

    return cached('open-clip-vit-b-32-random', build, cache)


def _blip(folder: Path, model_class: str) -> None:
    import transformers
    from transformers import BlipConfig, BlipImageProcessor, BlipProcessor

    config = BlipConfig()  # Salesforce/blip-*-base: ViT-B/16 at 384 px, BERT-base text
    tokenizer = bert_tokenizer(folder, config.text_config.vocab_size,
                               config.text_config.max_position_embeddings)
    processor = BlipProcessor(image_processor=BlipImageProcessor(), tokenizer=tokenizer)
    getattr(transformers, model_class)(config).eval().save_pretrained(str(folder))
    processor.save_pretrained(str(folder))


def build_blip_vqa(cache: Path = CACHE) -> Path:
    """BLIP-base VQA (Salesforce/blip-vqa-base's architecture)."""
    return cached('blip-vqa-base-random', lambda folder: _blip(
        folder, 'BlipForQuestionAnswering'), cache)


def build_blip_captioner(cache: Path = CACHE) -> Path:
    """BLIP-base captioning (Salesforce/blip-image-captioning-base's architecture)."""
    return cached('blip-captioning-base-random', lambda folder: _blip(
        folder, 'BlipForConditionalGeneration'), cache)


def build_vilt_b32(cache: Path = CACHE) -> Path:
    """ViLT-B/32 VQA with its 3,129 answers (dandelin/vilt-b32-finetuned-vqa's architecture)."""
    def build(folder: Path) -> None:
        from transformers import (ViltConfig, ViltForQuestionAnswering, ViltImageProcessor,
                                  ViltProcessor)

        answers = 3129
        config = ViltConfig(num_labels=answers, id2label={i: f'answer {i}' for i in
                                                          range(answers)},
                            label2id={f'answer {i}': i for i in range(answers)})
        tokenizer = bert_tokenizer(folder, config.vocab_size, config.max_position_embeddings)
        processor = ViltProcessor(image_processor=ViltImageProcessor(), tokenizer=tokenizer)
        ViltForQuestionAnswering(config).eval().save_pretrained(str(folder))
        processor.save_pretrained(str(folder))

    return cached('vilt-b32-vqa-random', build, cache)
