"""openPangu's tokenizer and chat template.

A small SentencePiece model is trained here; its tokenizer_config.json lists the special tokens as the released one
does (`added_tokens_decoder`), either as user-defined SentencePiece symbols at their SentencePiece ids or as added
tokens past the SentencePiece vocabulary. The reference is transformers' own Python tokenizer
(`PreTrainedTokenizer`, which splits on added tokens before calling SentencePiece), over the same model and
added tokens, as the released tokenizer is built. The chat template is checked against hand-written renderings
of formats.md §6.3.
"""

from __future__ import annotations

import pytest
from openpangu_fixtures import write_tokenizer

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

from pangu_zoo.data.sft.chat_template import encode_chat, render_chat  # noqa: E402
from pangu_zoo.errors import DataError, InputError  # noqa: E402
from pangu_zoo.tokenizers import load_tokenizer, tokenizer_kind_for  # noqa: E402
from pangu_zoo.tokenizers.special import default_end_tokens, output_text  # noqa: E402


def reference(directory, specials):
    """transformers' Python tokenizer over the same SentencePiece model and added tokens."""

    class SentencePieceTokenizer(transformers.PreTrainedTokenizer):
        def __init__(self, **kwargs):
            self.sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
            super().__init__(**kwargs)

        @property
        def vocab_size(self):
            return self.sp.get_piece_size()

        def get_vocab(self):
            return {**{self.sp.id_to_piece(i): i for i in range(self.vocab_size)}, **self.added_tokens_encoder}

        def _tokenize(self, text):
            return self.sp.encode(text, out_type=str)

        def _convert_token_to_id(self, token):
            return self.sp.piece_to_id(token)

        def _convert_id_to_token(self, index):
            return self.sp.id_to_piece(index)

        def build_inputs_with_special_tokens(self, ids, pair=None):
            return [self.bos_token_id] + ids + (pair or [])

    added = {i: transformers.AddedToken(piece, special=True, normalized=False) for piece, i in specials.items()}
    return SentencePieceTokenizer(bos_token="<s>", eos_token="[unused10]", unk_token="<unk>", pad_token="<unk>",
                                  added_tokens_decoder=added)


CONVERSATIONS = [
    # hand-written renderings of formats.md §6.3: every turn [unused9]ROLE：content[unused10]
    ([{"role": "user", "content": "你好"}], True,
     "[unused9]系统：[unused10][unused9]用户：你好[unused10][unused9]助手："),
    ([{"role": "system", "content": "请简洁地回答。"}, {"role": "user", "content": "今天天气怎么样？"},
      {"role": "assistant", "content": "很好。"}], False,
     "[unused9]系统：请简洁地回答。[unused10][unused9]用户：今天天气怎么样？[unused10][unused9]助手：很好。[unused10]"),
    ([{"role": "user", "content": "查一下天气"}, {"role": "assistant", "content": "调用工具"},
      {"role": "tool", "content": "晴"}, {"role": "assistant", "content": "晴天"}], True,
     "[unused9]系统：[unused10][unused9]用户：查一下天气[unused10][unused9]助手：调用工具[unused10]"
     "[unused9]工具：晴[unused10][unused9]助手：晴天[unused10][unused9]助手："),
    ([{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}], False,
     "[unused9]系统：[unused10][unused9]用户：Hi[unused10]"),
]


@pytest.mark.parametrize("messages,prompt,expected", CONVERSATIONS)
def test_chat_template_renders_as_released(messages, prompt, expected):
    assert render_chat(messages, add_generation_prompt=prompt) == expected


@pytest.mark.parametrize("specials_in_model", [True, False])
def test_encoding_matches_transformers_and_specials_are_single_ids(tmp_path, specials_in_model):
    specials = write_tokenizer(tmp_path, specials_in_model)
    ours, ref = load_tokenizer("openpangu", tmp_path), reference(tmp_path, specials)
    texts = [expected for _, _, expected in CONVERSATIONS] + [
        "你好<|User|>:世界[unused3][unused3]and then[unused10]", "no specials here", "[unused10]"]
    for text in texts:
        ids = ours.encode(text)
        assert ids == ref(text, add_special_tokens=False)["input_ids"], text
        assert [ours.bos_id] + ids == ref(text)["input_ids"]
    chat = ours.encode(CONVERSATIONS[0][2])
    start, end = specials["[unused9]"], specials["[unused10]"]
    assert chat[0] == start and chat.count(start) == 3 and chat.count(end) == 2 and chat[chat.index(end) - 1] != end
    assert ours.token_to_id("[unused9]") == start and ours.eot_id == end and ours.pad_id == 0 and ours.bos_id == 1
    assert ours.vocab_size == max(specials.values()) + 1


def test_decode_gives_the_text_back_and_output_hides_specials(tmp_path):
    write_tokenizer(tmp_path, specials_in_model=False)
    tokenizer = load_tokenizer("openpangu", tmp_path)
    text = "[unused9]系统：请简洁地回答。[unused10][unused9]用户：今天天气很好[unused10]"  # characters it learnt
    assert tokenizer.decode(tokenizer.encode(text)) == text.replace("：", ":")  # SentencePiece's NFKC
    assert output_text(tokenizer, tokenizer.encode("[unused9]你好[unused10]")) == "你好"
    assert default_end_tokens(tokenizer) == (tokenizer.eot_id,)


def test_generation_prompt_starts_with_bos_and_uses_the_markers(tmp_path):
    specials = write_tokenizer(tmp_path, specials_in_model=False)
    tokenizer = load_tokenizer("openpangu", tmp_path)
    ids = encode_chat([{"role": "user", "content": "你好"}], tokenizer)
    assert ids[0] == 1 and ids[1] == specials["[unused9]"]
    assert ids[-len(tokenizer.encode("[unused9]助手：")):] == tokenizer.encode("[unused9]助手：")


def test_the_family_picks_this_tokenizer_and_missing_files_are_named(tmp_path):
    from pangu_zoo.config import get_preset

    assert tokenizer_kind_for(get_preset("openpangu_embedded_tiny")) == "openpangu"
    with pytest.raises(DataError, match="tokenizer.model"):
        load_tokenizer("openpangu", tmp_path)
    write_tokenizer(tmp_path, specials_in_model=True)
    with pytest.raises(InputError, match="not in the vocabulary"):
        load_tokenizer("openpangu", tmp_path).token_to_id("[unused99]")
