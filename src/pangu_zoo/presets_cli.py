"""`pangu presets`: the named model sizes with their analytic parameter counts."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the full configs as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from pangu_zoo.config import count_parameters, get_preset, list_presets

    if args.json:
        print(json.dumps({name: get_preset(name).to_dict() for name in list_presets()}, indent=2))
        return 0
    width = max(len(name) for name in list_presets()) + 2
    print(f"{'preset':<{width}}{'layers':>7}{'hidden':>8}{'heads':>7}{'vocab':>8}{'parameters':>17}")
    for name in list_presets():
        c = get_preset(name)
        print(f"{name:<{width}}{c.num_layers:>7}{c.hidden_size:>8}{c.num_heads:>7}{c.vocab_size:>8}"
              f"{count_parameters(c):>17,}")
    return 0
