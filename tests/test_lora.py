"""LoRA: adapters start like peft's and change nothing, merge into W0 + (alpha/r)·B·A in each weight's orientation,
train alone (base weights bit-identical, Adam state 2x the adapters), shard like their base layers, and cross to
and from Hugging Face `peft` on GPT-2 with transformers' logits."""

from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
from conftest import randomize_weights
from test_training_hardening import SEQ as DATA_SEQ
from test_training_hardening import VOCAB as DATA_VOCAB
from test_training_hardening import random_rows, write_mindrecord

from pangu_zoo.checkpoint import hf_gpt2_format
from pangu_zoo.checkpoint.peft_gpt2 import from_peft
from pangu_zoo.cli import main
from pangu_zoo.config import ParallelConfig
from pangu_zoo.errors import CheckpointError, ConfigError
from pangu_zoo.lora_config import TARGET_LINEARS, LoraConfig, parse_targets
from pangu_zoo.models import build_model, from_pretrained
from pangu_zoo.models.lora import (
    apply_lora,
    load_adapter,
    load_lora_state_dict,
    lora_config_of,
    lora_state_dict,
    merge_lora,
    save_adapter,
)

VOCAB, SEQ = 96, 32
ALL_TARGETS = tuple(TARGET_LINEARS)
# the stored orientation of each target's weight (docs/architecture.md): True = [out, in], False = [in, out]
OUT_IN = {"query": True, "key": True, "value": True, "attention_output": False, "ffn_mapping": False,
          "ffn_projection": False}


def tiny(family: str, seed: int = 0):
    """A small model with random weights large enough that every term shows in the logits."""
    ms.set_seed(seed)
    special = {"eod_token_id": VOCAB - 1, "pad_token_id": VOCAB - 1, "eos_token_id": VOCAB - 1}
    preset = "gpt2-tiny" if family == "gpt2" else "pangu_alpha_tiny"
    model = build_model(preset, vocab_size=VOCAB, max_position_embeddings=SEQ, dropout_rate=0.0, **special)
    return randomize_weights(model, seed, scale=0.08, vector_scale=0.05)


def layer_paths(model) -> list[str]:
    paths = [f"backbone.blocks.{i}" for i in range(len(model.backbone.blocks))]
    return paths + (["backbone.top_query_layer"] if model.backbone.has_top_query else [])


def randomize_adapters(model, seed: int, scale: float = 0.15) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {name: (rng.standard_normal(value.shape) * scale).astype(np.float32)
               for name, value in lora_state_dict(model).items()}
    load_lora_state_dict(model, weights)
    return weights


def ids(seed: int = 3, batch: int = 2, seq: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB - 1, size=(batch, seq))


# the adapters themselves

@pytest.mark.parametrize("family", ["pangu_alpha", "gpt2"])
def test_fresh_adapters_change_nothing_and_start_like_peft(family):
    model = tiny(family)
    before = model.forward_logits(ids())
    config = apply_lora(model, rank=4, alpha=8, targets=ALL_TARGETS)
    assert config == LoraConfig(rank=4, alpha=8, targets=ALL_TARGETS)
    expected = {f"{layer}.{TARGET_LINEARS[t]}.lora.{m}" for layer in layer_paths(model) for t in ALL_TARGETS
                for m in "ab"}
    assert {p.name for p in model.trainable_params()} == expected  # the top-query layer of PanGu-alpha included
    for name, value in lora_state_dict(model).items():
        if name.endswith(".a"):  # peft: kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in))
            bound = 1 / np.sqrt(value.shape[1])
            assert 0.9 * bound < np.abs(value).max() <= bound, name
        else:
            assert not value.any(), name
    np.testing.assert_array_equal(model.forward_logits(ids()), before)


@pytest.mark.parametrize("family", ["pangu_alpha", "gpt2"])
def test_merge_is_base_plus_scaled_BA_in_each_orientation(family):
    model = tiny(family)
    base, base_logits = model.state_dict(), model.forward_logits(ids())
    apply_lora(model, rank=3, alpha=5, targets=ALL_TARGETS)
    adapters = randomize_adapters(model, seed=1)
    unmerged = model.forward_logits(ids())
    assert np.abs(unmerged - base_logits).max() > 1e-2  # the adapters matter

    merge_lora(model)
    merged = model.state_dict()
    assert sorted(merged) == sorted(base) and len(model.trainable_params()) == len(base)
    scaling = 5 / 3
    rng = np.random.default_rng(2)
    checked = set()
    for layer in layer_paths(model):
        for target, out_in in OUT_IN.items():
            name = f"{layer}.{TARGET_LINEARS[target]}"
            w0, a, b = base[f"{name}.weight"], adapters[f"{name}.lora.a"], adapters[f"{name}.lora.b"]
            delta = scaling * (b.astype(np.float64) @ a)  # [out, in]
            np.testing.assert_allclose(merged[f"{name}.weight"], w0 + (delta if out_in else delta.T), atol=1e-6)
            # and as a layer: x W' == x W0 + (alpha/r) (x A^T) B^T, with each W taken as [in, out]
            x = rng.standard_normal((5, a.shape[1]))
            w_merged, w_base = (merged[f"{name}.weight"].T, w0.T) if out_in else (merged[f"{name}.weight"], w0)
            np.testing.assert_allclose(x @ w_merged, x @ w_base + scaling * (x @ a.T) @ b.T, atol=1e-5)
            checked.add(f"{name}.weight")
    for name in set(base) - checked:
        np.testing.assert_array_equal(merged[name], base[name])
    np.testing.assert_allclose(model.forward_logits(ids()), unmerged, atol=1e-5)


def test_only_the_adapters_train():
    from pangu_zoo.training.build import build_train_step

    model = tiny("pangu_alpha")
    apply_lora(model, rank=4, alpha=8, dropout=0.1, targets=("query", "value", "ffn_mapping"))
    base = model.state_dict()
    adapters = lora_state_dict(model)
    adapter_size = sum(v.size for v in adapters.values())
    assert {p.name for p in model.trainable_params()} == set(adapters)
    step = build_train_step(model, ParallelConfig(), "adam", 5e-3)
    assert {p.name for p in step.optimizer.parameters} == set(adapters)
    moments = list(step.optimizer.moments1) + list(step.optimizer.moments2)
    assert sum(int(np.prod(m.shape)) for m in moments) == 2 * adapter_size

    rng = np.random.default_rng(4)
    batch, seq = 2, 16
    inputs = (ms.Tensor(rng.integers(0, VOCAB - 1, (batch, seq + 1)).astype(np.int32)),
              ms.Tensor(np.tile(np.arange(seq, dtype=np.int32), (batch, 1))),
              ms.Tensor(np.tile(np.tril(np.ones((seq, seq), np.int32)), (batch, 1, 1))),
              ms.Tensor(np.ones((batch, seq), np.float32)))
    step.set_train(True)
    losses = [float(step(*inputs)[0].asnumpy()) for _ in range(3)]
    assert np.isfinite(losses).all()
    after = model.state_dict()
    for name, value in base.items():
        if name in adapters:
            assert not np.array_equal(after[name], value), f"{name} did not train"
        else:
            np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_adapter_folder_round_trip_and_refusals(tmp_path):
    model = tiny("gpt2")
    apply_lora(model, rank=2, alpha=4, dropout=0.05, targets=parse_targets("attention,ffn_mapping"))
    randomize_adapters(model, seed=5)
    expected = model.forward_logits(ids())
    save_adapter(model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "lora_config.json").read_text())
    assert saved["lora"]["rank"] == 2 and saved["lora"]["alpha"] == 4 and saved["lora"]["dropout"] == 0.05
    assert saved["lora"]["targets"] == ["query", "key", "value", "attention_output", "ffn_mapping"]
    assert saved["base_model"] == {"family": "gpt2", "num_layers": 2, "hidden_size": 64}

    fresh = tiny("gpt2")
    assert load_adapter(fresh, tmp_path / "adapter") == model.lora_config
    np.testing.assert_array_equal(fresh.forward_logits(ids()), expected)
    with pytest.raises(ConfigError, match="already has LoRA adapters"):
        apply_lora(fresh)
    pangu = tiny("pangu_alpha")
    with pytest.raises(CheckpointError, match="made for a model with family 'gpt2'"):
        load_adapter(pangu, tmp_path / "adapter")
    assert lora_config_of(pangu) is None and len(pangu.trainable_params()) == len(pangu.state_dict())
    with pytest.raises(ConfigError, match="unknown LoRA target"):
        apply_lora(pangu, targets=("query", "gate"))
    with pytest.raises(ConfigError, match="rank"):
        LoraConfig(rank=0)


# sharding

@pytest.mark.parametrize("family", ["pangu_alpha", "gpt2"])
def test_every_adapter_primitive_is_placed_like_its_base_layer(family):
    from pangu_zoo.models.loss import LanguageModelWithLoss
    from pangu_zoo.parallel.grad_norm import model_parallel_axis
    from pangu_zoo.parallel.placement import network_placement_map
    from pangu_zoo.parallel.strategy import strategy_table

    model = tiny(family)
    apply_lora(model, rank=4, targets=ALL_TARGETS)
    network = LanguageModelWithLoss(model)
    primitives = {f"{name}.{attr}" if name else attr
                  for name, cell in network.cells_and_names()
                  for attr, primitive in getattr(cell, "_primitives", {}).items() if primitive is not None}
    placed = network_placement_map(network)
    assert primitives == set(placed)
    assert any(".lora." in p for p in placed)
    dp, mp = 2, 4
    parallel = ParallelConfig(data_parallel=dp, model_parallel=mp)
    table = strategy_table(parallel)
    for target, out_in in OUT_IN.items():
        prefix = f"model.backbone.blocks.0.{TARGET_LINEARS[target]}"
        base_weight_cuts = table[placed[f"{prefix}.matmul"]][1]
        # the weight's output axis is cut on a column-parallel layer, its input axis on a row-parallel one
        column = base_weight_cuts[0 if out_in else 1] == mp
        down, up = table[placed[f"{prefix}.lora.down"]], table[placed[f"{prefix}.lora.up"]]
        assert up[1] == ((mp, 1) if column else (1, 1))  # B [out, r]
        assert down[1] == ((1, 1) if column else (1, mp))  # A [r, in]
        assert down[0] == table[placed[f"{prefix}.matmul"]][0]  # x as the base layer takes it
        # the gradient norm counts each slice once: the split axis it assumes is the one the strategy cuts
        name = f"backbone.blocks.0.{TARGET_LINEARS[target]}.lora"
        assert model_parallel_axis(f"{name}.b", parallel) == (0 if column else None)
        assert model_parallel_axis(f"{name}.a", parallel) == (None if column else 1)


def test_mixture_of_experts_model_takes_attention_adapters_only():
    from pangu_zoo.config import MoEConfig
    from pangu_zoo.models.loss import LanguageModelWithLoss
    from pangu_zoo.parallel.placement import network_placement_map

    ms.set_seed(0)
    model = build_model("gpt2-tiny", vocab_size=VOCAB, max_position_embeddings=SEQ, dropout_rate=0.0,
                        eod_token_id=VOCAB - 1, pad_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
                        moe=MoEConfig(expert_num=4))
    with pytest.raises(ConfigError, match="'ffn_mapping' needs a linear layer at backbone.blocks.0.output.mapping"):
        apply_lora(model, targets=("query", "ffn_mapping"))
    assert lora_config_of(model) is None and len(model.trainable_params()) == len(model.state_dict())
    apply_lora(model, rank=2)
    randomize_adapters(model, seed=9)
    network = LanguageModelWithLoss(model)
    primitives = {f"{name}.{attr}" if name else attr for name, cell in network.cells_and_names()
                  for attr, primitive in getattr(cell, "_primitives", {}).items() if primitive is not None}
    assert primitives == set(network_placement_map(network))
    unmerged = model.forward_logits(ids())
    merge_lora(model)
    np.testing.assert_allclose(model.forward_logits(ids()), unmerged, atol=1e-5)


def test_sharded_lora_training_step_compiles_with_adapters_split_like_their_layers(tmp_path):
    """`pangu dryrun --lora_rank` compiles the dp 2 x mp 4 training step: each adapter matrix is split as the hand
    rule says (B by output rows on column-parallel layers, A by input columns on row-parallel ones), and the
    worker checks the gradient-norm count of every adapter against the compiled layout."""
    from test_dryrun import dryrun, params_of

    from pangu_zoo.config import get_preset

    special = {"eod_token_id": 7, "pad_token_id": 7, "eos_token_id": 7}
    config = get_preset("pangu_alpha_tiny", num_heads=8, num_layers=3, vocab_size=1024, hidden_size=64,
                        ffn_hidden_size=256, dropout_rate=0.0, **special)
    (tmp_path / "model.json").write_text(json.dumps(config.to_dict()))
    result, data = dryrun(tmp_path / "model.json", tmp_path, 8, dp=2, mp=4, opt_shard=1,
                          extra=("--lora_rank", "8", "--lora_targets", "all", "--lora_dropout", "0.1"))
    assert result.returncode == 0, result.stdout + result.stderr
    slices = {name: p["slice_shape"] for name, p in params_of(data["ranks"][0]).items()}
    for layer in ("blocks.0", "blocks.1", "top_query_layer"):
        assert {name for name in slices if name.startswith(layer + ".")} == {
            f"{layer}.{TARGET_LINEARS[t]}.lora.{m}" for t in ALL_TARGETS for m in "ab"}  # only adapters train
        for i in (1, 2, 3):
            assert slices[f"{layer}.attention.dense{i}.lora.a"] == [8, 64]
            assert slices[f"{layer}.attention.dense{i}.lora.b"] == [64 // 4, 8]
        assert slices[f"{layer}.attention.projection.lora.a"] == [8, 64 // 4]
        assert slices[f"{layer}.attention.projection.lora.b"] == [64, 8]
        assert slices[f"{layer}.output.mapping.lora.a"] == [8, 64]
        assert slices[f"{layer}.output.mapping.lora.b"] == [256 // 4, 8]
        assert slices[f"{layer}.output.projection.lora.a"] == [8, 256 // 4]
        assert slices[f"{layer}.output.projection.lora.b"] == [64, 8]


# Hugging Face peft (GPT-2)

@pytest.fixture(scope="module")
def hf_libraries():
    """(torch, transformers, peft), or skip the peft tests (only they need them)."""
    return pytest.importorskip("torch"), pytest.importorskip("transformers"), pytest.importorskip("peft")


def hf_folder(model, path):
    hf_gpt2_format.write(model.config, model.state_dict(), path)
    return path


def hf_logits(hf_model, token_ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf_model(torch.from_numpy(token_ids)).logits.numpy()


@pytest.mark.parametrize("targets,c_attn_rank", [
    (("query", "key", "value", "attention_output"), 12),
    (("query", "value", "ffn_mapping", "ffn_projection"), 8),
])
def test_exported_peft_adapter_gives_our_logits_in_transformers(hf_libraries, tmp_path, targets, c_attn_rank):
    _, transformers, peft = hf_libraries
    model = tiny("gpt2")
    base_dir = hf_folder(model, tmp_path / "base")
    apply_lora(model, rank=4, alpha=8, targets=targets)
    randomize_adapters(model, seed=6)
    save_adapter(model, tmp_path / "ours")
    assert main(["lora", "export-peft", "--adapter", str(tmp_path / "ours"), "--output", str(tmp_path / "peft"),
                 "--base_model_name_or_path", "tiny-gpt2"]) == 0
    values = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert values["r"] == 4 and values["lora_alpha"] == 8 and values["fan_in_fan_out"] is True
    assert values["rank_pattern"] == {"attn.c_attn": c_attn_rank}  # one fused adapter, its rank the sum
    assert values["alpha_pattern"] == {"attn.c_attn": 2 * c_attn_rank}  # alpha / r unchanged

    hf = transformers.GPT2LMHeadModel.from_pretrained(base_dir).eval()
    without = hf_logits(hf, ids())
    with_adapter = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    c_attn = with_adapter.base_model.model.transformer.h[0].attn.c_attn
    assert c_attn.r["default"] == c_attn_rank and c_attn.scaling["default"] == 2.0
    theirs = hf_logits(with_adapter, ids())
    merge_lora(model)
    ours = model.forward_logits(ids())
    assert np.abs(theirs - without).max() > 1e-2
    assert np.abs(theirs - ours).max() <= 1e-4

    assert main(["lora", "merge", "--base", str(base_dir), "--adapter", str(tmp_path / "ours"),
                 "--output", str(tmp_path / "merged")]) == 0
    np.testing.assert_allclose(from_pretrained(tmp_path / "merged").forward_logits(ids()), ours, atol=1e-6)


@pytest.mark.parametrize("options", [
    {},
    {"rank_pattern": {"c_attn": 6}, "alpha_pattern": {"c_attn": 9}, "use_rslora": True, "lora_dropout": 0.1},
])
def test_peft_adapter_imports_with_the_same_logits(hf_libraries, tmp_path, options):
    torch, transformers, peft = hf_libraries
    base_dir = hf_folder(tiny("gpt2"), tmp_path / "base")
    hf = transformers.GPT2LMHeadModel.from_pretrained(base_dir).eval()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
                             **options)
    with_adapter = peft.get_peft_model(hf, config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in with_adapter.named_parameters():
            if "lora_" in name:  # B starts at zero in peft: make every adapter do something
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    with_adapter.save_pretrained(tmp_path / "peft")
    theirs = hf_logits(with_adapter.eval(), ids())

    assert main(["lora", "import-peft", "--adapter", str(tmp_path / "peft"), "--output", str(tmp_path / "ours")]) == 0
    ours = from_pretrained(base_dir)
    config = load_adapter(ours, tmp_path / "ours")
    assert config.targets == ALL_TARGETS  # "c_proj" names the attention and the MLP output
    if options:
        assert config.rank_of("query") == 6 and config.rank_of("ffn_mapping") == 4
        assert config.scaling_of("query") == pytest.approx(9 / np.sqrt(6))  # rsLoRA: alpha / sqrt(r)
    assert np.abs(ours.forward_logits(ids()) - theirs).max() <= 1e-4
    # merged straight from the peft folder
    assert main(["lora", "merge", "--base", str(base_dir), "--adapter", str(tmp_path / "peft"),
                 "--output", str(tmp_path / "merged")]) == 0
    assert np.abs(from_pretrained(tmp_path / "merged").forward_logits(ids()) - theirs).max() <= 1e-4


def test_peft_options_this_model_cannot_compute_are_refused(tmp_path, capsys):
    a, b = np.zeros((2, 64), np.float32), np.zeros((192, 2), np.float32)
    tensors = {"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight": a,
               "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight": b}
    with pytest.raises(CheckpointError, match="use_dora=True"):
        from_peft({"r": 2, "lora_alpha": 4, "use_dora": True}, tensors)
    with pytest.raises(CheckpointError, match="wte.lora_embedding_A"):
        from_peft({"r": 2}, {**tensors, "base_model.model.transformer.wte.lora_embedding_A": a})
    pangu = tiny("pangu_alpha")
    apply_lora(pangu, rank=2)
    save_adapter(pangu, tmp_path / "pangu")
    assert main(["lora", "export-peft", "--adapter", str(tmp_path / "pangu"), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written for GPT-2 models" in err


# training from the command line

def test_train_command_saves_adapters_and_the_merged_model(tmp_path):
    ms.set_seed(0)
    base = build_model("pangu_alpha_tiny", vocab_size=DATA_VOCAB, num_layers=2, max_position_embeddings=DATA_SEQ,
                       dropout_rate=0.0)
    base.save_pretrained(tmp_path / "base")
    data = write_mindrecord(tmp_path / "data", random_rows(16, DATA_SEQ + 1))
    args = ["train", "--mode", "pangu_alpha_tiny", "--vocab_size", str(DATA_VOCAB), "--seq_length", str(DATA_SEQ),
            "--data_url", str(data), "--per_batch_size", "2", "--max_steps", "3", "--warmup_step", "1",
            "--start_lr", "1e-2", "--dropout_rate", "0", "--save_checkpoint_path", str(tmp_path / "ck"),
            "--load_ckpt_path", str(tmp_path / "base"), "--lora_rank", "4", "--lora_targets", "attention,ffn"]
    assert main([*args, "--save_pretrained", str(tmp_path / "merged")]) == 0
    adapter = tmp_path / "ck" / "lora_adapter"
    tuned = from_pretrained(tmp_path / "base")
    load_adapter(tuned, adapter)
    assert any(v.any() for n, v in lora_state_dict(tuned).items() if n.endswith(".b"))  # B moved off zero
    token_ids = np.random.default_rng(8).integers(10, DATA_VOCAB, (2, DATA_SEQ))
    expected = tuned.forward_logits(token_ids)
    merged = from_pretrained(tmp_path / "merged")
    np.testing.assert_allclose(merged.forward_logits(token_ids), expected, atol=1e-5)
    assert main(["lora", "merge", "--base", str(tmp_path / "base"), "--adapter", str(adapter),
                 "--output", str(tmp_path / "merged2")]) == 0
    again = from_pretrained(tmp_path / "merged2").state_dict()
    for name, value in merged.state_dict().items():
        np.testing.assert_array_equal(again[name], value)
    assert main([*args[:-2], "--lora_targets", "query,gate", "--save_checkpoint_path", str(tmp_path / "ck2")]) == 2
