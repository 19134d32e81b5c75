"""WikiText perplexity: a GPT-2 loaded from a Hugging Face directory gives transformers' numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import shared_data

from pangu_zoo.cli import main
from pangu_zoo.errors import InputError
from pangu_zoo.evaluation.perplexity import block_perplexity, wikitext_token_blocks

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 50257


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4,
                                     initializer_range=0.3)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_gpt2_ppl")
    hf_model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def ours(hf_dir):
    from pangu_zoo.models import from_pretrained

    return from_pretrained(hf_dir, dropout_rate=0.0)


def _hf_losses(hf_model, blocks: np.ndarray, batch_size: int) -> list[tuple[float, int]]:
    """(mean loss, predicted tokens) per batch, from transformers' own shifted cross-entropy."""
    out = []
    with torch.no_grad():
        for start in range(0, len(blocks), batch_size):
            batch = torch.tensor(blocks[start:start + batch_size])
            out.append((float(hf_model(input_ids=batch, labels=batch).loss), batch.numel() - batch.shape[0]))
    return out


@pytest.mark.parametrize("batch_size", [1, 2])
def test_block_perplexity_matches_transformers(hf_model, ours, batch_size):
    rng = np.random.default_rng(batch_size)
    blocks = rng.integers(0, VOCAB, size=(5, 64))
    tail = rng.integers(0, VOCAB, size=17)
    result = block_perplexity(ours, blocks, tail, batch_size=batch_size)
    losses = _hf_losses(hf_model, blocks, batch_size)
    mindformers = math.exp(np.mean([loss for loss, _ in losses]))
    assert result["mindformers"]["PPL"] == pytest.approx(mindformers, rel=1e-3)
    tail_loss, tail_tokens = _hf_losses(hf_model, tail[None, :], 1)[0]
    total = sum(loss * n for loss, n in losses) + tail_loss * tail_tokens
    count = sum(n for _, n in losses) + tail_tokens
    assert result["token_weighted"]["tokens"] == count
    assert result["token_weighted"]["PPL"] == pytest.approx(math.exp(total / count), rel=1e-3)


def test_block_longer_than_positions_is_an_input_error(ours):
    with pytest.raises(InputError, match="exceeds the model's position table"):
        block_perplexity(ours, np.zeros((1, 256), dtype=np.int64))


class _CharTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]


def test_wikitext_blocks_follow_the_reference_reader():
    text = " = Title = \n\n first line @-@ here \n second , line \n = = Part = = \n\n last passage \n"
    blocks, tail = wikitext_token_blocks(text, _CharTokenizer(), block_size=4)
    joined = "first line-here second, line"  # the last passage is never flushed by the reference
    ids = [ord(c) for c in joined]
    assert blocks.tolist() == np.reshape(ids[:len(ids) // 4 * 4], (-1, 4)).tolist()
    assert tail.tolist() == ids[len(ids) // 4 * 4:]
    blocks, tail = wikitext_token_blocks(text, _CharTokenizer(), block_size=4, keep_last_passage=True)
    assert "".join(map(chr, np.concatenate([blocks.ravel(), tail]))) == joined + "\nlast passage"


def test_cli_ppl_on_wikitext(hf_dir, hf_model, tmp_path, capsys):
    data = shared_data("wikitext2/wiki.valid.tokens")
    tokenizer_dir = shared_data("gpt2_bpe")
    output = tmp_path / "ppl.json"
    assert main(["eval", "ppl", "--model_dir", str(hf_dir), "--tokenizer_path", str(tokenizer_dir),
                 "--data_file", str(data), "--block_size", "128", "--limit_blocks", "2",
                 "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "mindformers (mean of per-batch losses)" in out and "token-weighted" in out
    result = json.loads(output.read_text())
    assert result["blocks"] == 2 and result["block_size"] == 128
    from pangu_zoo.tokenizers import load_tokenizer

    blocks, _ = wikitext_token_blocks(data.read_text(encoding="utf-8"), load_tokenizer("gpt2", tokenizer_dir), 128)
    expected = math.exp(np.mean([loss for loss, _ in _hf_losses(hf_model, blocks[:2], 1)]))
    assert result["mindformers"]["PPL"] == pytest.approx(expected, rel=1e-3)
