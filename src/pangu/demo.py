"""`pangu demo`: the README's main job on an embedded default.

Builds a small PanGu-alpha (random weights, fixed seed), saves it, loads it back, and generates a
continuation of a Chinese prompt with the released tokenizer, showing the KV-cache speed. Training the
small model on a corpus before generating comes with the training milestone.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

DEFAULT_TOKENIZER_DIR = Path.home() / ".cache" / "pangu" / "tokenizers" / "pangu-alpha"
DEFAULT_PROMPT = "中国的首都是北京，"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="pangu_alpha_tiny", help="preset name (default: pangu_alpha_tiny)")
    parser.add_argument("--tokenizer_dir", default=str(DEFAULT_TOKENIZER_DIR),
                        help="folder with vocab.model (get it with: pangu fetch-tokenizer pangu-alpha --out DIR)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="output/demo_model", help="where the model is saved")


def run(args: argparse.Namespace) -> int:
    import mindspore as ms

    from pangu.config import count_parameters
    from pangu.errors import ConfigError
    from pangu.models import build_model, from_pretrained
    from pangu.tokenizers import load_tokenizer

    tokenizer_dir = Path(args.tokenizer_dir)
    if not (tokenizer_dir / "vocab.model").is_file():
        raise ConfigError(f"no PanGu-alpha tokenizer in {tokenizer_dir}; run "
                          f"`pangu fetch-tokenizer pangu-alpha --out {tokenizer_dir}` first")
    tokenizer = load_tokenizer("pangu-alpha", tokenizer_dir)
    ms.set_seed(args.seed)
    model = build_model(args.model, dropout_rate=0.0)
    print(f"built {args.model}: {count_parameters(model.config):,} parameters")
    model.save_pretrained(args.output_dir)
    model = from_pretrained(args.output_dir)
    print(f"saved and reloaded {args.output_dir}")

    prompt_ids = tokenizer.encode(args.prompt)
    start = time.perf_counter()
    out = model.generate([prompt_ids], max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eot_id)[0]
    elapsed = time.perf_counter() - start
    new_ids = out[len(prompt_ids):]
    print(f"prompt ids: {prompt_ids}")
    print(f"generated ids: {new_ids}")
    print(f"text: {args.prompt}{tokenizer.decode(new_ids)}")
    print(f"{len(new_ids)} tokens in {elapsed:.2f} s including graph compilation "
          "(random weights: the text is noise until the model is trained)")
    return 0
