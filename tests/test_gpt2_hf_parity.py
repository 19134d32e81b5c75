"""GPT-2 loaded from a Hugging Face directory matches transformers (logits and greedy decoding)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pangu_zoo.errors import CheckpointError  # noqa: E402
from pangu_zoo.models import from_pretrained  # noqa: E402

VOCAB = 1000


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=3, n_head=4, initializer_range=0.2,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_gpt2")
    hf_model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def ours(hf_dir):
    return from_pretrained(hf_dir)


def _bin_variant(hf_model, hf_dir, tmp_path, prefix: bool, buffers: bool):
    """The same weights as pytorch_model.bin, keys with/without `transformer.`, with/without attn.bias."""
    state = {k: v.clone() for k, v in hf_model.transformer.state_dict().items()}
    if buffers:
        for i in range(hf_model.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128, dtype=torch.bool))
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    if prefix:
        state = {"transformer." + k: v for k, v in state.items()}
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save(state, tmp_path / "pytorch_model.bin")
    return tmp_path


def _hf_logits(hf_model, ids, mask):
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return out.logits.numpy()


@pytest.mark.parametrize("seed,batch,seq", [(0, 1, 7), (1, 2, 33), (2, 4, 64)])
def test_logits_match_transformers(hf_model, ours, seed, batch, seq):
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=(batch, seq))
    mask = np.ones_like(ids)
    ref = _hf_logits(hf_model, ids, mask)
    got = ours.forward_logits(ids, attention_mask=mask)
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_logits_match_on_real_tokens(hf_model, ours, side):
    rng = np.random.default_rng(5)
    lengths = [20, 9, 14]
    ids = rng.integers(0, VOCAB, size=(3, 20))
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, 20 - n:] = 1
    ref = _hf_logits(hf_model, ids, mask)
    got = ours.forward_logits(ids, attention_mask=mask)
    real = mask.astype(bool)  # positions are 0..S-1 in both, whatever the padding side
    assert np.abs(got[real] - ref[real]).max() <= 1e-4


def test_greedy_30_tokens_equal_transformers(hf_model, ours):
    prompts = [[5, 17, 300, 42], [900, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [77]]
    for prompt in prompts:
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    max_new_tokens=30, min_new_tokens=30, do_sample=False)
        got = ours.generate([prompt], max_new_tokens=30)
        assert got[0] == ref[0].tolist()


@pytest.mark.parametrize("prefix,buffers", [(False, True), (True, True), (False, False)])
def test_pytorch_bin_layouts_load(hf_model, hf_dir, ours, tmp_path, prefix, buffers):
    directory = _bin_variant(hf_model, hf_dir, tmp_path, prefix, buffers)
    loaded = from_pretrained(directory)
    ids = np.arange(12)[None, :]
    assert np.abs(loaded.forward_logits(ids) - ours.forward_logits(ids)).max() == 0.0


def _save_hf(tmp_path, **config_fields):
    """A tiny GPT-2 saved by transformers with the given config fields."""
    torch.manual_seed(1)
    fields = dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, eos_token_id=VOCAB - 1)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**fields, **config_fields})).eval()
    model.save_pretrained(tmp_path)
    return model


def test_untied_head_is_refused(tmp_path):
    model = _save_hf(tmp_path, tie_word_embeddings=False)
    assert not torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    with pytest.raises(CheckpointError, match=r"lm_head\.weight differs from the word embedding"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("field,value", [("scale_attn_weights", False), ("scale_attn_by_inverse_layer_idx", True)])
def test_attention_options_that_change_the_math_are_refused(tmp_path, field, value):
    _save_hf(tmp_path, **{field: value})
    with pytest.raises(CheckpointError, match=f"{field}={value} is not supported"):
        from_pretrained(tmp_path)


def test_reorder_and_upcast_attn_loads_with_fp32_compute_only(tmp_path):
    model = _save_hf(tmp_path, reorder_and_upcast_attn=True)
    ids = np.random.default_rng(3).integers(0, VOCAB, size=(2, 16))
    ours = from_pretrained(tmp_path)
    assert np.abs(ours.forward_logits(ids) - _hf_logits(model, ids, np.ones_like(ids))).max() <= 1e-4
    with pytest.raises(CheckpointError, match="reorder_and_upcast_attn=true asks for fp32"):
        from_pretrained(tmp_path, compute_dtype="float16")


def test_pad_token_id_zero_stays_zero(tmp_path):
    _save_hf(tmp_path, pad_token_id=0)
    config = from_pretrained(tmp_path).config
    assert (config.pad_token_id, config.eos_token_id) == (0, VOCAB - 1)


def test_tied_head_in_a_bin_file_loads(hf_model, hf_dir, ours, tmp_path):
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")  # holds lm_head.weight == wte.weight
    ids = np.arange(12)[None, :]
    assert np.abs(from_pretrained(tmp_path).forward_logits(ids) - ours.forward_logits(ids)).max() == 0.0
