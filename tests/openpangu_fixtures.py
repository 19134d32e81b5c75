"""Shared pieces of the openPangu tests: a small SentencePiece tokenizer trained on the spot, written as the released
folder holds it (`tokenizer.model` + `tokenizer_config.json` with the special tokens in `added_tokens_decoder`)."""

from __future__ import annotations

import io
import json

import pytest

spm = pytest.importorskip("sentencepiece")

UNUSED = [f"[unused{i}]" for i in range(11)]
TEXTS = ["今天天气很好，我们去公园散步吧。", "The quick brown fox jumps over the lazy dog.", "你好，世界！Hello world.",
         "机器学习是人工智能的一个分支。", "用户问了一个问题，助手回答了。", "系统提示：请简洁地回答。"] * 20


def write_tokenizer(directory, specials_in_model: bool):
    """tokenizer.model + tokenizer_config.json; returns {special: id}. With `specials_in_model` the [unusedN]
    pieces are user-defined SentencePiece symbols (ids 3..13); otherwise they are added tokens past its vocabulary."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS), model_writer=model, vocab_size=200, model_type="bpe", character_coverage=1.0,
        hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        user_defined_symbols=UNUSED if specials_in_model else [], minloglevel=2)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    size = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model")).get_piece_size()
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}
    if specials_in_model:
        specials.update({piece: 3 + i for i, piece in enumerate(UNUSED)})
    else:  # scattered past the SentencePiece vocabulary, as the released ids are scattered
        specials.update({piece: size + 7 * i + 2 for i, piece in enumerate(UNUSED)})
    specials["<|User|>:"] = size + 100
    decoder = {str(i): {"content": piece, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True} for piece, i in specials.items()}
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder, "bos_token": "<s>",
        "eos_token": "[unused10]", "pad_token": "<unk>", "unk_token": "<unk>", "tokenizer_class": "PanguTokenizer",
        "legacy": True}, ensure_ascii=False))
    return specials
