"""`pangu serve MODEL_OR_EXPORT`: the HTTP server (chat page, reference routes, OpenAI-compatible API).

Given an exported folder (`export.py`), it serves its graphs with no model code. Given a model (a model
directory, a Hugging Face GPT-2 folder, released PanGu-alpha slices or a `.ckpt` file) it first exports it into
`--export_dir` and serves that export, as `serving_increment/start_pangu_standalone.sh` does; `--no_export`
serves the model's own graphs instead. The graphs are compiled before the server listens, the process id goes
to `--pid_file`, and SIGTERM or Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported folder (export.py), or a model to export first and serve")
    parser.add_argument("--tokenizer_path", help="tokenizer folder or file (default: the one in the export, or the "
                                                 "model folder when it holds one, as openPangu's do)")
    parser.add_argument("--tokenizer", choices=["pangu-alpha", "gpt2", "openpangu"],
                        help="default: from the model family")
    parser.add_argument("--mode", default="2.6B", help="preset that shapes released folders and .ckpt files")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--slots", type=int, default=8, help="requests decoded together (continuous batching)")
    parser.add_argument("--max_context", type=int, default=None,
                        help="prompt + generated tokens per request (default: the model's position table)")
    parser.add_argument("--queue_limit", type=int, default=64, help="waiting requests before 429")
    parser.add_argument("--max_prompt_tokens", type=int, default=None, help="default: max_context - 1")
    parser.add_argument("--max_tokens_limit", type=int, default=None, help="largest max_tokens a request may ask")
    parser.add_argument("--max_streams", type=int, default=32, help="concurrent streaming responses before 429")
    parser.add_argument("--threads", type=int, default=48, help="HTTP worker threads")
    parser.add_argument("--export_dir", default=".", help="where a model is exported before serving (default: .)")
    parser.add_argument("--no_export", action="store_true", help="serve the model's own graphs, not an export")
    parser.add_argument("--pid_file", help="write the server's process id here (removed on exit)")


def load_served_model(args: argparse.Namespace):
    """(model, tokenizer folder, tokenizer kind, end ids, name) for the path given."""
    from pangu_zoo.errors import CheckpointError
    from pangu_zoo.serving.exported import ExportedModel, find_export

    path = Path(args.model)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    try:
        find_export(path)
        is_export = True
    except CheckpointError:
        is_export = False
    if not is_export:
        from pangu_zoo.checkpoint.loader import load_model

        model = load_model(path, args.mode, None, dropout_rate=0.0)
        # a Hugging Face model folder (openPangu's) carries its tokenizer
        tokenizer_path = args.tokenizer_path or (path if (path / "tokenizer_config.json").is_file() else None)
        if args.no_export:
            return model, tokenizer_path, None, (), path.name
        from pangu_zoo.serving.export import export_model
        from pangu_zoo.tokenizers import tokenizer_kind_for

        kind = args.tokenizer or tokenizer_kind_for(model.config)
        path = export_model(model, args.export_dir, tokenizer_path, kind, overwrite=True)
        log.info("exported %s to %s", args.model, path)
    exported = ExportedModel(path)
    return exported, exported.tokenizer_dir, exported.tokenizer_kind, exported.end_ids, Path(args.model).name


def _interrupt(*_) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the server as Ctrl-C does: the engine stops, the pid file goes


def run(args: argparse.Namespace) -> int:
    from pangu_zoo.errors import ConfigError
    from pangu_zoo.serving.app import Limits, create_app
    from pangu_zoo.serving.engine import Engine
    from pangu_zoo.serving.wsgi import make_server
    from pangu_zoo.tokenizers import load_tokenizer, tokenizer_kind_for
    from pangu_zoo.tokenizers.special import default_end_tokens, special_ids

    model, tokenizer_dir, kind, end_ids, name = load_served_model(args)
    tokenizer_path = args.tokenizer_path or tokenizer_dir
    if tokenizer_path is None:
        raise ConfigError("no tokenizer: pass --tokenizer_path (the export holds none)")
    tokenizer = load_tokenizer(args.tokenizer or kind or tokenizer_kind_for(model.config), tokenizer_path)
    engine = Engine(model, tokenizer, slots=args.slots, max_context=args.max_context, queue_limit=args.queue_limit,
                    end_ids=tuple(end_ids) or default_end_tokens(tokenizer),
                    hidden_ids=frozenset(special_ids(tokenizer)))
    engine.start()
    engine.ready.wait()
    limits = Limits(max_prompt_tokens=args.max_prompt_tokens or engine.max_context - 1,
                    max_tokens=args.max_tokens_limit or engine.max_context - 1, max_streams=args.max_streams)
    app = create_app(engine, tokenizer, name, limits)
    server = make_server(app, args.host, args.port, threads=args.threads)
    pid_file = Path(args.pid_file) if args.pid_file else None
    if pid_file:
        pid_file.write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"serving {name} ({model.config.family}) on http://{args.host}:{server.effective_port}/ "
          f"with {args.slots} slots", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        engine.stop()
        if pid_file and pid_file.exists():
            pid_file.unlink()
    return 0
