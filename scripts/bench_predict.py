"""Predictor latency on this machine, and the gain of encoding an image once for many expressions.

    python scripts/bench_predict.py --preset paper-1fold --threads 2 --repeat 9 --session-only
    python scripts/bench_predict.py --model shapes-cpu --threads 2 --repeat 9
    python scripts/bench_predict.py --model runs/a/last.pt --image scene.png

A preset is built with random weights (timing does not depend on them) and a random
10,000-word vocabulary; ``--model`` loads a real one. The image is ``--image`` or a random
640 x 480 picture, decoded once (decoding is not timed). Timed, median over ``--repeat`` runs
after one warm-up:

    encode_image_ms     the visual encoder alone (once per image)
    encode_ms           Predictor.encode(image): letterbox + every image-only tensor (ImageEncoding)
    full_forward_ms     Predictor.predict(image, expression), end to end (letterbox, model, map back)
    new_expression_ms   Predictor.predict(encoded, expression): a new expression on an encoded image
    model_expression_ms the model alone on the encoding (new_expression_ms less pre/post-processing)
    new_vs_full         new_expression_ms / full_forward_ms
    --bf16-weights (with --precision bf16) adds the model alone and the visual encoder run on a
    copy whose convolution, linear and LSTM weights are held in bf16 (autocast otherwise casts the
    float32 weights on every call), and their ratios: *_bf16_weights_ms, bf16_weights_speedup_*.
    The five measures above are timed in rounds (each round in a new random order), so they
    meet the same machine load; *_cpu_ms is the process CPU time (all threads) of the same calls.
    one_by_one_ms       N expressions, one predict call each (the image encoded N times)
    shared_ms           predict(image, [N expressions]): encoded once, expressions batched
    speedup             one_by_one_ms / shared_ms

Prints one JSON object (``--profile N``: then a table of the top operators of N new expressions
on stderr). The numbers are for this CPU as it is loaded now; say so when quoting them.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import random
import statistics
import sys
import time

import numpy as np
import torch

from step_ris.config import apply_overrides, get_preset
from step_ris.data.transforms import letterbox_image
from step_ris.model import build_model
from step_ris.model.refiner import Refiner
from step_ris.precision import autocast
from step_ris.predictor import Predictor
from step_ris.text import Vocabulary


def paired(fns: dict, repeat: int) -> dict[str, float]:
    """Median wall ms of each of ``fns``, called in turn (each round in a new random order) after a warm-up.

    Alternating makes every function meet the same machine load, so their ratio holds even when
    the absolute times drift. Also returns ``<name>_cpu_ms`` (process CPU time, all threads).
    """
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    shuffle = random.Random(0).shuffle
    for _ in range(repeat):
        shuffle(order)  # a new order each round: no measure stays in step with a periodic background job
        for name in order:
            fn = fns[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((time.process_time() - start_cpu) * 1000)
    out = {f"{k}_ms": statistics.median(v) for k, v in wall.items()}
    out.update({f"{k}_cpu_ms": statistics.median(v) for k, v in cpu.items()})
    return out


def bf16_weights(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with its convolution, linear and LSTM weights in bf16 (the LSTM, which
    runs outside autocast in its weights' dtype, then runs in bf16; every other parameter as it was)."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear, torch.nn.LSTM)):
            module.to(torch.bfloat16)
    return twin.eval()


def timed(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="shapes-cpu", help="config preset, random weights (default shapes-cpu)")
    source.add_argument("--model", help="a model name / folder / checkpoint instead of a random preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="preset override, e.g. --set model.image_size=320")
    parser.add_argument("--image", help="image file (default: random 640 x 480)")
    parser.add_argument("--expressions", type=int, default=8, help="N, expressions per image (default 8)")
    parser.add_argument("--words", type=int, default=8, help="words per random expression (default 8)")
    parser.add_argument("--batch-size", type=int, default=8, help="expressions per forward pass (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measure (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="as for step-ris predict (default fp32)")
    parser.add_argument("--session-only", action="store_true",
                        help="only encode / full forward / new expression (skip the N-expression measures)")
    parser.add_argument("--zero-state-tensors", action="store_true",
                        help="the path before session 9: the ConvRNN starts from zero tensors and runs its "
                             "recurrent convolutions on the first step too (to time what skipping them saves)")
    parser.add_argument("--channels-last", action="store_true",
                        help="convert the model to channels_last (NHWC) before timing")
    parser.add_argument("--bf16-weights", action="store_true",
                        help="with --precision bf16: also time a copy of the model holding its convolution, "
                             "linear and LSTM weights in bf16")
    parser.add_argument("--compile", action="store_true",
                        help="also time a new expression with Predictor(compile=True) (torch.compile of the "
                             "expression path), paired with the eager one; prints the speedup")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N new expressions (torch.profiler) and print the top operators")
    args = parser.parse_args()
    if args.zero_state_tensors:
        Refiner.start = lambda self, q: None if self.cell is None else self.cell.initial_state(q)
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    if args.model:
        predictor = Predictor.from_pretrained(args.model, batch_size=args.batch_size, precision=args.precision)
        words = [w for w in predictor.vocab.itos[2:] if w.isalpha()] or predictor.vocab.itos[2:]
        name = args.model
    else:
        cfg = apply_overrides(get_preset(args.preset), args.overrides)
        words = [f"w{k}" for k in range(10_000)]
        vocab = Vocabulary(words)
        torch.manual_seed(0)
        model = build_model(cfg.model, len(vocab), load_backbone_weights=False)
        predictor = Predictor(model, vocab, image_size=cfg.model.image_size, max_words=cfg.model.max_words,
                              batch_size=args.batch_size, precision=args.precision)
        name = f"{args.preset} (random weights)"
    if args.channels_last:
        predictor.model.to(memory_format=torch.channels_last)
    if args.image:
        rgb = predictor.load(args.image)
    else:
        rgb = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    expressions = [" ".join(rng.choice(words, size=args.words)) for _ in range(args.expressions)]

    tensor, _ = letterbox_image(rgb, predictor.image_size)
    encoded = predictor.encode(rgb)

    def model_only(expression: str, net=None):
        """The model's share of a new expression: language side, Eqs. 1-9, Eq. 10; no post-processing."""
        ids = torch.tensor([predictor.prepare(expression).ids])
        with torch.inference_mode(), autocast(predictor.device, predictor.dtype):
            (net or predictor.model)(None, ids, torch.tensor([encoded.valid_hw]), features=encoded.encoding,
                                     return_intermediates=True)
    fresh = itertools.cycle(" ".join(rng.choice(words, size=args.words)) for _ in range(64))  # a new one each call

    def encode(net=None):
        with torch.inference_mode(), autocast(predictor.device, predictor.dtype):
            (net or predictor.model).encode_image(tensor.unsqueeze(0))

    extra = {}
    if args.compile:
        compiled = Predictor(predictor.model, predictor.vocab, image_size=predictor.image_size,
                             max_words=predictor.max_words, batch_size=args.batch_size, precision=args.precision,
                             compile=True)
        start = time.perf_counter()
        compiled.predict(encoded, next(fresh))  # the compilation (timed() warms up once more)
        compile_s = time.perf_counter() - start
        extra = {"new_expression_compiled": lambda: compiled.predict(encoded, next(fresh))}
    if args.bf16_weights:
        if predictor.dtype != torch.bfloat16:
            parser.error("--bf16-weights needs --precision bf16")
        twin = bf16_weights(predictor.model)
        extra |= {"encode_image_bf16_weights": lambda: encode(twin),
                  "model_expression_bf16_weights": lambda: model_only(next(fresh), twin)}

    result = {
        "model": name,
        "image_size": predictor.image_size,
        "image": f"{rgb.shape[1]} x {rgb.shape[0]}",
        "expressions": args.expressions,
        "words_per_expression": args.words,
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "threads": torch.get_num_threads(),
        "precision": predictor.precision,
        "channels_last": args.channels_last,
        "first_step": "zero tensors (before session 9)" if args.zero_state_tensors else "skips recurrent convolutions",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        **paired({"encode_image": encode, "encode": lambda: predictor.encode(rgb),
                  "full_forward": lambda: predictor.predict(rgb, next(fresh)),
                  "new_expression": lambda: predictor.predict(encoded, next(fresh)),
                  "model_expression": lambda: model_only(next(fresh)), **extra}, args.repeat),
    }
    if args.compile:
        result["first_compiled_call_s"] = compile_s
        result["compile_speedup_new_expression"] = result["new_expression_ms"] / result["new_expression_compiled_ms"]
    for what in ("encode_image", "model_expression") if args.bf16_weights else ():
        result[f"bf16_weights_speedup_{what}"] = result[f"{what}_ms"] / result[f"{what}_bf16_weights_ms"]
    if not args.session_only:
        result["one_by_one_ms"] = timed(lambda: [predictor.predict(rgb, e) for e in expressions], args.repeat)
        result["shared_ms"] = timed(lambda: predictor.predict(rgb, expressions), args.repeat)
    result["new_vs_full"] = result["new_expression_ms"] / result["full_forward_ms"]
    if not args.session_only:
        result["shared_per_expression_ms"] = result["shared_ms"] / args.expressions
        result["speedup"] = result["one_by_one_ms"] / result["shared_ms"]
    print(json.dumps({k: round(v, 3 if k == "new_vs_full" or "speedup_" in k else 1) if isinstance(v, float) else v
                      for k, v in result.items()}, indent=2))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile):
                predictor.predict(encoded, next(fresh))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)


if __name__ == "__main__":
    main()
