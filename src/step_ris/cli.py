"""The ``step-ris`` command line. Each sub-command is a thin shell over the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("step_ris")


def _add_config_args(p: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    from .config import preset_names

    p.add_argument("--preset", default=default_preset, required=default_preset is None,
                   help=f"named config: {', '.join(preset_names())}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value with a dotted key, e.g. --set model.folds=2 (repeatable)")


def _resolve_config(args):
    from .config import apply_overrides, get_preset

    return apply_overrides(get_preset(args.preset), args.overrides)


# ----------------------------------------------------------------------------- commands


def cmd_info(args) -> int:
    from .model.info import format_info, model_info

    cfg = _resolve_config(args)
    info = model_info(cfg, vocab_size=args.vocab_size)
    if args.json:
        print(json.dumps({**info, "config": cfg.to_dict()}, indent=2))
    else:
        print(format_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="step-ris", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameter count per component and forward FLOPs of a preset")
    _add_config_args(p, default_preset="paper-1fold")
    p.add_argument("--vocab-size", type=int, default=10_000, help="vocabulary size to assume (default 10000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, OSError) as e:
        if args.verbose or os.environ.get("STEP_RIS_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
