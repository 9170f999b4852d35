"""Where a training step of a preset spends its time (issue: train shapes-cpu 3x faster).

    python scripts/profile_train.py --preset shapes-cpu --steps 20 --threads 2 [--amp] [--per-image 4]

Builds the preset's model (frozen backbone: the taps come from a feature cache, so here from a
random float16 cache of the same shapes), then times, per step and in milliseconds:
cache read (float16 -> float32 + coordinates), image-only work (phi of Eq. 2, Eq. 1 keys),
the biLSTM, the ConvRNN steps (Eqs. 5-9), the rest of the forward (Eq. 1, Eqs. 3-4), the loss,
backward and the optimiser step. ``--per-image K`` makes each batch K sentences of B/K images
(the image-only work is then done once per image). Prints a table and the samples/s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from step_ris.config import get_preset
from step_ris.engine.losses import segmentation_loss
from step_ris.model import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="shapes-cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--per-image", type=int, default=1, help="sentences per image in a batch")
    ap.add_argument("--words", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    t = cfg.train
    torch.manual_seed(0)
    model = build_model(cfg.model, 200, load_backbone_weights=False).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=t.lr)
    size = cfg.model.image_size
    with torch.no_grad():
        taps = model.visual.backbone(torch.zeros(1, 3, size, size))
    images = 64
    cache = [torch.randn(images, *tap.shape[1:]).to(torch.float16) for tap in taps]
    batch, k = t.batch_size, args.per_image
    timers: dict[str, list[float]] = defaultdict(list)

    def timed(name, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            out = fn(*a, **kw)
            timers[name][-1] += time.perf_counter() - start
            return out
        return wrapper

    model.encode = timed("image-only (phi, Eq. 1 keys)", model.encode)
    model.language.forward = timed("biLSTM + words", model.language.forward)
    model.refiner.step = timed("ConvRNN steps", model.refiner.step)
    names = ["cache read", "image-only (phi, Eq. 1 keys)", "biLSTM + words", "ConvRNN steps", "forward (rest)",
             "loss", "backward", "optimiser", "step total"]
    g = torch.Generator().manual_seed(0)
    for _ in range(args.steps + 2):
        for n in names:
            timers[n].append(0.0)
        start = time.perf_counter()
        rows = torch.randint(0, images, (batch // k,), generator=g)
        tokens = torch.randint(2, 200, (batch, args.words), generator=g)
        target = (torch.rand(batch, size, size, generator=g) > 0.95).float()
        c0 = time.perf_counter()
        maps = model.visual.add_coordinates([level[rows].float() for level in cache])
        timers["cache read"][-1] += time.perf_counter() - c0
        f0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
            if k > 1:
                enc = model.encode(maps=maps)
                enc = type(enc)(maps=[m.repeat_interleave(k, 0) for m in enc.maps],
                                phi={lv: v.repeat_interleave(k, 0) for lv, v in enc.phi.items()},
                                keys={lv: v.repeat_interleave(k, 0) for lv, v in enc.keys.items()})
                out = model(None, tokens, None, features=enc, return_intermediates=t.loss_all_steps)
            else:
                out = model(None, tokens, None, features=maps, return_intermediates=t.loss_all_steps)
        inner = sum(timers[n][-1] for n in ("image-only (phi, Eq. 1 keys)", "biLSTM + words", "ConvRNN steps"))
        timers["forward (rest)"][-1] += time.perf_counter() - f0 - inner
        l0 = time.perf_counter()
        loss, _ = segmentation_loss(out.logits, target, step_logits=out.step_logits if t.loss_all_steps else None,
                                    dice_weight=t.dice_weight)
        timers["loss"][-1] += time.perf_counter() - l0
        b0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        timers["backward"][-1] += time.perf_counter() - b0
        o0 = time.perf_counter()
        opt.step()
        timers["optimiser"][-1] += time.perf_counter() - o0
        timers["step total"][-1] += time.perf_counter() - start
    total = statistics.median(timers["step total"][2:])
    print(f"preset {args.preset}, batch {batch} ({batch // k} images x {k} sentences), threads {args.threads}, "
          f"amp {args.amp}, median of {args.steps} steps")
    for n in names:
        ms = statistics.median(timers[n][2:]) * 1000
        print(f"{n:32s} {ms:8.1f} ms  {100 * ms / 1000 / total:5.1f} %")
    print(f"samples/s {batch / total:.1f}")


if __name__ == "__main__":
    main()
