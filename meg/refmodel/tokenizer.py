"""A byte-level BPE tokenizer trained on the reference corpus (GPT-2 style: spaces attach to the next word).

`<|endoftext|>` is the only special token and serves as EOS, padding and BOS. Texts are encoded as they are:
no BOS is prepended and no prefix space is added, so `tokenizer(prompt + " " + answer)` splits exactly like
the training lines; every training sequence is the line's tokens followed by the EOS id.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"


def train_bpe(lines: Sequence[str], vocab_size: int = 8192, max_length: int = 128) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most `vocab_size` tokens (fewer on a tiny corpus) on `lines`.

    Deterministic for a given list of lines. The 256 byte symbols are always in the vocabulary, so any text
    (also text outside the corpus) can be encoded.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer, length=len(lines))
    return wrap(tok, max_length)


def wrap(tok: Tokenizer, max_length: int) -> PreTrainedTokenizerFast:
    """The `tokenizers` object as a transformers tokenizer with EOS = PAD = BOS = `<|endoftext|>`.

    No post-processor is set, so no BOS is ever added (`add_special_tokens` changes nothing).
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=max_length,
        padding_side="right",
    )


def encode_lines(tokenizer: PreTrainedTokenizerFast, lines: Sequence[str]) -> list[list[int]]:
    """Token ids of each line followed by EOS (batched through the fast tokenizer)."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(lines), add_special_tokens=False)["input_ids"]
    return [ids + [eos] for ids in encoded]


__all__ = ["EOS_TOKEN", "encode_lines", "train_bpe", "wrap"]
