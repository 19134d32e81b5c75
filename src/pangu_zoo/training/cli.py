"""`python train.py` / `pangu train`: the reference's training arguments (pangu_alpha.md §6.1).

Runs on one device, data-parallel over several processes (`--distribute true` under msrun/mpirun), or with
a sharded plan (`--parallel_mode semi_auto_parallel` with `--op_level_model_parallel_num`, `--stage_num`,
`--micro_size`, `--optimizer_shard`, `--word_emb_dp`) on GPU/Ascend clusters. A sharded plan cannot execute
on CPU; `pangu dryrun` compiles it here with the same arguments and the same training-step builder.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pangu_zoo.arg_types import parse_bool
from pangu_zoo.lora_cli import add_training_arguments as add_lora_arguments
from pangu_zoo.lora_cli import apply_training_lora, save_training_lora

log = logging.getLogger(__name__)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=["pangu_alpha", "gpt2", "openpangu"], default="pangu_alpha")
    model.add_argument("--mode", default=None,
                       help="preset: 350M|1.3B|2.6B|13B|200B, any `pangu presets` name, or self_define (default: "
                            "2.6B; openpangu_embedded_1b with --model openpangu)")
    model.add_argument("--config", help="JSON file of ModelConfig fields (overrides --mode)")
    model.add_argument("--seq_length", type=int, default=1024)
    model.add_argument("--vocab_size", type=int, default=None)
    model.add_argument("--embedding_size", type=int, default=16384, help="hidden size for self_define")
    model.add_argument("--num_layers", type=int, default=64, help="layers for self_define")
    model.add_argument("--num_heads", type=int, default=128, help="heads for self_define")
    model.add_argument("--param_init_type", choices=["fp32", "fp16", "bf16"], default="fp32")
    model.add_argument("--dropout_rate", type=float, default=0.1)
    moe = parser.add_argument_group("mixture of experts (docs/moe.md)")
    moe.add_argument("--use_moe", type=int, choices=[0, 1], default=0, help="1: MoE FFN in every ordinary block")
    moe.add_argument("--expert_num", type=int, default=1, help="experts per MoE layer")
    moe.add_argument("--per_token_num_experts_chosen", type=int, default=1, help="experts each token takes (k)")
    moe.add_argument("--capacity_factor", type=float, default=1.1,
                     help="expert capacity = ceil(k x tokens per group x factor / experts)")
    moe.add_argument("--aux_loss_factor", type=float, default=0.05, help="weight of the load-balance loss")


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    par = parser.add_argument_group("parallel plan")
    par.add_argument("--device_num", type=int, default=1,
                     help="devices of a sharded plan (with --distribute the launched world size is used)")
    par.add_argument("--op_level_model_parallel_num", type=int, default=1, help="model (tensor) parallel ways")
    par.add_argument("--stage_num", type=int, default=1, help="pipeline stages")
    par.add_argument("--micro_size", type=int, default=1, help="micro-batches per step when pipelining")
    par.add_argument("--optimizer_shard", type=int, choices=[0, 1], default=0)
    par.add_argument("--optimizer_shard_threshold", type=int, default=None,
                     help="KB below which parameters are not optimizer-sharded (MindSpore default 64)")
    par.add_argument("--word_emb_dp", type=int, choices=[0, 1], default=1,
                     help="1: replicate the word table; 0: split it over the model-parallel ways")
    par.add_argument("--gradient_aggregation_group", type=int, default=4)
    par.add_argument("--expert_parallel_num", type=int, default=1,
                     help="ways the experts are split (must divide expert_num and the data-parallel ways)")
    par.add_argument("--enable_alltoall", type=int, choices=[0, 1], default=None,
                     help="accepted for the reference launchers: AllToAll is always on when expert_parallel_num > 1")
    par.add_argument("--opt_offload", type=int, choices=[0, 1], default=0,
                     help="1: optimizer state and update on the host (AdamWeightDecay only)")
    par.add_argument("--per_batch_size", type=int, required=True, help="rows per data-parallel replica")
    par.add_argument("--optimizer", choices=["adam", "lamb"], default="adam")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_parallel_arguments(parser)
    add_lora_arguments(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--data_url", required=True, help="folder (or file) written by `pangu preprocess`")
    data.add_argument("--stage", choices=["pretrain", "sft"], default="pretrain",
                      help="sft: --data_url is packed instruction data from `pangu sft-preprocess` (its row length "
                           "must equal --seq_length); see docs/finetune.md")
    data.add_argument("--eod_reset", type=int, choices=[0, 1], default=1)
    data.add_argument("--eod_id", type=int, default=None, help="default: the id recorded by preprocess")
    data.add_argument("--epoch_size", type=int, default=1)
    data.add_argument("--max_steps", type=int, default=None, help="stop after this many steps")
    data.add_argument("--seed", type=int, default=1)
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--start_lr", type=float, default=5e-5)
    optim.add_argument("--end_lr", type=float, default=1e-6)
    optim.add_argument("--warmup_step", type=int, default=2000)
    optim.add_argument("--decay_steps", type=int, default=200000)
    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument("--save_checkpoint_path", default="output/checkpoints")
    ckpt.add_argument("--save_checkpoint_steps", type=int, default=2000)
    ckpt.add_argument("--keep_checkpoint_max", type=int, default=1)
    ckpt.add_argument("--ckpt_name_prefix", default="pangu")
    ckpt.add_argument("--pre_trained", type=parse_bool, default=False, help="resume from the newest checkpoint")
    ckpt.add_argument("--incremental_training", type=int, choices=[0, 1], default=0)
    ckpt.add_argument("--load_ckpt_path",
                      help="checkpoint to start from (incremental training): model directory, Hugging Face GPT-2 "
                           "folder, released PanGu-alpha folder (slices + strategy + .npy; shaped by --mode) or a "
                           "mindformers-named .ckpt file (shaped by --mode), as predict.py takes")
    ckpt.add_argument("--load_ckpt_name", default=None, help="sub-directory of --load_ckpt_path, when it exists")
    ckpt.add_argument("--hidden_act", choices=["gelu", "fast_gelu"], default=None,
                      help="FFN activation (default: the preset's or model folder's; tanh-GELU for released folders "
                           "and .ckpt files); fast_gelu for checkpoints trained with MSM's Ascend code")
    ckpt.add_argument("--save_pretrained", help="also save the final model here as a model directory")
    ckpt.add_argument("--log_file", help="JSON-lines log (default: <save_checkpoint_path>/train_log.jsonl)")
    ckpt.add_argument("--peak_gflops", type=float, default=332.0, help="device fp32 peak for the MFU figure")
    par = parser.add_argument_group("devices")
    par.add_argument("--device_target", choices=["CPU", "GPU", "Ascend"], default="CPU")
    par.add_argument("--distribute", type=parse_bool, default=False)
    par.add_argument("--parallel_mode", default="data_parallel",
                     choices=["data_parallel", "semi_auto_parallel", "auto_parallel"])
    par.add_argument("--full_batch", type=int, choices=[0, 1], default=1,
                     help="sharded plans: every rank reads the whole global batch (the only supported way)")
    par.add_argument("--sink_size", type=int, default=2, help="accepted for compatibility (steps run one by one)")
    par.add_argument("--strategy_load_ckpt_path", default="", help="strategy file of a sharded run to resume")
    par.add_argument("--run_type", default="train", choices=["train"])


def model_config(args: argparse.Namespace):
    """The ModelConfig the arguments describe."""
    from pangu_zoo.config import config_from_dict, get_preset
    from pangu_zoo.errors import ConfigError

    overrides = {"max_position_embeddings": args.seq_length, "param_dtype": args.param_init_type,
                 "dropout_rate": args.dropout_rate}
    moe = moe_config(args)
    if args.use_moe:  # otherwise a --config file's own MoE settings stand
        overrides["moe"] = moe
    if args.vocab_size:
        overrides["vocab_size"] = args.vocab_size
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"--config {path} does not exist")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConfigError(f"--config {path} is not valid JSON: {error}") from error
        return config_from_dict({**values, **overrides})
    mode = args.mode or ("openpangu_embedded_1b" if args.model == "openpangu" else "2.6B")
    if mode == "self_define":
        base = {"pangu_alpha": "pangu_alpha_tiny", "gpt2": "gpt2-tiny",
                "openpangu": "openpangu_embedded_tiny"}[args.model]
        return get_preset(base, hidden_size=args.embedding_size, num_layers=args.num_layers,
                          num_heads=args.num_heads, ffn_hidden_size=4 * args.embedding_size, **overrides)
    config = get_preset(mode, **overrides)
    if config.family != args.model and mode.lower() in ("350m", "1.3b", "2.6b", "13b", "200b"):
        raise ConfigError(f"--mode {mode} is a PanGu-alpha preset; for GPT-2 use gpt2, gpt2-medium, ...")
    if (config.family == "openpangu") != (args.model == "openpangu"):
        raise ConfigError(f"--mode {mode} is a {config.family} preset but --model is {args.model}; the openPangu "
                          "presets are openpangu_embedded_1b, openpangu_embedded_7b and openpangu_embedded_tiny")
    return config


def moe_config(args: argparse.Namespace):
    """The MoEConfig of the arguments: one expert (a dense FFN) unless --use_moe 1."""
    from pangu_zoo.config import MoEConfig
    from pangu_zoo.errors import ConfigError

    if not args.use_moe:
        if args.expert_num > 1:
            raise ConfigError(f"--expert_num {args.expert_num} needs --use_moe 1")
        return MoEConfig()
    if args.expert_num < 2:
        raise ConfigError("--use_moe 1 needs --expert_num of at least 2")
    return MoEConfig(expert_num=args.expert_num, num_experts_chosen=args.per_token_num_experts_chosen,
                     capacity_factor=args.capacity_factor, aux_loss_factor=args.aux_loss_factor)


def parallel_config(args: argparse.Namespace, device_num: int):
    """The ParallelConfig of the arguments for `device_num` devices; data_parallel is what remains."""
    from pangu_zoo.config import ParallelConfig
    from pangu_zoo.errors import ConfigError

    mp, stages = args.op_level_model_parallel_num, args.stage_num
    if mp < 1 or stages < 1 or device_num < 1:
        raise ConfigError("--op_level_model_parallel_num, --stage_num and --device_num must be at least 1")
    if device_num % (mp * stages):
        raise ConfigError(f"device_num ({device_num}) is not a multiple of op_level_model_parallel_num ({mp}) x "
                          f"stage_num ({stages}) = {mp * stages}; dp x mp x stages must equal the device count.")
    return ParallelConfig(data_parallel=device_num // (mp * stages), model_parallel=mp, pipeline_stage=stages,
                          micro_batch_num=args.micro_size, optimizer_shard=bool(args.optimizer_shard),
                          vocab_emb_dp=bool(args.word_emb_dp),
                          gradient_aggregation_group=args.gradient_aggregation_group,
                          expert_parallel=args.expert_parallel_num)


def checked_plan(args: argparse.Namespace, config, device_num: int, per_batch_size: int | None = None):
    """parallel_config + the plan checks (clear errors; warnings are logged)."""
    from pangu_zoo.parallel.strategy import check_plan

    parallel = parallel_config(args, device_num)
    for warning in check_plan(config, parallel, device_num, per_batch_size):
        log.warning(warning)
    return parallel


def init_communication() -> tuple[int, int]:
    """(rank, world size) after MindSpore's `init()`; outside a launcher that raises with a C++ stack, so
    this says how to launch instead."""
    from mindspore.communication import get_group_size, get_rank, init

    from pangu_zoo.errors import ConfigError

    try:
        init()
    except (RuntimeError, ValueError) as error:
        lines = str(error).strip().splitlines()
        reason = lines[0][:200] if lines else type(error).__name__
        raise ConfigError("--distribute true needs a launcher: start training under msrun or mpirun "
                          "(scripts/run_distribute_train_msrun.sh or run_distribute_train_gpu.sh); "
                          f"MindSpore could not set up communication: {reason}") from error
    return get_rank(), get_group_size()


def starting_model(args: argparse.Namespace, config):
    """The model training starts from: `config` randomly initialised, or the checkpoint `--load_ckpt_path` names,
    loaded by the same function as predict.py (`config` shapes the layouts without a config of their own)."""
    from pangu_zoo.checkpoint.loader import checkpoint_path, load_model
    from pangu_zoo.errors import ConfigError
    from pangu_zoo.models import build_model

    activation = {"hidden_act": args.hidden_act} if args.hidden_act else {}
    if not (args.incremental_training or args.load_ckpt_path):
        return build_model(config, **activation)
    if not args.load_ckpt_path:
        raise ConfigError("--incremental_training 1 needs --load_ckpt_path (a model directory, released "
                          "PanGu-alpha folder or .ckpt file)")
    path = checkpoint_path(args.load_ckpt_path, args.load_ckpt_name)
    log.info("starting from %s", path)
    model = load_model(path, config, args.strategy_load_ckpt_path or None, dropout_rate=args.dropout_rate,
                       **activation)
    if model.config.family == "openpangu":  # rotary positions, no table to fit: train at --seq_length
        model.config = model.config.replace(max_position_embeddings=args.seq_length)
    return model


def run(args: argparse.Namespace) -> int:
    import mindspore as ms

    from pangu_zoo.config import ParallelConfig
    from pangu_zoo.errors import ConfigError
    from pangu_zoo.parallel.context import SHARDED_MODES, configure_parallel
    from pangu_zoo.training.schedule import check_schedule
    from pangu_zoo.training.trainer import TrainSettings, train

    sharded = args.parallel_mode in SHARDED_MODES
    if not sharded and (args.op_level_model_parallel_num > 1 or args.stage_num > 1):
        raise ConfigError("--op_level_model_parallel_num and --stage_num above 1 need "
                          "--parallel_mode semi_auto_parallel")
    if sharded and args.device_target == "CPU":
        raise ConfigError("sharded plans (semi/auto parallel) cannot execute on CPU; compile the plan with "
                          "`pangu dryrun` (same arguments) and train it on GPU or Ascend devices")
    if sharded and not args.full_batch:
        raise ConfigError("sharded plans read the whole global batch on every rank: use --full_batch 1")
    data_path = Path(args.data_url)
    if args.stage == "pretrain" and not data_path.exists():  # SFT data is named by its output prefix
        raise ConfigError(f"--data_url {data_path} does not exist; create it with `pangu preprocess`")
    check_schedule(args.start_lr, args.end_lr, args.warmup_step, args.decay_steps)
    if args.opt_offload and args.optimizer != "adam":
        raise ConfigError(f"--opt_offload 1 offloads AdamWeightDecay; it cannot offload --optimizer {args.optimizer}")
    config = model_config(args)
    if ms.get_context("device_target") != args.device_target:  # setting it again after start-up is an error
        ms.set_device(args.device_target)
    rank, rank_size, parallel = 0, 1, ParallelConfig()
    if args.distribute:
        rank, rank_size = init_communication()
        if sharded:
            parallel = checked_plan(args, config, rank_size, args.per_batch_size)
            configure_parallel(parallel, rank_size, args.parallel_mode, strategy_load_file=args.strategy_load_ckpt_path,
                               strategy_save_file=str(Path(args.save_checkpoint_path) / "strategy.ckpt"),
                               optimizer_shard_threshold_kb=args.optimizer_shard_threshold)
        else:
            configure_parallel(parallel, rank_size, "data_parallel")
    elif sharded:
        raise ConfigError("sharded plans need --distribute true under msrun/mpirun")
    ms.set_seed(args.seed)
    model = starting_model(args, config)
    adapted = apply_training_lora(args, model)  # --lora_rank: only adapters train
    settings = TrainSettings(
        data_path=str(data_path), per_batch_size=args.per_batch_size, epochs=args.epoch_size,
        max_steps=args.max_steps, start_lr=args.start_lr, end_lr=args.end_lr, warmup_steps=args.warmup_step,
        decay_steps=args.decay_steps, optimizer=args.optimizer, seed=args.seed, eod_reset=bool(args.eod_reset),
        eod_id=args.eod_id, save_dir=args.save_checkpoint_path, save_steps=args.save_checkpoint_steps,
        keep_checkpoints=args.keep_checkpoint_max, prefix=args.ckpt_name_prefix, resume=args.pre_trained,
        log_file=args.log_file, peak_gflops=args.peak_gflops, rank=rank, rank_size=rank_size, parallel=parallel,
        full_batch=sharded, stage=args.stage, opt_offload=bool(args.opt_offload))
    records = train(model, settings)
    if records:
        print(f"trained {len(records)} steps: loss {records[0]['loss']:.4f} -> {records[-1]['loss']:.4f}")
    if adapted and rank == 0:
        save_training_lora(args, model)
    if args.save_pretrained and rank == 0:
        model.save_pretrained(args.save_pretrained)
        print(f"saved the model to {args.save_pretrained}")
    return 0
