"""`python predict.py`: the reference zoo's predict script (its argument names and defaults) on saved model folders.

Sampling follows the reference `generate` (MSM `src/generate.py`):

* penalties on the log-probabilities, counting **generated** tokens only:
  `lp - count * frequency_penalty - (count > 0) * presence_penalty`;
* `top_p < 1`: nucleus sampling over the 5000 most likely tokens; otherwise top-k with `top_k_num` (3);
* generation stops when `end_token` is drawn; it is not part of the output. By default the end tokens are the
  tokenizer's `<eot>` and its document separator (PanGu-alpha: 9 and 6; the reference stops at `<eot>` only),
  and special pieces are left out of the printed text.

Differences, all documented in docs/evaluation.md: `--load_ckpt_path` also takes model directories
(config.json + weights; see `pangu_zoo.checkpoint.loader`); `--hidden_act`, `--temperature` (default 1.0,
i.e. none) and `--seed` are additions; prompts come from `--prompt` or `--input_file`; the KV cache is exact
(the reference's incremental quirks are fixed); `--param_init_type` defaults to fp32 because the CPU build is
the common target here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pangu_zoo.arg_types import parse_bool
from pangu_zoo.errors import InputError
from pangu_zoo.tokenizers.special import default_end_tokens, output_text

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "今天是一个好天气"
NUCLEUS_CANDIDATES = 5000  # the reference samples top-p from the 5000 most likely tokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ref = parser.add_argument_group("reference arguments")
    ref.add_argument("--load_ckpt_path", default=None,
                     help="model directory (config.json + weights), released PanGu-alpha folder (slices + "
                          "strategy + .npy; shaped by --mode) or a mindformers-named .ckpt file (shaped by --mode)")
    ref.add_argument("--load_ckpt_name", default=None, help="sub-directory of --load_ckpt_path, when it exists")
    ref.add_argument("--tokenizer_path", default="./tokenizer_path", help="tokenizer folder or vocabulary file")
    ref.add_argument("--mode", default="2.6B",
                     help="reference preset name: shapes released folders and .ckpt files (model folders carry "
                          "their own config)")
    ref.add_argument("--use_past", type=parse_bool, default=True, help="incremental decoding with the KV cache")
    ref.add_argument("--top_k_num", type=int, default=3)
    ref.add_argument("--top_p", type=float, default=1.0)
    ref.add_argument("--frequency_penalty", type=float, default=1.5)
    ref.add_argument("--presence_penalty", type=float, default=0.3)
    ref.add_argument("--max_generate_length", type=int, default=500)
    ref.add_argument("--end_token", type=int, default=None,
                     help="stop id (default: the tokenizer's <eot> and its document separator)")
    ref.add_argument("--param_init_type", choices=["fp16", "fp32"], default="fp32")
    ref.add_argument("--distribute", type=parse_bool, default=False,
                     help="split every layer over the launched devices (model parallel; GPU/Ascend, started by "
                          "scripts/run_distribute_predict.sh or mpirun)")
    ref.add_argument("--strategy_load_ckpt_path", default="",
                     help="strategy file of released slices (default: found in the checkpoint folder)")
    ref.add_argument("--device_target", default=None, help="Ascend, GPU or CPU (default: MindSpore's)")
    ref.add_argument("--device_id", type=int, default=0)
    ref.add_argument("--run_type", default="predict", choices=["predict"])
    ref.add_argument("--eval_task", default=None, choices=["c3"], help="run a downstream evaluation instead")
    ref.add_argument("--enable_client", action="store_true",
                     help="send the prompts (or the C3 questions) to a running server instead of loading a model")
    ref.add_argument("--server_ip", default="127.0.0.1")
    ref.add_argument("--port", default="1500", help="the server's port (the reference's default is 1500)")
    ref.add_argument("--export", type=int, choices=[0, 1], default=0,
                     help="1: export the model as MindIR for serving instead (see export.py for its options)")
    ref.add_argument("--eval_data_url", default=None, help="folder with c3-d-dev.json (with --eval_task c3)")
    extra = parser.add_argument_group("additions")
    extra.add_argument("--prompt", action="append", help="a prompt (repeatable; default: a fixed sample)")
    extra.add_argument("--input_file", help="one prompt per line")
    extra.add_argument("--tokenizer", choices=["pangu-alpha", "gpt2"], help="default: from the model family")
    extra.add_argument("--hidden_act", choices=["gelu", "fast_gelu"], default=None,
                       help="FFN activation (default: the model folder's; tanh-GELU for released folders and .ckpt "
                            "files); fast_gelu for checkpoints trained with MSM's Ascend code")
    extra.add_argument("--temperature", type=float, default=1.0)
    extra.add_argument("--seed", type=int, default=None, help="fixes the draws (each prompt starts from it)")
    extra.add_argument("--eval_limit", type=int, default=None, help="with --eval_task: first N questions only")


def reference_sampling(top_k_num: int = 3, top_p: float = 1.0, frequency_penalty: float = 1.5,
                       presence_penalty: float = 0.3, temperature: float = 1.0):
    """The reference's sampling rule as a `SamplingConfig` (top-p over 5000 candidates, else top-k)."""
    from pangu_zoo.inference.sampling import SamplingConfig

    top_k = NUCLEUS_CANDIDATES if top_p < 1.0 else top_k_num
    if top_k < 1:
        raise InputError(f"top_k_num ({top_k_num}) must be at least 1")
    return SamplingConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p,
                          frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)


def predict_ids(model, prompt_ids: list[int], sampling, max_generate_length: int,
                end_token: int | Sequence[int] | None, seed: int | None = None, use_past: bool = True) -> list[int]:
    """Generated ids after `prompt_ids`; generation stops at `end_token` (one id or several), which is not
    included."""
    room = model.config.max_position_embeddings - len(prompt_ids)
    if room < 1:
        raise InputError(f"the prompt has {len(prompt_ids)} tokens; the model reads at most "
                         f"{model.config.max_position_embeddings - 1} to generate anything")
    if max_generate_length < 1:
        raise InputError(f"max_generate_length ({max_generate_length}) must be at least 1")
    out = model.generate([prompt_ids], max_new_tokens=min(max_generate_length, room), do_sample=sampling.do_sample,
                         temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                         frequency_penalty=sampling.frequency_penalty, presence_penalty=sampling.presence_penalty,
                         eos_token_id=end_token, seed=seed, use_cache=use_past)[0]
    new = out[len(prompt_ids):]
    if new and end_token is not None and new[-1] in np.atleast_1d(end_token):
        new = new[:-1]
    return new


def _model_dir(args: argparse.Namespace) -> Path:
    from pangu_zoo.checkpoint.loader import checkpoint_path

    return checkpoint_path(args.load_ckpt_path, args.load_ckpt_name)


def load_overrides(args: argparse.Namespace) -> dict:
    """Config fields the arguments set on whatever layout is loaded."""
    dtype = {"fp16": "float16", "fp32": "float32"}[args.param_init_type]
    overrides = dict(dropout_rate=0.0, param_dtype=dtype, compute_dtype=dtype)
    if args.hidden_act:
        overrides["hidden_act"] = args.hidden_act
    return overrides


def _prompts(args: argparse.Namespace) -> list[str]:
    from pangu_zoo.inference.cli import read_prompts

    return read_prompts(args, default=DEFAULT_PROMPT)


def start_distributed(device_target: str | None) -> tuple[int, int]:
    """Join the launcher's process group; return (rank, device count). Sharded graphs need GPU or Ascend."""
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    from pangu_zoo.errors import ConfigError

    if (device_target or ms.get_context("device_target")) == "CPU":
        raise ConfigError("--distribute true shards the model over devices, which cannot execute on CPU; compile "
                          "the plan with `pangu dryrun --run_type predict` and run it on GPU or Ascend devices")
    try:
        init()
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError("--distribute true found no process group (start it with scripts/run_distribute_predict.sh "
                          f"and a rank table, or mpirun): {first}") from None
    return get_rank(), get_group_size()


def start_devices(args: argparse.Namespace) -> tuple[int, int]:
    """Select `--device_target`/`--device_id`; with `--distribute`, join the process group. (rank, device count)."""
    if args.device_target:
        import mindspore as ms

        ms.set_context(device_target=args.device_target, device_id=args.device_id)
    return start_distributed(args.device_target) if args.distribute else (0, 1)


def run(args: argparse.Namespace) -> int:
    if args.export and not hasattr(args, "output_dir"):  # the reference exports through predict.py --export 1
        from pangu_zoo.serving import export_cli

        args.output_dir, args.overwrite, args.no_tokenizer = ".", False, False
        return export_cli.run(args)
    if args.enable_client:
        return run_client(args)
    if not args.load_ckpt_path:
        raise InputError("--load_ckpt_path is required (or --enable_client to use a running server)")
    rank, device_num = start_devices(args)
    from pangu_zoo.tokenizers import load_tokenizer, tokenizer_kind_for

    model_dir = _model_dir(args)
    from pangu_zoo.checkpoint.loader import load_model  # MindSpore loads here, not when the parser is built

    model = load_model(model_dir, args.mode, args.strategy_load_ckpt_path or None, **load_overrides(args))
    if args.distribute:
        from pangu_zoo.parallel.inference import distribute_for_inference

        # each rank keeps its slice of the whole weights when the graphs first compile
        distribute_for_inference(model, device_num, rank)
        logger.info("rank %d of %d: model parallel over all devices", rank, device_num)
    tokenizer = load_tokenizer(args.tokenizer or tokenizer_kind_for(model.config), args.tokenizer_path)
    logger.info("model %s (%s, --mode %s)", model_dir, model.config.family, args.mode)
    speaks = rank == 0  # every rank runs every graph (they exchange activations); rank 0 prints
    # every rank must draw the same tokens, so sharded runs always seed (0 unless --seed says otherwise)
    seed = 0 if args.distribute and args.seed is None else args.seed
    if args.eval_task == "c3":
        if not args.eval_data_url:
            raise InputError("--eval_task c3 needs --eval_data_url, the folder with c3-d-dev.json")
        from pangu_zoo.evaluation.c3 import evaluate_c3

        result = evaluate_c3(model, tokenizer, args.eval_data_url, limit=args.eval_limit, progress=speaks)
        if speaks:
            print({"top1_acc": round(result["top1_acc"], 4)})
        return 0
    sampling = reference_sampling(args.top_k_num, args.top_p, args.frequency_penalty, args.presence_penalty,
                                  args.temperature)
    end_token = default_end_tokens(tokenizer) if args.end_token is None else args.end_token
    for prompt in _prompts(args):
        ids = tokenizer.encode(prompt)
        new = predict_ids(model, ids, sampling, args.max_generate_length, end_token, seed, args.use_past)
        if speaks:
            sys.stdout.write(output_text(tokenizer, ids + new) + "\n")
            sys.stdout.flush()
    return 0


def run_client(args: argparse.Namespace) -> int:
    """The reference's `--enable_client`: generation or C3 through a running server's reference route."""
    from pangu_zoo.serving.client import evaluate_c3_remote, generate_remote, server_url

    url = server_url(args.server_ip, args.port)
    if args.eval_task == "c3":
        if not args.eval_data_url:
            raise InputError("--eval_task c3 needs --eval_data_url, the folder with c3-d-dev.json")
        result = evaluate_c3_remote(url, args.eval_data_url, limit=args.eval_limit)
        print({"top1_acc": round(result["top1_acc"], 4)})
        return 0
    for prompt in _prompts(args):
        sys.stdout.write(prompt + generate_remote(url, prompt) + "\n")
        sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """The script's entry: parse, run, and turn a `PanguError` into one line and exit status 2."""
    from pangu_zoo.cli import run_command

    return run_command(__name__, "predict.py", argv, "Generate text (or run C3) with a saved model, with the "
                       "reference predict.py's arguments.")

