"""A word-level tokenizer built in code for the lab's closed vocabulary.

Words keep their leading space (`" apples"`), every digit is its own token (so arithmetic is
learnable by a tiny model) and newlines are tokens. Decoding concatenates the pieces, so
`decode(encode(text)) == text` for any text made of known pieces. The tokenizer is a plain
`PreTrainedTokenizerFast`: it saves beside the model and `AutoTokenizer` (hence lm-eval) loads it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# One piece: a newline, an optional space then a run of letters, an optional space then one
# digit, an answer marker `####`, or an optional space then one other visible character.
PIECE_PATTERN = r"\n| ?[^\W\d_]+| ?\d| ?#{2,}| ?[^\s\w]| ?_"
_PIECE_RE = re.compile(PIECE_PATTERN)


def split_pieces(text: str) -> list[str]:
    """Split text exactly as the tokenizer's pre-tokenizer does (used to build the vocabulary)."""
    return _PIECE_RE.findall(text)


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Build the tokenizer whose vocabulary is every piece occurring in `texts`, each with and
    without its leading space (so a word is known wherever it stands in a sentence). Pieces are
    sorted, so the ids depend only on the set of pieces, not on the order of the texts."""
    found = {piece.lstrip(" ") for text in texts for piece in split_pieces(text)} - {"\n", ""}
    pieces = sorted(found | {" " + piece for piece in found} | {"\n"})
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
