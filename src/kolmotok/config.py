"""Configuration: nested dataclasses with every default in one place, and a preset registry.

A run is described by a :class:`RunConfig` = model + objective + optimisation + data.
Each module receives only its own sub-config. ``from_dict`` rejects unknown keys so a
typo in a JSON file or a CLI override is an error, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class ModelConfig:
    """Architecture of a KARL tokenizer (see docs/DESIGN.md for why these defaults)."""

    image_size: int = 32  # input resolution (square), pixels
    patch_size: int = 4  # one 2D token per patch_size x patch_size pixels
    stem: str = "conv"  # "conv": small conv stem/head; "linear": plain patchify (ViT)
    stem_channels: int = 64  # channels of the conv stem and head
    width: int = 128  # transformer width shared by encoder and decoder
    encoder_layers: int = 4
    decoder_layers: int = 6  # KARL: a small encoder with a larger decoder works best
    num_heads: int = 4
    mlp_ratio: float = 4.0
    max_tokens: int = 32  # T_max: number of learned latent tokens
    linear_path: bool = True  # PCA-initialised linear token path beside the transformers (docs/DESIGN.md)
    linear_path_resolution: int = 32  # the linear path sees/produces the image area-resized to this side
    quantizer: str = "continuous"  # "continuous" (vectors) or "fsq" (discrete codes)
    fsq_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)  # FSQ levels; token_dim = len(levels)
    token_dim: int = 6  # size of a continuous token (ignored for FSQ)
    halting_threshold: float = 0.75  # a token halts when P(halt) exceeds this (KARL ref.)
    # > 0: each halting logit also gets a learned positive multiple of log(eps / 0.05), started at
    # this value, so halting is monotone in eps beyond what the eps-token teaches (docs/DESIGN.md §4)
    halting_epsilon_gain: float = 0.0
    # > 0: width of a small MLP added to the halting head; it reads each latent together with
    # log(e_t / eps), e_t the l1 error of the linear path's first t tokens (docs/DESIGN.md §4)
    halting_hidden: int = 0
    epsilon_floor: float = 1e-3  # eps values are clamped here before log-embedding
    recurrent_step: int = 0  # > 0: ALIT-style recurrent baseline adding this many tokens per rollout
    base_autoencoder: str = ""  # local diffusers AutoencoderKL/VQModel dir: tokenize its latent grid
    base_channels: int = 0  # filled from the autoencoder's config.json (latent channels)
    base_downsample: int = 1  # ... and its downsampling factor

    def resolve_base(self) -> None:
        """Fill base_channels / base_downsample from the autoencoder's config (no weights loaded)."""
        if self.base_autoencoder:
            from .models.base_ae import describe

            self.base_channels, self.base_downsample = describe(self.base_autoencoder)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.base_downsample // self.patch_size

    @property
    def code_dim(self) -> int:
        return len(self.fsq_levels) if self.quantizer == "fsq" else self.token_dim

    def validate(self) -> None:
        check_minimums("model", self, dict.fromkeys(POSITIVE_MODEL_FIELDS, 1))
        if self.mlp_ratio <= 0:
            raise ValueError(f"model.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.quantizer == "fsq" and (not self.fsq_levels or min(self.fsq_levels) < 2):
            raise ValueError(f"model.fsq_levels must be one or more levels >= 2, got {list(self.fsq_levels)}")
        if self.image_size % (self.patch_size * self.base_downsample):
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
                             + (f" x base downsampling {self.base_downsample}" if self.base_autoencoder else ""))
        if self.base_autoencoder and self.linear_path:
            raise ValueError("model.base_autoencoder replaces the PCA linear path: set model.linear_path=false")
        if self.stem == "conv" and (self.patch_size & (self.patch_size - 1)):
            raise ValueError(f"conv stem needs a power-of-two patch_size, got {self.patch_size}")
        if self.stem not in ("conv", "linear"):
            raise ValueError(f"stem must be 'conv' or 'linear', got {self.stem!r}")
        if self.quantizer not in ("fsq", "continuous"):
            raise ValueError(f"quantizer must be 'fsq' or 'continuous', got {self.quantizer!r}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.recurrent_step < 0 or (self.recurrent_step and self.max_tokens % self.recurrent_step):
            raise ValueError(f"recurrent_step {self.recurrent_step} must be 0 or divide max_tokens {self.max_tokens}")
        if not 0.0 < self.halting_threshold < 1.0:
            raise ValueError(f"halting_threshold must be in (0, 1), got {self.halting_threshold}")
        if self.halting_epsilon_gain < 0:
            raise ValueError(f"halting_epsilon_gain must be >= 0, got {self.halting_epsilon_gain}")
        if self.halting_hidden < 0:
            raise ValueError(f"halting_hidden must be >= 0, got {self.halting_hidden}")
        if self.halting_hidden and not self.linear_path:
            raise ValueError("model.halting_hidden reads the linear path's errors: it needs model.linear_path=true")


# sizes and counts a model cannot be built with at 0 (model.validate divides by some of them)
POSITIVE_MODEL_FIELDS = ("image_size", "patch_size", "stem_channels", "width", "encoder_layers", "decoder_layers",
                         "num_heads", "max_tokens", "linear_path_resolution", "token_dim", "base_downsample")

# train.* counts and their smallest allowed value (eval_every 0 turns the held-out evaluation off,
# keep_checkpoints 0 keeps them all; eval_images is checked by eval_set, where 0 means a whole folder)
TRAIN_MINIMUMS = {"steps": 1, "batch_size": 1, "grad_accum": 1, "checkpoint_every": 1, "keep_checkpoints": 0,
                  "eval_every": 0, "pca_init_images": 1, "threads": 0, "data_workers": 0}


def check_minimums(section: str, obj: Any, minimums: dict[str, int]) -> None:
    """ValueError naming ``section.field`` for the first field of ``obj`` below its minimum."""
    for name, minimum in minimums.items():
        if getattr(obj, name) < minimum:
            raise ValueError(f"{section}.{name} must be >= {minimum}, got {getattr(obj, name)}")


OBJECTIVES = ("karl", "fixed", "prefix", "recurrent")


@dataclass
class ObjectiveConfig:
    """The training objective: KARL's two-phase objective (KARL paper §3) or a baseline's.

    kind: "karl"; "fixed" (always ``fixed_length`` tokens, TiTok-style); "prefix" (a random
    tail of tokens dropped per image, nested dropout); "recurrent" (ALIT-style rollouts of
    ``model.recurrent_step`` tokens). See kolmotok.training.objective.
    """

    kind: str = "karl"
    fixed_length: int = 0  # tokens of a "fixed" model (1..T_max)
    halting_weight: float = 0.5  # weight of the halting BCE against the l1 reconstruction losses
    full_budget_prob: float = 0.2  # phase-1 budget is T_max this often, else uniform in 1..T_max
    stricter_target_prob: float = 0.25  # share of phase-2 images conditioned below their achieved error
    stricter_target_min: float = 0.3  # ... by a factor drawn uniformly from [this, 1)
    looser_target_prob: float = 0.0  # share of phase-2 images conditioned above their achieved error
    looser_target_max: float = 8.0  # ... by a factor drawn log-uniformly from (1, this]
    mse_weight: float = 0.0  # optional squared-error term beside l1
    shorter_prefix_tolerance: float = 0.02  # a shorter prefix is the label if its l1 <= eps_T * (1 + this); <0 off
    gap_target_prob: float = 0.0  # share of phase-2 images conditioned between eps_T and a shorter prefix's l1


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 4000
    batch_size: int = 64
    seed: int = 0
    data: str = "photos@3+shapes"  # see kolmotok.data.make_source
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # 0 = keep every checkpoint
    eval_every: int = 500  # held-out l1 at T_max/8 and T_max, logged for learning curves
    eval_data: str = "photos:calib"  # monitoring set for those curves (never the test split)
    eval_images: int = 128
    pca_init_images: int = 4096  # training images used to initialise the linear token path
    init_from: str = ""  # start from this checkpoint's weights (fine-tuning) instead of a fresh PCA init
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch default
    data_workers: int = 0  # DataLoader worker processes making batches ahead (>= 2 on a GPU)
    precision: str = "fp32"  # "bf16" / "fp16": autocast mixed precision (the quantizer stays fp32)
    compile: bool = False  # torch.compile the encoder and decoder transformers
    grad_accum: int = 1  # micro-batches per step (batch_size is the global batch per optimizer step)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


TYPE_NOUNS = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _type_name(hint: Any) -> str:
    """How an error message names a field type: "an integer", "a list of 2 numbers", ..."""
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        noun = TYPE_NOUNS.get(args[0], "value")
        return f"a list of {noun}s" if args[-1] is Ellipsis else f"a list of {len(args)} {noun}s"
    noun = TYPE_NOUNS.get(hint, getattr(hint, "__name__", str(hint)))
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _wrong_type(value: Any, hint: Any, where: str) -> ValueError:
    return ValueError(f"{where}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")


def check_value(value: Any, hint: Any, where: str = "config") -> Any:
    """``value`` as a field of type ``hint`` (a config dataclass, int, float, bool, str or a tuple
    of those): ValueError naming ``where`` and the expected type if it has another type. An
    integer is fine for a float field; a JSON list for a tuple field."""
    if is_dataclass(hint):
        return from_dict(hint, value, where)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(value, hint, where)
        args = typing.get_args(hint)
        items = args[:1] * len(value) if args[-1] is Ellipsis else args
        if len(value) != len(items):
            raise _wrong_type(value, hint, where)
        return tuple(check_value(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
    if hint not in TYPE_NOUNS:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isnan(value):  # inf stays allowed (optim.grad_clip=Infinity: no clipping); ranges are per field
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, hint) or (isinstance(value, bool) and hint is not bool):
        raise _wrong_type(value, hint, where)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a dict; unknown keys and wrongly typed values raise ``ValueError``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(hints)}")
    return cls(**{name: check_value(value, hints[name], f"{where}.{name}") for name, value in data.items()})


def _parse_override(raw: str, hint: Any) -> Any:
    """The value of ``key=raw``: JSON when it parses, else the text; a string field always takes the text."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    return raw if hint is str and not isinstance(value, str) else value


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides (value parsed as JSON when possible); ValueError
    naming the override for an unknown key or a value of the wrong type."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        path, raw = item.split("=", 1)
        parts = path.split(".")
        node, hint = data, RunConfig
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ValueError(f"override {item!r}: unknown section {p!r}")
            node, hint = node[p], typing.get_type_hints(hint)[p]
        if parts[-1] not in node:
            raise ValueError(f"override {item!r}: unknown key {parts[-1]!r}; known: {sorted(node)}")
        hint = typing.get_type_hints(hint)[parts[-1]]
        value = _parse_override(raw, hint)
        check_value(value, hint, f"override {path}")
        node[parts[-1]] = value
    return from_dict(RunConfig, data)


# --------------------------------------------------------------------------- presets
# Sizes and measured speeds are in README.md ("Presets").

def _tiny() -> RunConfig:
    return RunConfig()


def _small() -> RunConfig:
    return RunConfig(
        model=ModelConfig(image_size=128, patch_size=8, stem_channels=96, width=384, encoder_layers=6,
                          decoder_layers=8, num_heads=6, max_tokens=128),
        optim=OptimConfig(lr=1e-3, warmup_steps=2000),
        train=TrainConfig(steps=100_000, batch_size=128, data="photos@3+shapes", checkpoint_every=2000,
                          eval_every=2000),
    )


def _base() -> RunConfig:
    return RunConfig(
        model=ModelConfig(image_size=256, patch_size=16, stem_channels=128, width=768, encoder_layers=8,
                          decoder_layers=12, num_heads=12, max_tokens=256),
        optim=OptimConfig(lr=5e-4, warmup_steps=5000),
        train=TrainConfig(steps=300_000, batch_size=256, data="photos@3+shapes", checkpoint_every=5000,
                          eval_every=5000),
    )


def _with_vae(preset) -> RunConfig:
    """KARL's latent-distillation setting: tokenize a frozen diffusers autoencoder's latent grid
    (an 8x-downsampling VAE gives a 16x16 grid at 128 px, 32x32 at 256 px; patch 2 halves it)."""
    cfg = preset()
    cfg.model.linear_path, cfg.model.patch_size, cfg.model.stem = False, 2, "conv"
    cfg.model.base_autoencoder = BASE_REQUIRED
    return cfg


BASE_REQUIRED = "REQUIRED"  # placeholder of the -vae presets: --base-autoencoder DIR must replace it


PRESETS = {"tiny": _tiny, "small": _small, "base": _base,
           "small-vae": lambda: _with_vae(_small), "base-vae": lambda: _with_vae(_base)}


def _baseline(base: str, kind: str, fixed_length: int = 0, **model_fields) -> RunConfig:
    cfg = PRESETS[base]()
    cfg.objective.kind, cfg.objective.fixed_length = kind, fixed_length
    for key, value in model_fields.items():
        setattr(cfg.model, key, value)
    return cfg


def fixed_length_grid(max_tokens: int) -> list[int]:
    """The fixed lengths every comparison uses: T_max/8, /4, /2 and T_max (at least 1 token)."""
    return sorted({max(1, max_tokens // 8), max(1, max_tokens // 4), max(1, max_tokens // 2), max_tokens})


def _register_baselines(base: str) -> None:
    """``BASE-prefix``, ``BASE-recurrent`` and ``BASE-fixedN`` (N = T_max/8, /4, /2, T_max): same
    backbone, data and steps as ``BASE``, each with its own objective (issue: baselines)."""
    T = PRESETS[base]().model.max_tokens
    PRESETS[f"{base}-prefix"] = lambda: _baseline(base, "prefix")
    PRESETS[f"{base}-recurrent"] = lambda: _baseline(base, "recurrent", recurrent_step=max(1, T // 8))
    for n in fixed_length_grid(T):
        PRESETS[f"{base}-fixed{n}"] = lambda n=n: _baseline(base, "fixed", fixed_length=n)


for _base_name in ("tiny", "small", "base"):
    _register_baselines(_base_name)


def validate(cfg: RunConfig) -> None:
    cfg.model.resolve_base()
    cfg.model.validate()
    check_minimums("train", cfg.train, TRAIN_MINIMUMS)
    o = cfg.objective
    if o.kind not in OBJECTIVES:
        raise ValueError(f"objective.kind must be one of {OBJECTIVES}, got {o.kind!r}")
    if o.kind == "fixed" and not 1 <= o.fixed_length <= cfg.model.max_tokens:
        raise ValueError(f"objective.fixed_length must be in 1..{cfg.model.max_tokens}, got {o.fixed_length}")
    if o.kind == "recurrent" and not cfg.model.recurrent_step:
        raise ValueError("objective.kind 'recurrent' needs model.recurrent_step > 0")
    check_ranges(cfg)


# numeric settings and their allowed ranges, (low, high, whether low itself is allowed): shares
# are probabilities; a clip of 0 freezes the weights and a negative one climbs the loss, a
# negative weight or learning-rate floor turns training around
RANGES = {
    **{f"objective.{name}": (0.0, 1.0, True)
       for name in ("full_budget_prob", "stricter_target_prob", "looser_target_prob", "gap_target_prob")},
    "objective.halting_weight": (0.0, math.inf, True), "objective.mse_weight": (0.0, math.inf, True),
    "objective.stricter_target_min": (0.0, 1.0, False), "objective.looser_target_max": (1.0, math.inf, False),
    "optim.lr": (0.0, math.inf, True), "optim.weight_decay": (0.0, math.inf, True),
    "optim.min_lr_ratio": (0.0, 1.0, True), "optim.grad_clip": (0.0, math.inf, False),
    "optim.warmup_steps": (0, math.inf, True),
}


def check_ranges(cfg: RunConfig) -> None:
    for key, (low, high, low_ok) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not ((low <= value if low_ok else low < value) and value <= high):
            bound = f"[{low:g}" if low_ok else f"({low:g}"
            raise ValueError(f"{key} must be in {bound}, {high:g}], got {value}")
    for beta in cfg.optim.betas:
        if not 0 <= beta < 1:
            raise ValueError(f"optim.betas must be in [0, 1), got {list(cfg.optim.betas)}")


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    if not name.endswith("-vae"):  # -vae presets are checked once model.base_autoencoder is set
        validate(cfg)
    return cfg
