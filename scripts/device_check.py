"""GPU figures for docs/benchmarks.md, in a few minutes on one NVIDIA GPU (generated data, random weights).

    python scripts/device_check.py                 # CUDA: the figures below
    python scripts/device_check.py --device cpu --quick   # the same path on a CPU, tiny sizes (a smoke test)

Prints one JSON object: for paper-1fold at S = 320, batch --batch, the training step time and
peak memory in fp32 and bf16 (channels_last on), evaluation speed (expressions/s with one
encoding per image), the latency of a new expression on an encoded image, and the largest
difference between CUDA and CPU probabilities of the same model on the same input.
"""

# ruff: noqa: B023 - every closure below runs within its own loop iteration
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from step_ris.config import apply_overrides, get_preset
from step_ris.engine.losses import segmentation_loss
from step_ris.model import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeat: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (S = 64): checks the script, not the GPU")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --quick for a smoke test")
    overrides = ["model.backbone_weights=none", "model.word_vectors=learned"]
    if args.quick:
        overrides += ["model.image_size=64", "model.lstm_hidden=32", "model.embed_dim=32", "model.attention_dim=16",
                      "model.backbone=resnet18"]
    cfg = apply_overrides(get_preset("paper-1fold"), overrides).model
    size, vocab, words = cfg.image_size, 1000, 10
    torch.manual_seed(0)
    model = build_model(cfg, vocab, load_backbone_weights=False).to(device).to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=2.5e-4)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, size, size, generator=g).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    tokens = torch.randint(2, vocab, (args.batch, words), generator=g).to(device)
    target = (torch.rand(args.batch, size, size, generator=g) > 0.85).float().to(device)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "S": size, "batch": args.batch}

    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        def step():
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(images, tokens)
            loss, _ = segmentation_loss(out.logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ms = _timed(step, device, args.repeat)
        report[f"train_step_ms_{name}"] = round(ms, 1)
        report[f"train_samples_per_s_{name}"] = round(args.batch * 1000 / ms, 1)
        if device.type == "cuda":
            report[f"train_peak_mem_gib_{name}"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)

    model.eval()
    with torch.no_grad():
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                enc = model.encode(images[:1])
                one = tokens[:1]
                report[f"new_expression_ms_{name}"] = round(_timed(lambda: model(None, one, features=enc), device,
                                                                   args.repeat), 2)
                report[f"full_forward_ms_{name}"] = round(_timed(lambda: model(images[:1], one), device,
                                                                 args.repeat), 2)
                # evaluation: 5 expressions per image, one encoding per image
                five = tokens[:5] if len(tokens) >= 5 else tokens.repeat(5, 1)[:5]

                def per_image():
                    for k in range(len(images)):
                        model(None, five, features=model.encode(images[k:k + 1]))
                ms = _timed(per_image, device, max(2, args.repeat // 3))
                report[f"eval_expressions_per_s_{name}"] = round(5 * len(images) * 1000 / ms, 1)
        cpu_model = build_model(cfg, vocab, load_backbone_weights=False)
        cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
        cpu_model.eval()
        here = torch.sigmoid(model(images[:2], tokens[:2]).logits.float()).cpu()
        there = torch.sigmoid(cpu_model(images[:2].cpu().contiguous(), tokens[:2].cpu()).logits)
        report["max_abs_diff_vs_cpu_fp32"] = float((here - there).abs().max())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
