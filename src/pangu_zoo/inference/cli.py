"""`pangu generate`: continue prompts with a saved model directory (ours, Hugging Face GPT-2 or openPangu-Embedded,
whose prompts are always chat turns)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", required=True, help="directory with config.json and weights")
    parser.add_argument("--tokenizer", choices=["pangu-alpha", "gpt2", "openpangu"],
                        help="default: from the model family")
    parser.add_argument("--tokenizer_path", help="tokenizer folder or vocabulary file (default: --model_dir, where "
                                                 "openPangu keeps tokenizer.model and tokenizer_config.json)")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--input_file", help="one prompt per line, generated as one batch")
    parser.add_argument("--max_new_tokens", type=int, default=50)
    parser.add_argument("--do_sample", action="store_true")
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    chat = parser.add_argument_group("chat template (models fine-tuned with `pangu train --stage sft`)")
    chat.add_argument("--chat", action="store_true",
                      help="each prompt is a user turn of the chat template; print the reply, which ends at the "
                           "turn end")
    chat.add_argument("--system", default=None, help="system prompt of the chat template")
    for marker in ("--turn_start", "--turn_end"):
        chat.add_argument(marker, default=None, help="as given to `pangu sft-preprocess` (default: the tokenizer's)")


def read_prompts(args: argparse.Namespace, default: str | None = None) -> list[str]:
    """Prompts from --prompt (repeatable) and --input_file (one per line); `default` when there are none."""
    from pangu_zoo.errors import InputError

    prompts = list(args.prompt or [])
    if args.input_file:
        path = Path(args.input_file)
        if not path.is_file():
            raise InputError(f"prompt file {path} does not exist")
        prompts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts and default is not None:
        return [default]
    if not prompts:
        raise InputError("give at least one --prompt or an --input_file")
    return prompts


def run(args: argparse.Namespace) -> int:
    from pangu_zoo.models import from_pretrained
    from pangu_zoo.tokenizers import load_tokenizer, tokenizer_kind_for

    prompts = read_prompts(args)
    model = from_pretrained(args.model_dir, dropout_rate=0.0)
    tokenizer = load_tokenizer(args.tokenizer or tokenizer_kind_for(model.config),
                               args.tokenizer_path or args.model_dir)
    if args.chat or model.config.family == "openpangu":  # a chat model: prompts are user turns
        return _chat(args, model, tokenizer, prompts)
    encoded = [tokenizer.encode(p) for p in prompts]
    outputs = model.generate(encoded, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                             top_k=args.top_k, top_p=args.top_p, temperature=args.temperature, seed=args.seed,
                             eos_token_id=tokenizer.eot_id)
    for prompt, ids, out in zip(prompts, encoded, outputs, strict=True):
        new = out[len(ids):]
        if new and new[-1] == tokenizer.eot_id:
            new = new[:-1]
        sys.stdout.write(prompt + tokenizer.decode(new) + "\n")
    return 0


def _chat(args: argparse.Namespace, model, tokenizer, prompts: list[str]) -> int:
    """Each prompt as the user turn of the chat template (after --system); print each reply on its own line."""
    from pangu_zoo.data.sft.chat_template import encode_chat
    from pangu_zoo.data.sft.markers import MarkerEncoder, markers_for
    from pangu_zoo.tokenizers.special import output_text

    markers = markers_for(tokenizer, args.turn_start, args.turn_end)
    turn_end = MarkerEncoder(tokenizer, markers).turn_end_id
    system = [{"role": "system", "content": args.system}] if args.system else []
    encoded = [encode_chat(system + [{"role": "user", "content": p}], tokenizer, markers) for p in prompts]
    outputs = model.generate(encoded, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                             top_k=args.top_k, top_p=args.top_p, temperature=args.temperature, seed=args.seed,
                             eos_token_id=turn_end)
    for ids, out in zip(encoded, outputs, strict=True):
        reply = out[len(ids):]
        reply = reply[:-1] if reply and reply[-1] == turn_end else reply
        sys.stdout.write(output_text(tokenizer, reply) + "\n")
    return 0
