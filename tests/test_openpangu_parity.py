"""openPangu-Embedded loaded from a Hugging Face folder matches transformers.

transformers has no PanguEmbedded class, but its `LlamaForCausalLM` with `attention_bias=True`, `mlp_bias=False`
is the same architecture (formats.md §6.2: RMSNorm, rotate-half RoPE, grouped-query attention with q/k/v/o biases,
SwiGLU MLP, untied head) under the same parameter names. So a random Llama is saved by transformers, its
config.json is rewritten as openPangu's (model_type PanguEmbedded, the §6.1 field names) and loaded here; logits,
KV-cache decoding and greedy tokens are compared with transformers' own.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pangu_zoo.errors import CheckpointError  # noqa: E402
from pangu_zoo.inference.generation import IncrementalDecoder  # noqa: E402
from pangu_zoo.models import from_pretrained  # noqa: E402

VOCAB = 256
COPIED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
          "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout",
          "initializer_range", "use_cache")


def llama(tie: bool = False, seed: int = 0, rope_theta: float = 4.0e6):
    """A random Llama with openPangu's options; every weight drawn large enough that no term can hide."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rope_theta=rope_theta, rms_norm_eps=1e-5, attention_bias=True,
        mlp_bias=False, max_position_embeddings=256, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2,
        pad_token_id=0)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.3 if name.endswith("embed_tokens.weight") else 0.15
            param.copy_(torch.randn_like(param) * scale + (1.0 if name.endswith("norm.weight") else 0.0))
    return model


def as_openpangu_folder(directory) -> None:
    """Rewrite a Llama config.json written by transformers as openPangu's (the released files' field names)."""
    llama_values = json.loads((directory / "config.json").read_text())
    values = {name: llama_values[name] for name in COPIED}
    values.update(architectures=["PanguEmbeddedForCausalLM"], model_type="PanguEmbedded",
                  bias=llama_values["attention_bias"], rope_theta=llama_values["rope_parameters"]["rope_theta"],
                  torch_dtype=llama_values.get("dtype", "float32"))
    (directory / "config.json").write_text(json.dumps(values, indent=2))


def save_as_openpangu(model, directory, **save_args):
    model.save_pretrained(directory, **save_args)
    as_openpangu_folder(directory)
    return directory


@pytest.fixture(scope="module")
def hf_model():
    return llama()


@pytest.fixture(scope="module")
def ours(hf_model, tmp_path_factory):
    return from_pretrained(save_as_openpangu(hf_model, tmp_path_factory.mktemp("openpangu")))


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(np.asarray(ids))).logits.float().numpy()


def test_the_config_and_names_are_read_from_the_folder(ours):
    config = ours.config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (64, 96, 2)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 16)
    assert config.rope_theta == 4.0e6 and config.bias and not config.tie_word_embeddings
    names = set(ours.state_dict())
    assert "backbone.model.layers.1.self_attn.k_proj.bias" in names and "backbone.lm_head.weight" in names
    assert ours.state_dict()["backbone.model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)  # kv heads only


@pytest.mark.parametrize("seed,batch,seq", [(0, 1, 7), (1, 3, 40)])
def test_logits_match_transformers(hf_model, ours, seed, batch, seq):
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=(batch, seq))
    assert np.abs(ours.forward_logits(ids) - hf_logits(hf_model, ids)).max() <= 1e-4


def test_cached_decoding_logits_match_transformers(hf_model, ours):
    """Prefill a right-padded batch of prompts of different lengths, then decode: each step's logits equal
    transformers' logits of the whole sequence so far."""
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, VOCAB, size=n) for n in (5, 12, 1)]
    decoder = IncrementalDecoder(ours)
    logits, state = decoder.prefill(prompts, cache_len=64)
    sequences = [list(p) for p in prompts]
    for _ in range(6):
        for row, sequence in enumerate(sequences):
            assert np.abs(logits[row] - hf_logits(hf_model, [sequence])[0, -1]).max() <= 1e-4
        tokens = rng.integers(0, VOCAB, size=len(sequences))
        for row, token in enumerate(tokens):
            sequences[row].append(int(token))
        logits, state = decoder.step(tokens, state)
    assert state.cache[0].shape[1] == 2  # the cache holds the key/value heads only


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_tokens_match_transformers(hf_model, ours, use_cache):
    rng = np.random.default_rng(4)
    prompts = [list(rng.integers(3, VOCAB, size=n)) for n in (6, 11)]
    got = ours.generate(prompts, max_new_tokens=12, use_cache=use_cache)
    for prompt, row in zip(prompts, got, strict=True):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                                    pad_token_id=0)
        assert row == ref[0].tolist()


def test_bf16_weights_load_widened_or_kept(hf_model, tmp_path):
    directory = save_as_openpangu(llama(seed=5).to(torch.bfloat16), tmp_path)
    assert json.loads((directory / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reference = llama(seed=5)  # the same bf16 values in fp32 (`.to(bf16)` would round its rotary frequencies too)
    reference.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in reference.state_dict().items()})
    ids = np.random.default_rng(6).integers(0, VOCAB, size=(2, 9))
    widened = from_pretrained(directory)
    assert widened.config.param_dtype == "float32"
    assert np.abs(widened.forward_logits(ids) - hf_logits(reference, ids)).max() <= 1e-4
    kept = from_pretrained(directory, param_dtype="bfloat16")
    import mindspore as ms

    assert all(p.dtype == ms.bfloat16 for n, p in kept.parameters_and_names() if "embed_tokens" not in n)
    expected = {f"backbone.{k}": v.float().numpy() for k, v in reference.state_dict().items()}
    for name, value in kept.state_dict().items():
        np.testing.assert_array_equal(value, expected[name])


def test_sharded_folder_loads(hf_model, ours, tmp_path):
    directory = save_as_openpangu(hf_model, tmp_path, max_shard_size="40KB")
    assert len(list(directory.glob("model-*-of-*.safetensors"))) > 1
    assert (directory / "model.safetensors.index.json").exists()
    loaded = from_pretrained(directory)
    for name, value in ours.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value)


def test_tied_head_matches_transformers(tmp_path):
    model = llama(tie=True, seed=7)
    ours = from_pretrained(save_as_openpangu(model, tmp_path))
    assert ours.config.tie_word_embeddings and not any("lm_head" in n for n in ours.state_dict())
    ids = np.random.default_rng(8).integers(0, VOCAB, size=(1, 10))
    assert np.abs(ours.forward_logits(ids) - hf_logits(model, ids)).max() <= 1e-4


@pytest.mark.parametrize("shards", [None, 30_000])
def test_saved_folder_is_what_transformers_reads(hf_model, ours, tmp_path, shards):
    """Our save (Hugging Face layout, HF names) loads back here and, as a Llama, in transformers."""
    from pangu_zoo.checkpoint import hf_openpangu

    hf_openpangu.write(ours.config, ours.state_dict(), tmp_path, max_shard_bytes=shards)
    assert (len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1) == (shards is not None)
    values = json.loads((tmp_path / "config.json").read_text())
    assert values["model_type"] == "PanguEmbedded" and values["rope_theta"] == 4.0e6 and values["bias"] is True
    again = from_pretrained(tmp_path)
    ids = np.random.default_rng(9).integers(0, VOCAB, size=(2, 8))
    np.testing.assert_array_equal(again.forward_logits(ids), ours.forward_logits(ids))
    as_llama = dict(values, model_type="llama", architectures=["LlamaForCausalLM"], attention_bias=values["bias"],
                    mlp_bias=False)
    (tmp_path / "config.json").write_text(json.dumps(as_llama))
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert np.abs(hf_logits(reloaded, ids) - hf_logits(hf_model, ids)).max() == 0.0


def _with_config(source, tmp_path, **changes):
    for path in source.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    values = json.loads((source / "config.json").read_text())
    values.update(changes)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in values.items() if v != "DELETE"}))
    return tmp_path


@pytest.mark.parametrize("changes,message", [
    ({"num_key_value_heads": "DELETE"}, "num_key_value_heads missing"),
    ({"rope_theta": "DELETE"}, "rope_theta missing"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling .* is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"mlp_bias": True}, "mlp_bias true is not supported"),
    ({"num_attention_heads": 3}, "num_attention_heads \\(3\\) must be a multiple of num_key_value_heads"),
])
def test_what_the_model_cannot_compute_is_refused(hf_model, tmp_path_factory, tmp_path, changes, message):
    source = save_as_openpangu(hf_model, tmp_path_factory.mktemp("source"))
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(_with_config(source, tmp_path, **changes))


def test_a_tied_config_with_a_different_head_is_refused(hf_model, tmp_path):
    directory = save_as_openpangu(hf_model, tmp_path)  # untied weights: lm_head differs from embed_tokens
    values = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(values, tie_word_embeddings=True)))
    with pytest.raises(CheckpointError, match="lm_head.weight differs from model.embed_tokens.weight"):
        from_pretrained(directory)
