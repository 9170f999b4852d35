"""The ``step-ris`` command line. Each sub-command is a thin shell over the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from .constants import EXPLAIN_VIEWS, MASK_THRESHOLD

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
    from ._extras import require

    for module in ("pycocotools", "shapely"):  # the generator's geometry and COCO masks
        require(module, extra="data", purpose="step-ris data shapesref")
    from .data.shapesref import generate_shapesref

    summary = generate_shapesref(Path(args.out), images=args.images, seed=args.seed, size=args.size,
                                 progress=not args.quiet, occlusion=not args.no_occlusion, overwrite=args.overwrite,
                                 generalized=args.generalized, extra_train=args.extra_train,
                                 counting_ordinals=args.counting_ordinals)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def cmd_data_check(args) -> int:
    from .data.check import check_dataset

    report = check_dataset(args.root, args.dataset)
    print(json.dumps(report, indent=2, default=str))
    return 0 if report.get("ok") else 1


def cmd_data_convert_shapesref(args) -> int:
    from .data.jsonl import convert_refer_to_jsonl

    print(json.dumps(convert_refer_to_jsonl(args.root, args.dataset, args.out), indent=2, sort_keys=True))
    return 0


def _config_for_run(args):
    """Config of a train command: the preset + overrides, or the saved one when resuming."""
    from .config import ExperimentConfig, apply_overrides, get_preset, read_json

    if args.resume and args.preset is None:
        cfg = ExperimentConfig.from_dict(read_json(Path(args.out) / "config.json", "run config",
                                                   f"is {args.out} a step-ris run folder?"))
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
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    return apply_overrides(cfg, overrides)


def cmd_train(args) -> int:
    from .engine.train import train

    cfg = _config_for_run(args)
    result = train(cfg, args.out, resume=args.resume, device=args.device, progress=not args.quiet,
                   stop_after=args.stop_after)
    if "interrupted" in result:  # saved; exit 128 + the signal (130 Ctrl-C, 143 SIGTERM) so scripts can tell
        name = result["interrupted"]
        return 0 if name == "stop_after" else 128 + int(getattr(signal.Signals, name, signal.SIGTERM))
    return 0


def cmd_eval(args) -> int:
    import time

    from .data.dataset import ReferDataset
    from .engine.evaluate import evaluate, format_results
    from .precision import model_precision, resolve_precision
    from .pretrained import load_pretrained

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} must be >= 1")
    if args.threads < 0:
        raise ValueError(f"--threads {args.threads} must be >= 1 (or 0: PyTorch's choice)")
    device = args.device or "cpu"
    dtype = resolve_precision(args.precision, device)  # refused before the model loads
    loaded = load_pretrained(args.checkpoint, device=device)
    dtype = model_precision(args.precision, device, match_head=loaded.model.match is not None)
    cfg = loaded.config
    dataset = ReferDataset(args.root, args.dataset, args.split, loaded.vocab, cfg.model.image_size,
                           max_words=cfg.model.max_words, blank_language=cfg.data.blank_language)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = evaluate(loaded.model, dataset, batch_size=args.batch_size, device=device, limit=args.limit,
                      progress=not args.quiet, crf=args.crf, precision=dtype)
    result["seconds"] = round(time.perf_counter() - start, 3)
    log.info("evaluated %d expressions in %.1f s (%s)", result["n"], result["seconds"], result["precision"])
    result["checkpoint"] = loaded.identity
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

    p = sub.add_parser("data", help="datasets: generate ShapesRef, check a dataset folder, convert to jsonl")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("shapesref", help="generate the ShapesRef benchmark in the REFER layout")
    q.add_argument("--out", required=True, help="output folder (the REFER root)")
    q.add_argument("--images", type=int, required=True, help="number of scenes")
    q.add_argument("--seed", type=int, default=0, help="random seed (same seed: byte-identical files)")
    q.add_argument("--size", type=int, default=320, help="image side in pixels (default 320)")
    q.add_argument("--extra-train", type=int, default=0, metavar="N",
                   help="append N more scenes, all in train; val and test stay those of the same call without it")
    q.add_argument("--counting-ordinals", action="store_true",
                   help="train split only: prefer ordinals that need counting (\"the second of three circles\") "
                        "to ones that are also the other extreme; val and test unchanged (docs/shapesref.md)")
    q.add_argument("--no-occlusion", action="store_true", help="never let objects overlap")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier ShapesRef output in --out")
    q.add_argument("--generalized", action="store_true",
                   help="also write ShapesRef-g (shapesref-g/, gRefCOCO layout): no-target and multi-target "
                        "expressions beside the single-target ones (docs/shapesref.md)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_data_shapesref)
    q = data_sub.add_parser("check", help="verify a dataset folder and count images, refs, sentences")
    q.add_argument("dataset", help="refcoco, refcoco+, refcocog, refcocog-umd, refclef, shapesref, shapesref+, "
                                   "shapesref-g, grefcoco (gRefCOCO layout: no-target and multi-target refs), "
                                   "or jsonl (your own data: instances.json + refs.jsonl + images/)")
    q.add_argument("--root", required=True, help="data root holding the REFER layout (jsonl: the folder itself)")
    q.set_defaults(func=cmd_data_check)
    q = data_sub.add_parser("convert-shapesref", help="write a ShapesRef set in the jsonl layout (your-own-data form)")
    q.add_argument("--root", required=True, help="the ShapesRef output folder (step-ris data shapesref --out)")
    q.add_argument("--out", required=True, help="new folder: instances.json, refs.jsonl, images/")
    q.add_argument("--dataset", choices=("shapesref", "shapesref+"), default="shapesref",
                   help="which expressions (default shapesref)")
    q.set_defaults(func=cmd_data_convert_shapesref)

    p = sub.add_parser("train", help="train STEP (single process, or under torchrun)")
    p.add_argument("--preset", default=None, help="named config (default shapes-cpu; with --resume: the run's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--dataset", help="dataset name (data.dataset), e.g. shapesref, refcoco or jsonl (your own data)")
    p.add_argument("--root", help="data root (data.root)")
    p.add_argument("--out", required=True, help="run folder: config, checkpoints, metrics, TensorBoard logs")
    p.add_argument("--iters", type=int, help="training steps (train.iters)")
    p.add_argument("--init-from", metavar="MODEL",
                   help="fine-tune: start from this model's weights and vocabulary (a bundled name such as "
                        "shapes-cpu, a model folder, a run folder or checkpoint; train.init_from)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--stop-after", type=int, help="save and exit after this many steps (continue with --resume)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="score a checkpoint on a dataset split (oIoU, mIoU, prec@X)")
    p.add_argument("--checkpoint", required=True, help="a run's last.pt, or a model folder / name")
    p.add_argument("--dataset", required=True, help="dataset name, e.g. shapesref, refcoco or jsonl (your own data)")
    p.add_argument("--root", required=True, help="data root")
    p.add_argument("--split", required=True, help="split name, e.g. val, testA, testB")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--limit", type=int, default=0, help="score a seeded subset of this many samples (0 = all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crf", action="store_true",
                   help="DenseCRF post-processing at the original resolution (as the '+DCRF' baselines of "
                        "Table 2; needs pip install 'step-ris[crf]')")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="fp32 (default), bf16 autocast, or auto: bf16 where the GPU / CPU (AMX, AVX512-bf16) "
                        "runs it fast, else fp32")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch (default: PyTorch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


# ----------------------------------------------------------------------------- inference: predict, demo, export

from .fileio import IMAGE_FORMATS as _IMAGE_FORMATS  # noqa: E402 - the one encoder's formats
from .fileio import LOSSY_SUFFIXES as _LOSSY  # noqa: E402


def _check_output(path: str | None, flag: str, inputs: list[Path]) -> Path | None:
    """An output image path: known format (lossless for masks), existing folder, not an input file."""
    if path is None:
        return None
    out = Path(path)
    allowed = [s for s in _IMAGE_FORMATS if flag != "--out" or s not in _LOSSY]
    if out.suffix.lower() not in allowed:
        raise ValueError(f"{flag} {out}: unsupported extension {out.suffix or '(none)'!r}; use one of "
                         f"{', '.join(sorted(allowed))}" + (" (a mask must not be saved lossy)" if flag == "--out"
                                                            else ""))
    if out.is_dir():
        raise ValueError(f"{flag} {out} is a folder; give a file name, e.g. {out / 'mask.png'}")
    if not out.parent.is_dir():
        raise ValueError(f"{flag} {out}: the folder {out.parent} does not exist")
    if any(out.resolve() == p.resolve() for p in inputs):
        raise ValueError(f"{flag} {out} is the input image; choose another output file")
    return out


def _image_bytes(image, path: Path) -> bytes:
    from .fileio import image_bytes

    return image_bytes(image, path.suffix.lower())


def cmd_predict(args) -> int:
    from .fileio import atomic_write_files
    from .predictor import Predictor, expression_words

    if args.batch:
        stray = [f for f, v in (("IMAGE", args.image), ("--out", args.out), ("--overlay", args.overlay),
                                ("--explain", args.explain)) if v]
        if stray:
            raise ValueError(f"--batch takes its images and expressions from the JSONL file; drop {', '.join(stray)}")
        if not args.out_dir:
            raise ValueError("--batch needs --out-dir DIR (where the masks and results.jsonl go)")
        from .batch import predict_jsonl, results_path

        if Path(args.batch).is_dir():
            raise ValueError(f"--batch {args.batch} is a directory; give the JSONL file")
        if not Path(args.batch).is_file():
            raise ValueError(f"--batch {args.batch}: file not found")
        try:
            results_path(args.batch, args.out_dir, args.results)  # refused before the model loads
        except ValueError as e:
            raise ValueError(f"--results: {e}") from None
        predictor = Predictor.from_pretrained(args.model, device=args.device, threshold=args.threshold,
                                              precision=args.precision)
        summary = predict_jsonl(predictor, args.batch, args.out_dir, args.results, progress=not args.quiet)
        print(json.dumps(summary, indent=2))
        if summary["failed"]:
            print(f"error: {summary['failed']} of {summary['total']} lines failed; see the 'error' field in "
                  f"{summary['results']}", file=sys.stderr)
            return 1
        return 0

    if args.image is None or args.expression is None:
        raise ValueError('give an image and an expression (step-ris predict IMAGE "the red circle"), '
                         "or --batch pairs.jsonl --out-dir DIR")
    if args.out_dir or args.results:
        raise ValueError("--out-dir and --results belong to --batch mode; use --out for one image")
    expression_words(args.expression)  # fail before loading the model
    image = Path(args.image)
    if image.is_dir():
        raise ValueError(f"{image}: is a directory, not an image file")
    if not image.is_file():
        raise ValueError(f"{image}: image file not found")
    outputs = {flag: _check_output(value, flag, [image]) for flag, value in
               (("--out", args.out), ("--overlay", args.overlay), ("--explain", args.explain))}
    paths = [p for p in outputs.values() if p is not None]
    if len({p.resolve() for p in paths}) != len(paths):
        raise ValueError("--out, --overlay and --explain must be different files")
    if outputs["--explain"] is not None:
        from ._extras import require

        require("matplotlib", extra="viz", purpose="--explain (the Figure-4 view)")

    predictor = Predictor.from_pretrained(args.model, device=args.device, threshold=args.threshold,
                                          precision=args.precision)
    rgb = predictor.load(image)
    prediction = predictor.predict(rgb, args.expression)

    from .visualize import explain_figure, mask_image, overlay

    files: dict[Path, bytes] = {}
    if outputs["--out"] is not None:
        files[outputs["--out"]] = _image_bytes(mask_image(prediction.mask), outputs["--out"])
    if outputs["--overlay"] is not None:
        files[outputs["--overlay"]] = _image_bytes(overlay(rgb, prediction.mask), outputs["--overlay"])
    if outputs["--explain"] is not None:
        figure = explain_figure(prediction, rgb, view=args.view)
        files[outputs["--explain"]] = _image_bytes(figure, outputs["--explain"])
    atomic_write_files(files)
    print(json.dumps({**prediction.summary(), "image": str(image), "model": predictor.source,
                      "files": {flag.lstrip("-"): str(p) for flag, p in outputs.items() if p is not None}},
                     ensure_ascii=False, indent=2))
    if not prediction.matched:
        print(f"nothing in {image.name} matches {args.expression!r} (score {prediction.score:.3f}): the mask is empty",
              file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from .demo import serve

    serve(model=args.model, host=args.host, port=args.port, examples=args.examples, device=args.device,
          compile=args.compile)
    return 0


def cmd_export(args) -> int:
    if args.format == "onnx":
        from .export import export_pretrained_onnx

        if args.scores or args.overwrite:
            raise ValueError("--scores and --overwrite belong to --format folder")
        out = export_pretrained_onnx(args.model, args.out, opset=args.opset, check=not args.no_check)
    else:
        from .pretrained import export_pretrained

        scores = None
        if args.scores:
            from .config import read_json

            scores = read_json(args.scores, "--scores file")
            if isinstance(scores, dict):
                scores.pop("config", None)  # already in config.json
        out = export_pretrained(args.model, args.out, scores, overwrite=args.overwrite)
    print(json.dumps({"format": args.format, "out": str(out)}))
    return 0


def _register_inference_commands(sub) -> None:
    p = sub.add_parser("predict", help="segment what an expression refers to in an image (or a JSONL batch)",
                       description='One image: step-ris predict IMAGE "the red circle" --out mask.png. '
                                   "Batch: step-ris predict --batch pairs.jsonl --out-dir DIR (lines "
                                   '{"image": PATH, "expression": TEXT, "id": OPTIONAL}; resumable).')
    p.add_argument("image", nargs="?", help="image file (PNG, JPEG, ...)")
    p.add_argument("expression", nargs="?", help="English referring expression, e.g. 'the red circle on the left'")
    p.add_argument("--model", default="shapes-cpu",
                   help="bundled model name, model folder, run folder or .pt checkpoint (default shapes-cpu)")
    p.add_argument("--out", help="write the mask here (PNG, 0/255, the image's size)")
    p.add_argument("--overlay", help="write the image with the mask drawn over it here")
    p.add_argument("--explain", help="write the Figure-4 view (word attention + per-step maps P_t) here")
    p.add_argument("--view", choices=EXPLAIN_VIEWS, default="attention",
                   help="matrix in --explain: alpha of Eq. 1 (default) or cosine of s_t and h_j")
    p.add_argument("--threshold", type=float, default=MASK_THRESHOLD,
                   help=f"probability threshold of the mask (default {MASK_THRESHOLD})")
    p.add_argument("--batch", metavar="PAIRS.jsonl", help="predict every line of this JSONL file")
    p.add_argument("--out-dir", help="--batch: folder for the masks (and results.jsonl)")
    p.add_argument("--results", help="--batch: results file (default OUT_DIR/results.jsonl); ids in it are skipped")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="fp32 (default), bf16 autocast, or auto: bf16 where the GPU / CPU runs it fast")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="web demo: upload or pick an image, type an expression, see the mask",
                       description="A Gradio page and API (/segment) on 127.0.0.1; needs pip install "
                                   "'step-ris[demo]'. See docs/demo.md.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--model", default="shapes-cpu", help="bundled model name, model folder or checkpoint")
    p.add_argument("--examples", help="folder of example images (default: the bundled examples)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each phrase's path: slow first phrases (compilations), faster later ones")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export a model: ONNX file, or a shipped model folder from a checkpoint")
    p.add_argument("--format", choices=("onnx", "folder"), required=True,
                   help="onnx: one ONNX file (batch 1, fixed S, any number of words); folder: model.safetensors, "
                        "config.json, vocab.json, scores.json from a training checkpoint")
    p.add_argument("--model", default="shapes-cpu", help="bundled model name, model folder, run folder or .pt")
    p.add_argument("--out", required=True, help="the .onnx file, or the model folder to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, the first with LayerNorm)")
    p.add_argument("--no-check", action="store_true", help="onnx: skip the onnxruntime-vs-PyTorch check")
    p.add_argument("--scores", help="folder: JSON file of measured metrics (e.g. step-ris eval --json output)")
    p.add_argument("--overwrite", action="store_true", help="folder: replace an existing non-empty --out")
    p.set_defaults(func=cmd_export)


_EXTRA_COMMANDS.append(_register_inference_commands)


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
    except (ValueError, OSError, ImportError, TrainingError) as e:
        if args.verbose or os.environ.get("STEP_RIS_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
