"""Experiment configuration: one frozen dataclass tree, named presets, dotted overrides.

Only builders read these objects (``model.build``, ``engine.train``); leaf modules take
plain keyword arguments. Every resolved config is saved beside checkpoints and results.

    cfg = get_preset("paper-1fold")
    cfg = apply_overrides(cfg, ["model.folds=2", "train.lr=1e-4"])
    cfg.to_dict()  # JSON-serialisable
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Backbone = Literal["resnet101", "resnet50", "resnet18", "efficientnet_lite0"]
Cell = Literal["convlstm", "convgru", "conv1x1"]
Fusion = Literal["step", "concat-conv"]
Norm = Literal["none", "layer"]
FirstStep = Literal["final-state", "uniform"]
Encoder = Literal["bilstm", "lstm"]
QNorm = Literal["none", "max", "minmax"]
Precision = Literal["fp32", "bf16", "auto"]
RefinerText = Literal["none", "film"]
RefinerContext = Literal["none", "directional", "centroid", "directional+centroid"]
Init = Literal["pytorch", "xavier", "xavier-positive-bias", "data"]


@dataclass(frozen=True)
class ModelConfig:
    """The STEP network. Defaults are the paper's (Sec. 3; readings in docs/model.md)."""

    # Visual representation (Sec. 3.1)
    backbone: Backbone = "resnet101"
    backbone_weights: str | None = None  # None | "imagenet" | "deeplabv3-coco" | path to a state dict
    freeze_backbone: bool = False  # paper: whole network trainable (Sec. 3.6)
    image_size: int = 320  # S
    # Textual representation (Sec. 3.2)
    word_vectors: str = "learned"  # "learned" | "glove-6b-50d" | path to a GloVe text/zip file
    word_dim: int = 300
    max_words: int = 20
    text_encoder: Encoder = "bilstm"  # "lstm": the "no GloVe-biLSTM" ablation (with learned words)
    lstm_hidden: int = 1000  # per direction
    attention_dim: int = 400  # space of Eq. 1 (h~, v~)
    # LTR, Eq. 1
    use_ltr: bool = True  # False: the "no LTR" ablation, s_t = final biLSTM state
    first_step: FirstStep = "final-state"  # "uniform": the "ini-LTR-uniform" variant
    pixel_temperature: float = 1.0  # softmax_i(P_{t-1}(i) / temperature)
    # STEP co-embedding, Eqs. 2-4
    fusion: Fusion = "step"  # "concat-conv": the ablation without co-embedding
    embed_dim: int = 1000
    embed_kernel: int = 3  # 3x3 atrous (rate 3); 1: the 1x1 switch
    embed_dilation: int = 3
    embed_norm: Norm = "none"  # "layer": per-sample normalisation of the pre-activations (docs/model.md, choice 7)
    shared_text_embedding: bool = True  # one psi for all levels
    q_scale: float = 1.0  # Q_t multiplied by this before the refiner (1 = literal Eq. 4)
    q_leak: float = 0.0  # slope of Eq. 4's max(0, .) below 0 (0 = literal ReLU; > 0 keeps gradients alive)
    q_norm: QNorm = "none"  # "max": divided by its peak (floored); "minmax": valid cells mapped to [0, 1]
    q_heads: int = 1  # beyond the paper: H heatmaps per step, one per group of embed_dim / H channels (21)
    # Initialisation and gradient switches (docs/recipes.md, "Why literal Eq. 4 dies"). None changes Eqs. 2-4.
    embed_init: Init = "pytorch"  # W_v, W_s of Eqs. 2-3: PyTorch's default, Glorot/Xavier, Xavier + bias 0.1,
    # or "data": standardised on the first training batch (CoEmbedding.standardise_)
    refiner_input_gain: float = 1.0  # multiplies the initial ConvRNN input weights W^* (Eqs. 5-8)
    feedback_grad: bool = True  # False: P_{t-1} enters Eq. 1 without gradient (diagnostic)
    # Top-down refinement, Eqs. 5-9
    cell: Cell = "convlstm"
    filters: int = 32
    kernel: int = 3
    refiner_dilation: int = 1  # beyond the paper: dilation of the recurrent convolutions R^* (docs/model.md, 18)
    refiner_text: RefinerText = "none"  # beyond the paper: "film", s_t modulates the ConvRNN's input gates (19)
    refiner_context: RefinerContext = "none"  # beyond the paper: "directional" (20), "centroid" (22) or both
    folds: int = 1  # K; T = 5K steps
    reverse: bool = False  # "reverse STEP": levels F5 -> F1
    # Beyond the paper: a no-target decision for expressions that match nothing (model/match_head.py)
    match_head: bool = False

    @property
    def steps(self) -> int:
        return 5 * self.folds


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "refcoco"
    root: str = "data"
    train_split: str = "train"
    val_split: str = "val"
    blank_language: bool = False  # language-blind baseline: every expression becomes one UNK word
    workers: int = 2


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (Sec. 3.6): Adam, lr 2.5e-4, weight decay 5e-4, poly decay 0.9."""

    iters: int = 700_000
    batch_size: int = 1
    lr: float = 2.5e-4
    weight_decay: float = 5e-4
    optimizer: Literal["adam", "adamw"] = "adam"  # adam: L2 added to the gradient (2019 code); adamw: decoupled
    poly_power: float = 0.9
    warmup_iters: int = 0
    loss_all_steps: bool = False  # supervise every P_t, not only P_T (docs/model.md, choice 13)
    dice_weight: float = 0.0  # add Dice to BCE when > 0
    match_weight: float = 1.0  # weight of the no-target decision's BCE (only with model.match_head)
    match_balance: bool = False  # no-target and target expressions get half of that BCE each, per batch
    group_weight: float = 0.0  # beyond the paper: BCE (+ Dice) of Q_t against the group (ShapesRef; docs/model.md, 23)
    group_step: int = 1  # which step's heatmap Q_t that loss reads (1..T)
    no_target_mask_loss: bool = True  # False: the mask loss skips no-target expressions (the match head decides them)
    amp: bool = False  # old name of precision=bf16 (kept: true means bf16)
    precision: Precision = "fp32"  # autocast: fp32 | bf16 | auto (bf16 where the CPU or GPU has it; precision.py)
    channels_last: bool = False  # NHWC memory format for the convolutions (faster with mkldnn / cuDNN)
    sentences_per_image: int = 1  # K > 1: a batch is B/K images x K of their sentences, each image encoded once
    compile: bool = False  # torch.compile the model (CUDA mainly; refused with bf16 on a CPU: NaN gradients)
    grad_clip: float = 0.0  # 0 = off
    nonfinite_skips: int = 3  # a step whose loss or gradient is not finite is skipped; stop after more in a row
    seed: int = 0
    log_every: int = 20
    eval_every: int = 0  # steps between evaluations; 0 = only at the end
    eval_every_minutes: float = 0.0  # also evaluate each time this many training minutes pass (0 = off)
    max_minutes: float = 0.0  # stop (and save) after this many training minutes (0 = no limit)
    checkpoint_every: int = 500
    eval_samples: int = 0  # 0 = whole val split
    eval_seed: int = 0  # which val subset (fixed across training seeds, so runs compare on the same expressions)
    threads: int = 0  # torch CPU threads, 0 = torch's default
    cache_features: bool = True  # frozen backbone: keep its features on disk under <data.root>/.cache
    diagnostics: bool = False  # log Eq. 4 health and gradient norms every log_every steps (engine/diagnostics.py)
    init_from: str = ""  # start from this model's weights (a name, folder or checkpoint; engine/train.init_weights)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        return _from_dict(cls, d, prefix="")


# ----------------------------------------------------------------------------- presets

# The paper's setup (Sec. 3): DeepLab ResNet-101 (here torchvision's DeepLabV3-ResNet-101 backbone,
# the closest public match) and GloVe 840B vectors (docs/reproduce.md says where the files go).
GLOVE_840B = "data/refer/glove/glove.840B.300d.txt"
_PAPER_MODEL = ModelConfig(backbone_weights="deeplabv3-coco", word_vectors=GLOVE_840B)

# The scale of the CPU presets: frozen ImageNet EfficientNet-Lite0 taps, S = 128, small widths.
_CPU_SCALE = ModelConfig(backbone="efficientnet_lite0", backbone_weights="imagenet", freeze_backbone=True,
                         image_size=128, lstm_hidden=128, attention_dim=64, embed_dim=128, filters=32)

PRESETS: dict[str, ExperimentConfig] = {
    # Table 1/2 "Ours (1-fold)": ConvLSTM refiner.
    "paper-1fold": ExperimentConfig(name="paper-1fold", model=_PAPER_MODEL),
    # Table 3 "Ours (5-fold)": ConvGRU "to save computational cost".
    "paper-5fold": ExperimentConfig(
        name="paper-5fold", model=dataclasses.replace(_PAPER_MODEL, cell="convgru", folds=5)
    ),
    # Small CPU preset for ShapesRef: frozen ImageNet EfficientNet-Lite0 taps, small sizes,
    # per-sample normalisation in the co-embedding and a leaky, min-max normalised, scaled Q_t
    # (docs/recipes.md). 12,500 steps of 16 = 200,000 expressions, about 103 minutes on one thread;
    # 4 sentences per image share each image's phi and Eq. 1 keys (docs/benchmarks.md). The loss
    # reads P_T alone, as Eq. 11 does: supervising every P_t learned less per expression, relations
    # most (docs/recipes.md, tenth round).
    "shapes-cpu": ExperimentConfig(
        name="shapes-cpu",
        model=dataclasses.replace(
            _CPU_SCALE, word_vectors="learned", word_dim=64, embed_norm="layer", q_scale=10.0, q_leak=0.1,
            q_norm="minmax", cell="convgru",
        ),
        data=DataConfig(dataset="shapesref", root="data/shapesref-cpu"),
        train=TrainConfig(
            iters=12_500, batch_size=16, lr=1e-3, weight_decay=0.0, loss_all_steps=False,
            dice_weight=1.0, warmup_iters=200, log_every=20, eval_every=0, eval_every_minutes=10.0,
            checkpoint_every=250, eval_samples=1000, channels_last=True, sentences_per_image=4,
        ),
    ),
    # The paper's STEP at CPU scale (docs/recipes.md): every paper switch of paper-1fold (literal
    # Eqs. 2-4, ConvLSTM, K = 1, GloVe + biLSTM, loss on P_T only, Adam with weight decay 5e-4 and
    # poly decay), differing in scale (frozen EfficientNet-Lite0 taps, S = 128, small widths) and in
    # one measured necessity: Dice beside Eq. 11's BCE on P_T. ShapesRef referents cover about 3 %
    # of an image, and with BCE alone every run stayed at val oIoU 0.000 for 20,000+ expressions
    # (P_T never crosses 0.5); set train.dice_weight=0 for the literal loss. The paper states no
    # batch size: batch 4 read better than 16 over the same 60,000 expressions (val oIoU 0.348 vs
    # 0.320, docs/recipes.md).
    "shapes-paper": ExperimentConfig(
        name="shapes-paper",
        model=dataclasses.replace(_CPU_SCALE, word_vectors="glove-6b-50d", word_dim=50, cell="convlstm"),
        data=DataConfig(dataset="shapesref", root="data/shapesref-cpu"),
        train=TrainConfig(
            iters=15_000, batch_size=4, lr=2.5e-4, weight_decay=5e-4, dice_weight=1.0, log_every=100,
            eval_every=2_500, checkpoint_every=1_000, eval_samples=1000, diagnostics=True, channels_last=True,
        ),
    ),
    # Tiny network for tests and smoke runs: random ResNet-18, 64 px, seconds on a CPU.
    "tiny": ExperimentConfig(
        name="tiny",
        model=ModelConfig(
            backbone="resnet18",
            image_size=64,
            word_dim=16,
            lstm_hidden=16,
            attention_dim=16,
            embed_dim=16,
            embed_norm="layer",
            cell="convgru",
            filters=8,
        ),
        data=DataConfig(dataset="shapesref", root="data/shapesref-tiny", workers=0),
        train=TrainConfig(iters=20, batch_size=2, lr=1e-3, weight_decay=0.0, log_every=5,
                          checkpoint_every=10),
    ),
}


def read_json(path: str | Path, what: str, hint: str = "") -> Any:
    """Parse a JSON file; a missing or malformed file is a ValueError naming it and ``what`` it is."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: missing {what}{'; ' + hint if hint else ''}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt {what}, not valid JSON ({e})") from None


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> ExperimentConfig:
    """A named preset, or a config file (``configs/*.json``, as written by ``to_json``)."""
    if name.endswith(".json"):
        path = Path(name)
        data = read_json(path, "config file")
        base = get_preset(data.pop("base")) if isinstance(data.get("base"), str) else ExperimentConfig()
        merged = _merge(base.to_dict(), data)
        return validate(ExperimentConfig.from_dict(merged))
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())} "
                         "(or a path to a .json config)")
    return PRESETS[name]


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------- overrides


def apply_overrides(cfg: ExperimentConfig, overrides: list[str] | dict[str, Any]) -> ExperimentConfig:
    """Return ``cfg`` with dotted-key overrides applied (``["model.folds=2", ...]``).

    Values given as strings are parsed to the field's type; unknown keys and bad values raise
    ``ValueError`` naming the key and what it accepts.
    """
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    for key, value in items:
        cfg = _set(cfg, key.split("."), value, key)
    _validate(cfg)
    return cfg


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value (e.g. model.folds=2)")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _set(obj: Any, path: list[str], value: Any, full_key: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    head = path[0]
    if head not in names:
        raise ValueError(f"unknown config key {full_key!r}: {head!r} is not one of {', '.join(names)}")
    current = getattr(obj, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"unknown config key {full_key!r}: {head!r} has no sub-keys")
        return dataclasses.replace(obj, **{head: _set(current, path[1:], value, full_key)})
    if dataclasses.is_dataclass(current):
        raise ValueError(f"config key {full_key!r} is a section; set one of its keys, e.g. {full_key}.<key>=...")
    hint = typing.get_type_hints(type(obj))[head]
    return dataclasses.replace(obj, **{head: _coerce(value, hint, full_key)})


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(f"{key}={value!r} must be true or false")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{key}={value!r} must be a number")
        try:
            number = hint(value) if hint is float else int(str(value).replace("_", ""))
        except (TypeError, ValueError):
            raise ValueError(f"{key}={value!r} must be {'an integer' if hint is int else 'a number'}") from None
        return number
    if hint is str:
        return str(value)
    raise ValueError(f"{key}: cannot set values of type {hint}")


def _from_dict(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"config section {prefix or '<root>'} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in d.items():
        if key not in names:
            raise ValueError(f"unknown config key {prefix + key!r}; allowed: {', '.join(sorted(names))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _from_dict(hint, value, prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, hint, prefix + key)
    return cls(**kwargs)


def _check_choices(section: Any, prefix: str) -> None:
    """Every Literal-typed field (Backbone, Cell, ...) holds one of its allowed values.

    Overrides and JSON files are checked as they are parsed (``_coerce``); this also catches a
    config built in Python, e.g. ``ModelConfig(backbone="vgg16")``.
    """
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, hint = getattr(section, f.name), hints[f.name]
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
        elif typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            raise ValueError(f"{prefix}{f.name}={value!r} is not allowed; "
                             f"choose one of: {', '.join(map(str, typing.get_args(hint)))}")


def _validate(cfg: ExperimentConfig) -> None:
    _check_choices(cfg, "")
    m = cfg.model
    checks = [
        (m.folds >= 1, f"model.folds={m.folds} must be >= 1 (the paper uses 1, 2, 4, 5)"),
        (m.image_size >= 32 and m.image_size % 8 == 0,
         f"model.image_size={m.image_size} must be a multiple of 8, >= 32"),
        (1 <= m.max_words <= 64, f"model.max_words={m.max_words} must be in 1..64 (paper: 20)"),
        (m.pixel_temperature > 0, f"model.pixel_temperature={m.pixel_temperature} must be > 0"),
        (m.embed_kernel in (1, 3), f"model.embed_kernel={m.embed_kernel} must be 1 or 3"),
        (m.q_heads >= 1 and m.embed_dim % m.q_heads == 0,
         f"model.q_heads={m.q_heads} must be >= 1 and divide model.embed_dim={m.embed_dim} (the paper: 1)"),
        (m.q_heads == 1 or m.fusion == "step",
         f"model.q_heads={m.q_heads} needs the STEP co-embedding: set model.fusion=step or model.q_heads=1"),
        (m.refiner_dilation >= 1, f"model.refiner_dilation={m.refiner_dilation} must be >= 1 (the paper: 1)"),
        (m.refiner_text == "none" or m.cell != "conv1x1",
         f"model.refiner_text={m.refiner_text} needs a ConvRNN: set model.cell=convgru or convlstm, "
         f"or model.refiner_text=none"),
        (m.refiner_context == "none" or m.cell != "conv1x1",
         f"model.refiner_context={m.refiner_context} needs a ConvRNN: set model.cell=convgru or convlstm, "
         f"or model.refiner_context=none"),
        (cfg.train.batch_size >= 1, f"train.batch_size={cfg.train.batch_size} must be >= 1"),
        (cfg.train.sentences_per_image >= 1 and cfg.train.batch_size % cfg.train.sentences_per_image == 0,
         f"train.sentences_per_image={cfg.train.sentences_per_image} must be >= 1 and divide "
         f"train.batch_size={cfg.train.batch_size}"),
        (cfg.train.iters >= 1, f"train.iters={cfg.train.iters} must be >= 1"),
        (cfg.train.lr > 0, f"train.lr={cfg.train.lr} must be > 0"),
        (cfg.train.group_weight >= 0, f"train.group_weight={cfg.train.group_weight} must be >= 0 (0 = off)"),
        (1 <= cfg.train.group_step <= m.steps,
         f"train.group_step={cfg.train.group_step} must be a step of the model, 1..{m.steps} (5 x model.folds)"),
    ]
    for dim in ("word_dim", "lstm_hidden", "attention_dim", "embed_dim", "filters"):
        checks.append((getattr(m, dim) >= 1, f"model.{dim}={getattr(m, dim)} must be >= 1"))
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    _validate(cfg)
    return cfg
