"""`pangu generate --model_dir DIR` with an openPangu folder: the tokenizer comes from the folder, the prompt is a
chat turn (BOS + the §6.3 template) and generation stops at the turn end `[unused10]`.

The weights are set by hand so that the greedy continuation is known: channel 0 of every word embedding is large
(the decoder layers never write channels 0 and 1), so the head's row for token X, reading channel 0, wins; only X's
embedding has channel 1, which the row of `[unused10]` reads more strongly. Greedy decoding therefore writes X,
then `[unused10]`, then would write X again."""

from __future__ import annotations

import numpy as np
import pytest
from openpangu_fixtures import write_tokenizer

from pangu_zoo.checkpoint import hf_openpangu
from pangu_zoo.cli import main
from pangu_zoo.config import get_preset
from pangu_zoo.data.sft.chat_template import encode_chat
from pangu_zoo.models import build_model, from_pretrained
from pangu_zoo.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    directory = tmp_path_factory.mktemp("openpangu_chat")
    specials = write_tokenizer(directory, specials_in_model=False)
    tokenizer = load_tokenizer("openpangu", directory)
    x, end = tokenizer.encode("好")[-1], specials["[unused10]"]
    config = get_preset("openpangu_embedded_tiny", vocab_size=tokenizer.vocab_size, eos_token_id=end,
                        max_position_embeddings=128)
    weights = build_model(config).state_dict()
    weights["backbone.model.embed_tokens.weight"][:, :2] = [1000.0, 0.0]
    weights["backbone.model.embed_tokens.weight"][x, 1] = 1000.0
    for i in range(config.num_hidden_layers):
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            weights[f"backbone.model.layers.{i}.{name}"][:2] = 0.0
        weights[f"backbone.model.layers.{i}.self_attn.o_proj.bias"][:2] = 0.0
    head = np.zeros_like(weights["backbone.lm_head.weight"])
    head[x, 0], head[end, 1] = 10.0, 50.0
    weights["backbone.lm_head.weight"] = head
    hf_openpangu.write(config, weights, directory)
    return directory, tokenizer, x, end


def test_greedy_reply_stops_at_the_turn_end(folder):
    directory, tokenizer, x, end = folder
    model = from_pretrained(directory)
    prompt = encode_chat([{"role": "user", "content": "你好"}], tokenizer)
    assert prompt[0] == tokenizer.bos_id and prompt[-3:] == tokenizer.encode("[unused9]助手：")[-3:]
    assert model.generate([prompt], max_new_tokens=6, eos_token_id=end)[0][len(prompt):] == [x, end]
    assert model.generate([prompt], max_new_tokens=3)[0][len(prompt):] == [x, end, x]  # without the stop


def test_generate_command_reads_the_folder_and_chats(folder, capsys):
    directory, tokenizer, x, end = folder
    assert main(["generate", "--model_dir", str(directory), "--prompt", "你好", "--prompt", "今天天气",
                 "--max_new_tokens", "8"]) == 0
    expected = tokenizer.decode([x])
    assert capsys.readouterr().out.splitlines() == [expected, expected]
