"""`pangu lora merge | export-peft | import-peft`: LoRA adapters after training (docs/finetune.md, "LoRA"), and
the `--lora_*` arguments of `pangu train` / train.py.

- `merge --base DIR --adapter DIR --output DIR`: the base model with the adapters folded into its weights, saved
  as a plain model directory (the adapter may be ours or a GPT-2 `peft` one).
- `export-peft --adapter DIR --output DIR`: a GPT-2 adapter as a Hugging Face `peft` adapter folder.
- `import-peft --adapter DIR --output DIR`: a GPT-2 `peft` adapter as one of ours.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_TARGETS = "query,key,value,attention_output"
ADAPTER_SUBFOLDER = "lora_adapter"


def add_adapter_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--lora_rank, --lora_alpha, --lora_dropout, --lora_targets (`pangu train` and `pangu dryrun`)."""
    lora = parser.add_argument_group("LoRA (docs/finetune.md)")
    lora.add_argument("--lora_rank", type=int, default=0,
                      help="rank of the LoRA adapters; 0 (default) trains every weight, >0 trains only adapters")
    lora.add_argument("--lora_alpha", type=float, default=16.0, help="adapter scale: updates are alpha/rank * B A")
    lora.add_argument("--lora_dropout", type=float, default=0.0, help="dropout on the adapters' input")
    lora.add_argument("--lora_targets", default=DEFAULT_TARGETS,
                      help="comma list of query, key, value, attention_output, ffn_mapping, ffn_projection "
                           "(or attention, ffn, all)")
    return lora


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The LoRA arguments of `pangu train`: the adapters' and where they are saved."""
    add_adapter_arguments(parser).add_argument(
        "--lora_save_path", default=None,
        help=f"where the trained adapters go (default: <save_checkpoint_path>/{ADAPTER_SUBFOLDER}); "
             "--save_pretrained then saves the merged model")


def lora_config(args: argparse.Namespace):
    """The LoraConfig the arguments ask for, or None without --lora_rank."""
    from pangu_zoo.errors import ConfigError
    from pangu_zoo.lora_config import LoraConfig, parse_targets

    if args.lora_rank < 0:
        raise ConfigError(f"--lora_rank ({args.lora_rank}) must be 0 (off) or a positive rank")
    if not args.lora_rank:
        return None
    return LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout,
                      targets=parse_targets(args.lora_targets))


def apply_training_lora(args: argparse.Namespace, model) -> bool:
    """Add the adapters `--lora_rank` asks for (freezing the base weights); whether it asked for any."""
    from pangu_zoo.models.lora import apply_lora_config

    config = lora_config(args)
    if config is not None:
        apply_lora_config(model, config)
    return config is not None


def save_training_lora(args: argparse.Namespace, model) -> Path:
    """Save the trained adapters; fold them into the weights when the merged model is to be saved too."""
    from pangu_zoo.models.lora import merge_lora, save_adapter

    path = Path(args.lora_save_path or Path(args.save_checkpoint_path) / ADAPTER_SUBFOLDER)
    save_adapter(model, path)
    print(f"saved the LoRA adapters to {path}")
    if args.save_pretrained:
        merge_lora(model)  # so that --save_pretrained writes a plain model
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="lora_action", metavar="ACTION", required=True)
    merge = actions.add_parser("merge", help="fold an adapter into its base model and save the merged model")
    merge.add_argument("--base", required=True, help="base model directory (ours or a Hugging Face GPT-2 folder)")
    merge.add_argument("--adapter", required=True, help="adapter folder (ours, or a GPT-2 peft adapter)")
    merge.add_argument("--output", required=True, help="model directory to write")
    merge.add_argument("--weights_format", choices=["safetensors", "ckpt"], default="safetensors")
    export = actions.add_parser("export-peft", help="write a GPT-2 adapter as a Hugging Face peft adapter")
    export.add_argument("--adapter", required=True, help="adapter folder written by pangu train --lora_rank")
    export.add_argument("--output", required=True, help="peft adapter folder to write")
    export.add_argument("--base_model_name_or_path", default=None,
                        help="recorded in adapter_config.json (e.g. the Hub name of the base model)")
    imported = actions.add_parser("import-peft", help="read a GPT-2 Hugging Face peft adapter into an adapter folder")
    imported.add_argument("--adapter", required=True, help="peft adapter folder (adapter_config.json + "
                                                           "adapter_model.safetensors)")
    imported.add_argument("--output", required=True, help="adapter folder to write")


def _read_any_adapter(path: str):
    from pangu_zoo.checkpoint import lora_adapter, peft_gpt2

    if lora_adapter.is_peft_folder(path):
        return peft_gpt2.read_peft(path)
    return lora_adapter.read_adapter(path)


def _new_folder(path: str) -> Path:
    from pangu_zoo.errors import ConfigError

    folder = Path(path)
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"--output {folder} already exists and is not empty; choose a new folder")
    return folder


def run(args: argparse.Namespace) -> int:
    from pangu_zoo.checkpoint import lora_adapter, peft_gpt2

    output = _new_folder(args.output)
    if args.lora_action == "merge":
        from pangu_zoo.models import from_pretrained
        from pangu_zoo.models.lora import add_adapter_weights, merge_lora

        config, base_model, weights = _read_any_adapter(args.adapter)
        model = from_pretrained(args.base)
        add_adapter_weights(model, config, base_model, weights, args.adapter)
        merge_lora(model)
        model.save_pretrained(output, args.weights_format)
        print(f"merged {args.adapter} into {args.base} -> {output}")
    elif args.lora_action == "export-peft":
        config, base_model, weights = lora_adapter.read_adapter(args.adapter)
        peft_gpt2.write_peft(output, config, weights, base_model, args.base_model_name_or_path)
        print(f"wrote the peft adapter {output}")
    else:
        config, base_model, weights = peft_gpt2.read_peft(args.adapter)
        lora_adapter.write_adapter(output, config, base_model, weights)
        print(f"wrote the adapter {output} (rank {config.rank}, targets {', '.join(config.targets)})")
    return 0
