"""
The word-level tokenizer shared by all shapes-world models, built locally.

One vocabulary serves CLIP, OWL-ViT and BLIP: BERT-style specials with ``[PAD]`` at id 0 (the
OWL-ViT query mask is ``input_ids[..., 0] > 0``) and ``[SEP]`` as the highest id (CLIP-style
text towers pool at the highest id, so the end token must hold it). ``[DEC]`` starts BLIP's
decoder. Every sequence is ``[CLS] words [SEP]``.
"""

from tokenizers import decoders, normalizers, pre_tokenizers, processors, Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from vlm_perception.shapes.world import COLOURS, SHAPES

PAD, UNK, CLS, MASK, DEC, SEP = '[PAD]', '[UNK]', '[CLS]', '[MASK]', '[DEC]', '[SEP]'

# Words of names, captions, questions and answers, plus a few a user may type.
_WORDS = sorted({
    *COLOURS, *SHAPES, *(f'{shape}s' for shape in SHAPES),
    'a', 'an', 'and', ',', '.', '?', 'the', 'is', 'are', 'there', 'what', 'color', 'colour',
    'shape', 'object', 'objects', 'how', 'many', 'yes', 'no', '0', '1', '2', '3', '4',
    'of', 'photo', 'picture', 'image', 'thing', 'things', 'in', 'on', 'with',
})
VOCAB: tuple[str, ...] = (PAD, UNK, CLS, MASK, DEC, *_WORDS, SEP)
MAX_LENGTH = 16


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the fast tokenizer: lower-cased words and punctuation, ``[CLS] ... [SEP]``."""
    ids = {token: index for index, token in enumerate(VOCAB)}
    core = Tokenizer(WordLevel(ids, unk_token=UNK))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single=f'{CLS} $A {SEP}', pair=f'{CLS} $A {SEP} $B {SEP}',
        special_tokens=[(CLS, ids[CLS]), (SEP, ids[SEP])])
    core.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, unk_token=UNK, cls_token=CLS, sep_token=SEP,
        mask_token=MASK, bos_token=DEC, eos_token=SEP, model_max_length=MAX_LENGTH,
        padding_side='right')
