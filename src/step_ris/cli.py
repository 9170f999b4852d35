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


def cmd_data_shapesref(args) -> int:
    from .data.shapesref import generate_shapesref

    summary = generate_shapesref(Path(args.out), images=args.images, seed=args.seed, size=args.size,
                                 progress=not args.quiet, occlusion=not args.no_occlusion, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def cmd_data_check(args) -> int:
    from .data.refer import check_dataset

    report = check_dataset(args.root, args.dataset)
    print(json.dumps(report, indent=2, default=str))
    return 0 if report.get("ok") else 1


def _config_for_run(args):
    """Config of a train command: the preset + overrides, or the saved one when resuming."""
    from .config import ExperimentConfig, apply_overrides, get_preset

    if args.resume and args.preset is None:
        path = Path(args.out) / "config.json"
        if not path.is_file():
            raise ValueError(f"--resume: {path} not found; is {args.out} a step-ris run folder?")
        cfg = ExperimentConfig.from_dict(json.loads(path.read_text()))
        overrides = list(args.overrides)
    else:
        cfg = get_preset(args.preset or "shapes-cpu")
        overrides = list(args.overrides)
        if args.dataset:
            overrides.append(f"data.dataset={args.dataset}")
        if args.root:
            overrides.append(f"data.root={args.root}")
    if args.iters is not None:
        overrides.append(f"train.iters={args.iters}")
    return apply_overrides(cfg, overrides)


def cmd_train(args) -> int:
    from .engine.train import train

    cfg = _config_for_run(args)
    result = train(cfg, args.out, resume=args.resume, device=args.device, progress=not args.quiet,
                   stop_after=args.stop_after)
    if "interrupted" in result:
        return 0 if result["interrupted"] == "stop_after" else 130
    return 0


def cmd_eval(args) -> int:
    from .engine.evaluate import evaluate, format_results
    from .pretrained import load_model_for_eval

    model, cfg, vocab, identity = load_model_for_eval(args.checkpoint, device=args.device)
    from .data.dataset import ReferDataset

    dataset = ReferDataset(args.root, args.dataset, args.split, vocab, cfg.model.image_size,
                           max_words=cfg.model.max_words, blank_language=cfg.data.blank_language)
    result = evaluate(model, dataset, batch_size=args.batch_size, device=args.device or "cpu", limit=args.limit,
                      progress=not args.quiet)
    result["checkpoint"] = identity
    result["config"] = cfg.to_dict()
    print(format_results(result))
    if args.json:
        from .engine.checkpoint import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2, sort_keys=True))
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

    p = sub.add_parser("data", help="datasets: generate ShapesRef, check a REFER folder")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("shapesref", help="generate the ShapesRef benchmark in the REFER layout")
    q.add_argument("--out", required=True, help="output folder (the REFER root)")
    q.add_argument("--images", type=int, required=True, help="number of scenes")
    q.add_argument("--seed", type=int, default=0, help="random seed (same seed: byte-identical files)")
    q.add_argument("--size", type=int, default=320, help="image side in pixels (default 320)")
    q.add_argument("--no-occlusion", action="store_true", help="never let objects overlap")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier ShapesRef output in --out")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_data_shapesref)
    q = data_sub.add_parser("check", help="verify a REFER dataset folder and count images, refs, sentences")
    q.add_argument("dataset", help="refcoco, refcoco+, refcocog, refcocog-umd, refclef, shapesref, shapesref+")
    q.add_argument("--root", required=True, help="data root holding the REFER layout")
    q.set_defaults(func=cmd_data_check)

    p = sub.add_parser("train", help="train STEP (single process, or under torchrun)")
    p.add_argument("--preset", default=None, help="named config (default shapes-cpu; with --resume: the run's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--dataset", help="dataset name (data.dataset), e.g. shapesref or refcoco")
    p.add_argument("--root", help="data root (data.root)")
    p.add_argument("--out", required=True, help="run folder: config, checkpoints, metrics, TensorBoard logs")
    p.add_argument("--iters", type=int, help="training steps (train.iters)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--stop-after", type=int, help="save and exit after this many steps (continue with --resume)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="score a checkpoint on a dataset split (oIoU, mIoU, prec@X)")
    p.add_argument("--checkpoint", required=True, help="a run's last.pt, or a model folder / name")
    p.add_argument("--dataset", required=True, help="dataset name, e.g. shapesref or refcoco")
    p.add_argument("--root", required=True, help="data root")
    p.add_argument("--split", required=True, help="split name, e.g. val, testA, testB")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--limit", type=int, default=0, help="score a seeded subset of this many samples (0 = all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from .engine.train import TrainingError

    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, TrainingError) as e:
        if args.verbose or os.environ.get("STEP_RIS_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
