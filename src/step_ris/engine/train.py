"""Training (Sec. 3.6): one function, read top to bottom.

    step-ris train --preset shapes-cpu --dataset shapesref --root data/shapesref --out runs/a
    torchrun --nproc_per_node 2 -m step_ris.cli train ...    (DistributedDataParallel, same command)

The run folder holds ``config.json`` (the resolved config), ``vocab.json``, ``last.pt`` (written
atomically every ``train.checkpoint_every`` steps and on Ctrl-C / SIGTERM), ``metrics.jsonl``
(one line per evaluation, with training minutes) and ``tb/`` (TensorBoard). ``--resume``
continues from ``last.pt`` and ends where an uninterrupted run would: the data order and the
learning rate are pure functions of the step; ``--resume`` on a finished run does nothing.
Ctrl-C or SIGTERM finishes the step, saves and exits 130 or 143 (128 + the signal).

``train`` reads top to bottom: ``setup`` builds the run, each step is ``train_step``, and the
loop calls ``evaluate_and_log`` and ``save`` on their schedules.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from .._extras import require
from ..config import ExperimentConfig, TrainConfig
from ..data.dataset import ReferDataset, build_vocab, collate
from ..data.refer import ReferData
from ..model import STEPModel, build_model
from ..precision import autocast, precision_name, resolve_precision
from ..text import Vocabulary
from .checkpoint import FORMAT, atomic_save, atomic_write_text, capture_rng, load_checkpoint, restore_rng
from .diagnostics import gradient_norms, heatmap_stats, log_images, write_diagnostics
from .distributed import any_rank, init_distributed, resolve_device
from .errors import TrainingError  # noqa: F401 - importable from here, as before
from .evaluate import evaluate, format_results, subset_indices
from .features import CachedSamples, FeatureCache, cache_path, collate_cached
from .finetune import extend_vocab, init_weights, load_init
from .losses import group_loss, match_loss, segmentation_loss
from .sampling import ImageGroupedBatchSampler, StepBatchSampler  # noqa: F401 - also importable from here
from .schedule import poly_lr

log = logging.getLogger(__name__)


def _prepare_out(out: Path, resume: bool) -> None:
    if resume:
        if not (out / "last.pt").is_file():
            raise TrainingError(f"--resume: no checkpoint {out / 'last.pt'}; start a new run without --resume")
        return
    if (out / "last.pt").exists():
        raise TrainingError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write to the output folder {out}: {e.strerror or e}") from None


def load_vectors_for(cfg: ExperimentConfig, vocab: Vocabulary):
    """Pretrained word vectors for ``vocab`` (None for learned embeddings)."""
    if cfg.model.word_vectors == "learned":
        return None, None
    from ..data.glove import load_word_vectors

    vectors, known = load_word_vectors(cfg.model.word_vectors, vocab, dim=cfg.model.word_dim,
                                       cache_dir=Path(cfg.data.root))
    return vectors, known


@dataclass
class Run:
    """What ``setup`` builds for one training run; the loop in ``train`` reads and advances it."""

    cfg: ExperimentConfig
    out: Path
    device: torch.device
    rank: int
    world: int
    vocab: Vocabulary
    model: STEPModel
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    val_set: ReferDataset | None
    cache: FeatureCache | None  # frozen-backbone taps of the training images
    val_cache: FeatureCache | None
    loader: DataLoader
    writer: Any  # TensorBoard SummaryWriter on rank 0, else None
    step: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    precision: torch.dtype | None = None  # the autocast dtype (None: float32)
    bad_steps: int = 0  # consecutive steps whose loss or gradient was not finite (train.nonfinite_skips)
    skipped_steps: int = 0  # updates skipped for that reason in this invocation

    @property
    def expressions_seen(self) -> int:
        return self.step * self.cfg.train.batch_size * self.world


def train(cfg: ExperimentConfig, out: str | Path, *, resume: bool = False, device: str | None = None,
          progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Train STEP as ``cfg`` says; returns the last evaluation. See the module docstring.

    ``stop_after``: save and return after this many steps of this invocation (as if interrupted;
    continue with ``resume=True``), e.g. for jobs with a time limit.
    """
    run = setup(cfg, Path(out), resume=resume, device=device, progress=progress)
    t = cfg.train
    if run.step >= t.iters:  # --resume on a finished run: nothing to do, nothing appended
        log.info("%s already finished at step %d (train.iters=%d)", run.out, run.step, t.iters)
        _close(run)
        return run.history[-1] if run.history else {}

    stop = {"signal": None}  # Ctrl-C / SIGTERM: finish the step, save, stop.

    def on_signal(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=t.iters, initial=run.step, desc="train", unit="it", disable=not (progress and run.rank == 0),
               dynamic_ncols=True)
    last_result: dict[str, Any] = {}
    try:
        run.model.train()
        start_step = run.step
        next_eval_minutes = (math.floor(run.train_seconds / 60 / t.eval_every_minutes) + 1) * t.eval_every_minutes \
            if t.eval_every_minutes else math.inf
        tick = time.perf_counter()
        for batch in run.loader:
            parts, result = train_step(run, batch)
            now = time.perf_counter()
            run.train_seconds += now - tick
            tick = now
            if run.rank == 0:
                bar.update(1)
                if run.step % t.log_every == 0 or run.step == t.iters:
                    _log_scalars(run, bar, parts)
                by_steps = t.eval_every and run.step % t.eval_every == 0
                by_time = t.eval_every_minutes and run.train_seconds >= next_eval_minutes * 60
                if (by_steps or by_time) and run.step < t.iters:
                    last_result = evaluate_and_log(run, progress)
                    while t.eval_every_minutes and run.train_seconds >= next_eval_minutes * 60:
                        next_eval_minutes += t.eval_every_minutes
                    log_images(run.writer, run.model, batch, result, run.step)
                    tick = time.perf_counter()  # evaluation time is not training time
                if run.step % t.checkpoint_every == 0:
                    save(run)
            if stop_after is not None and run.step - start_step >= stop_after:
                stop["signal"] = "stop_after"
            time_up = bool(t.max_minutes) and run.train_seconds >= t.max_minutes * 60
            if any_rank(time_up, run.world, run.device):  # the first rank out of time stops all
                log.info("reached train.max_minutes=%g at step %d", t.max_minutes, run.step)
                break
            if any_rank(bool(stop["signal"]), run.world, run.device):  # every rank stops at the same step
                stop["signal"] = stop["signal"] or "SIGTERM"
                break
        if stop["signal"]:
            save(run)
            log.warning("%s: saved %s at step %d; continue with --resume", stop["signal"], run.out / "last.pt",
                        run.step)
            return {"interrupted": stop["signal"], "step": run.step}
        save(run)
        if run.rank == 0:
            last_result = evaluate_and_log(run, progress)
            save(run)  # with the final evaluation in its history
        return last_result
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        _close(run)


def setup(cfg: ExperimentConfig, out: Path, *, resume: bool, device: str | None, progress: bool) -> Run:
    """Everything before the first step: device, process group, data, model, optimiser, caches."""
    device = resolve_device(device)
    precision = resolve_precision("bf16" if cfg.train.amp else cfg.train.precision, device)
    if cfg.train.compile and precision == torch.bfloat16 and torch.device(device).type == "cpu":
        # Measured (session 14, torch 2.14.1): every step's gradient norm was NaN, from the first one.
        raise TrainingError("train.compile=true with train.precision=bf16 gives NaN gradients on the CPU "
                            "(torch.compile of bf16 autocast's backward); set train.compile=false (bf16 alone "
                            "is the faster path here, docs/benchmarks.md) or train.precision=fp32")
    if not cfg.train.no_target_mask_loss and not cfg.model.match_head:  # nothing would decide the no-target ones
        raise TrainingError("train.no_target_mask_loss=false leaves no-target expressions to the no-target "
                            "decision, and the model has none: add --set model.match_head=true")
    rank, world = init_distributed(device)
    if rank == 0:
        _prepare_out(out, resume)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out / "last.pt")
        saved = ExperimentConfig.from_dict(ckpt["config"])
        if saved.model != cfg.model or saved.data != cfg.data:
            raise TrainingError(f"{out}: the run was made with another model/data config; resume it with "
                                "the config in its config.json (only train.* may change)")
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed + rank)

    # data
    data = ReferData(cfg.data.root, cfg.data.dataset)
    init = None
    if ckpt:
        vocab = Vocabulary(ckpt["vocab"][2:])
    else:
        vocab = build_vocab(cfg.data.root, cfg.data.dataset, cfg.data.train_split)
        if t.init_from:
            init, cfg = load_init(cfg)
            vocab = extend_vocab(init.vocab, vocab)
    common = dict(vocab=vocab, image_size=cfg.model.image_size, max_words=cfg.model.max_words,
                  blank_language=cfg.data.blank_language, data=data)
    train_set = ReferDataset(cfg.data.root, cfg.data.dataset, cfg.data.train_split, groups=t.group_weight > 0, **common)
    val_set = ReferDataset(cfg.data.root, cfg.data.dataset, cfg.data.val_split, **common) if rank == 0 else None

    # model and optimiser
    vectors, known = (None, None) if ckpt else load_vectors_for(cfg, vocab)
    model = build_model(cfg.model, len(vocab), word_vectors=vectors, known_words=known,
                        load_backbone_weights=ckpt is None and init is None)
    if init is not None:
        init_weights(model, init.model, t.init_from)
    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, t)
    step, train_seconds, history = 0, 0.0, []
    if ckpt:
        if "optimizer" not in ckpt:  # e.g. a model with a fitted match head (engine/match_fit.py)
            raise ValueError(f"{out / 'last.pt'} holds a model without its optimiser state, not a run to "
                             "resume; start a new run (--out) instead")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, train_seconds = ckpt["step"], ckpt["train_seconds"]
        history = list(ckpt.get("history", []))
        restore_rng(ckpt["rng"])
        log.info("resumed %s at step %d (%.1f training minutes)", out, step, train_seconds / 60)
    elif rank == 0:
        atomic_write_text(out / "config.json", cfg.to_json())
        atomic_write_text(out / "vocab.json", json.dumps(vocab.to_list()))
    # The 1x1-conv refiner without Eq. 1 computes P_t (its head) for the loss only.
    unused = cfg.model.cell == "conv1x1" and not cfg.model.use_ltr and not t.loss_all_steps
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused) if world > 1 else model
    if t.compile:
        net = torch.compile(net)

    # samples: frozen-backbone taps come from a cache, so images are decoded once per run
    cache = val_cache = None
    eval_idx = subset_indices(len(val_set), t.eval_samples, t.eval_seed) if val_set is not None else []
    if cfg.model.freeze_backbone:
        folder = Path(cfg.data.root) / ".cache"
        keep = t.cache_features
        cache = FeatureCache(model.visual.backbone, train_set, device=device, progress=progress and rank == 0,
                             cache_file=cache_path(folder, cfg.model, train_set, "all") if keep else None)
        if val_set is not None:
            tag = f"eval{t.eval_samples}-{t.eval_seed}"
            val_cache = FeatureCache(model.visual.backbone, val_set, device=device, indices=eval_idx,
                                     progress=progress and rank == 0,
                                     cache_file=cache_path(folder, cfg.model, val_set, tag) if keep else None)
        source, collate_fn = CachedSamples(train_set, cache), collate_cached
    else:
        source, collate_fn = train_set, collate
    if t.sentences_per_image > 1:
        image_of = [train_set.meta(i)["image_id"] for i in range(len(train_set))]
        sampler = ImageGroupedBatchSampler(image_of, t.batch_size, t.sentences_per_image, step, t.iters,
                                           seed=t.seed, world=world, rank=rank)
    else:
        sampler = StepBatchSampler(len(source), t.batch_size, step, t.iters, seed=t.seed, world=world, rank=rank)
    loader = DataLoader(source, batch_sampler=sampler, collate_fn=collate_fn, num_workers=cfg.data.workers,
                        persistent_workers=False)
    if cfg.model.embed_init == "data" and ckpt is None:
        first = StepBatchSampler(len(source), max(t.batch_size, 16), 0, 1, seed=t.seed + 1)
        _standardise_embedding(model, next(iter(DataLoader(source, batch_sampler=first, collate_fn=collate_fn))),
                               cache, device)

    writer = None
    if rank == 0:
        require("tensorboard", extra="train", purpose="training (TensorBoard logs)")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    log.info("training in %s on %s", precision_name(precision), device)
    return Run(cfg=cfg, out=out, device=device, rank=rank, world=world, vocab=vocab, model=model, net=net,
               params=params, optimizer=optimizer, val_set=val_set, cache=cache, val_cache=val_cache, loader=loader,
               writer=writer, step=step, train_seconds=train_seconds, history=history, precision=precision)


def build_optimizer(params, t: TrainConfig) -> torch.optim.Optimizer:
    """Adam (Sec. 3.6) with the weight decay of ``train.optimizer``.

    "adam": weight_decay * w is added to the gradient (the paper's L2 term, as 2019 code has it).
    Adam then divides by the gradient's running scale, so a weight whose loss gradient is small
    next to weight_decay * w shrinks by about lr per step whatever its size. "adamw": the decay
    is applied apart from Adam's scaling, w -= lr * weight_decay * w (Loshchilov & Hutter, 2019).
    docs/recipes.md measures what this does to the literal Eq. 4.
    """
    optim = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return optim(params, lr=t.lr, weight_decay=t.weight_decay)


def train_step(run: Run, batch: dict[str, Any]) -> tuple[dict[str, float], Any]:
    """One optimiser step on ``batch``: poly lr, forward (Eqs. 1-10), loss (Eq. 11), backward, step.

    Never steps on a non-finite loss or gradient (the weights stay good; TrainingError).
    """
    t, model, device = run.cfg.train, run.model, run.device
    for group in run.optimizer.param_groups:
        group["lr"] = poly_lr(run.step, base_lr=t.lr, max_steps=t.iters, power=t.poly_power, warmup=t.warmup_iters)
    tokens, valid = batch["tokens"].to(device), batch["valid_hw"].to(device)
    diagnose = t.diagnostics and run.rank == 0 and (run.step + 1) % t.log_every == 0
    memory = torch.channels_last if t.channels_last else torch.contiguous_format
    with autocast(device, run.precision):
        intermediates = t.loss_all_steps or diagnose or t.group_weight > 0
        if run.cache is not None:
            rows, inverse = batch["row"].unique(return_inverse=True)  # each image of the batch once
            maps = [m.contiguous(memory_format=memory)
                    for m in model.visual.add_coordinates(run.cache.get(rows, device))]
            if run.world == 1 and len(rows) < len(inverse):
                features = model.encode(maps=maps).index(inverse.to(device))  # phi, Eq. 1 keys: once per image
            else:
                features = [m[inverse.to(device)] for m in maps]
            result = run.net(None, tokens, valid, features=features, return_intermediates=intermediates)
        else:
            images = batch["image"].to(device).contiguous(memory_format=memory)
            result = run.net(images, tokens, valid, return_intermediates=intermediates)
    logits, masks = result.logits, batch["mask"].to(device)
    step_logits = result.step_logits if t.loss_all_steps else None
    if not t.no_target_mask_loss:
        keep = (batch["target_count"] > 0).to(device)  # a no-target expression is left to the match head
        logits, masks = logits[keep], masks[keep]
        step_logits = step_logits[keep] if step_logits is not None else None
    loss, parts = segmentation_loss(logits, masks, step_logits=step_logits, dice_weight=t.dice_weight)
    if result.match_logits is not None:  # the no-target decision (model.match_head), its own BCE
        matched = match_loss(result.match_logits, batch["target_count"], balanced=t.match_balance)
        loss = loss + t.match_weight * matched
        parts["match"] = float(matched.detach())
        parts["loss"] = float(loss.detach())
    if t.group_weight > 0:  # beyond the paper: Q_t marks the expression's group (data/shapesref/grouping.py)
        grouped = group_loss(result.heatmaps[:, t.group_step - 1] / model.q_scale, batch["group"], batch["has_group"],
                             dice_weight=t.dice_weight)
        loss, parts["group"] = loss + t.group_weight * grouped, float(grouped.detach())
        parts["loss"] = float(loss.detach())
    run.optimizer.zero_grad(set_to_none=True)
    problem = "" if math.isfinite(parts["loss"]) else f"the loss became {parts['loss']}"
    if not problem:
        loss.backward()
        if diagnose:
            write_diagnostics(run.out, run.writer, run.step + 1, {**heatmap_stats(result), **gradient_norms(model)})
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, t.grad_clip if t.grad_clip > 0 else math.inf)
        if not bool(torch.isfinite(grad_norm)):
            problem = f"the gradient norm became {float(grad_norm)} (loss {parts['loss']:.4f})"
    if any_rank(bool(problem), run.world, device):
        problem = problem or "another rank's loss or gradient was not finite"
        run.bad_steps += 1
        if run.bad_steps > t.nonfinite_skips:
            raise TrainingError(f"{problem} at step {run.step}"
                                f"{f' ({run.bad_steps} steps in a row)' if run.bad_steps > 1 else ''}; the last good "
                                f"checkpoint is {run.out / 'last.pt'}. Lower train.lr, set train.grad_clip, "
                                "or use train.precision=fp32")
        # one bad batch (bf16 rounding, a rare extreme sample) does not end a long run: skip its update
        log.warning("%s at step %d; skipped this update (%d in a row, train.nonfinite_skips=%d)",
                    problem, run.step, run.bad_steps, t.nonfinite_skips)
        run.optimizer.zero_grad(set_to_none=True)
        run.skipped_steps += 1
        run.step += 1
        return parts, result
    run.bad_steps = 0
    run.optimizer.step()
    run.step += 1
    return parts, result


def evaluate_and_log(run: Run, progress: bool) -> dict[str, Any]:
    """Score the val subset, append a line to metrics.jsonl and TensorBoard (rank 0 only)."""
    t = run.cfg.train
    result = evaluate(run.model, run.val_set, batch_size=max(t.batch_size, 16), device=run.device, seed=t.eval_seed,
                      workers=run.cfg.data.workers if run.val_cache is None else 0, limit=t.eval_samples,
                      cache=run.val_cache, precision=run.precision, progress=progress, references=not run.history)
    record = {"step": run.step, "train_minutes": run.train_seconds / 60, "samples": run.expressions_seen,
              **{k: result[k] for k in ("oIoU", "mIoU", "prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8", "prec@0.9",
                                        "n")},
              "by_family": {f: r["oIoU"] for f, r in result.get("by_family", {}).items()}}
    if run.skipped_steps:  # updates skipped for a non-finite loss or gradient (train.nonfinite_skips)
        record["skipped_updates"] = run.skipped_steps
    if "references" in result:
        record["references"] = {k: v["oIoU"] for k, v in result["references"].items()}
    if result.get("n_no_target"):  # generalized data: the GRES metrics too (engine/gres.py)
        record.update({k: result[k] for k in ("gIoU", "cIoU", "N-acc", "T-acc")})
        record["gIoU_by_target_count"] = {k: r["gIoU"] for k, r in result["by_target_count"].items()}
    run.history.append(record)
    with open(run.out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    log.info("step %d (%.1f min): %s", run.step, run.train_seconds / 60, format_results(result))
    for k in ("oIoU", "mIoU", "prec@0.5"):
        run.writer.add_scalar(f"val/{k}", result[k], run.step)
    return result


def save(run: Run) -> None:
    """Write last.pt atomically (rank 0): weights, optimiser, step, RNG and the evaluation history."""
    if run.rank != 0:
        return
    atomic_save({"format": FORMAT, "config": run.cfg.to_dict(), "vocab": run.vocab.to_list(),
                 "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "step": run.step,
                 "train_seconds": run.train_seconds, "rng": capture_rng(), "history": run.history},
                run.out / "last.pt")


def _log_scalars(run: Run, bar, parts: dict[str, float]) -> None:
    rate = run.expressions_seen / max(run.train_seconds, 1e-9)
    lr = run.optimizer.param_groups[0]["lr"]
    bar.set_postfix(loss=f"{parts['loss']:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
    for k, v in parts.items():
        run.writer.add_scalar(f"train/{k}", v, run.step)
    run.writer.add_scalar("train/lr", lr, run.step)
    run.writer.add_scalar("train/samples_per_s", rate, run.step)


def _close(run: Run) -> None:
    if run.writer is not None:
        run.writer.close()
        run.writer = None
    if run.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _standardise_embedding(model: STEPModel, batch: dict, cache, device: torch.device) -> None:
    """embed_init=data: W_v, W_s standardised on one batch before the first step (same on every rank)."""
    with torch.no_grad():
        if cache is not None:
            maps = model.visual.add_coordinates(cache.get(batch["row"], device))
        else:
            maps = model.encode_image(batch["image"].to(device))
        s = model.language(batch["tokens"].to(device)).final
        model.fusion.standardise_(maps, s, sorted(set(model.levels)))
    log.info("embed_init=data: W_v and W_s standardised on %d samples", len(batch["tokens"]))
