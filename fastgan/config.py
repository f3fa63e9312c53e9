"""The training configuration: typed dataclasses, validated once, saved as config.json.

Each field is one command-line flag (``--<field-name-with-dashes>``) and one key of a
``--config`` TOML file, so the three views never drift apart. A field left at ``None``
means "auto": :func:`resolve` fills it from the dataset's preset (the embedded datasets
come with settings known to train well in minutes on a 2-core CPU) before validation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field, fields

from .errors import UserError


def opt(default, help: str, *, choices: tuple | None = None, metavar: str | None = None):
    """A config field with its command-line help (and optional choices)."""
    return field(default=default, metadata={"help": help, "choices": choices, "metavar": metavar})


@dataclass
class DataConfig:
    data: str = opt("builtin:shapes", "dataset: builtin:shapes|ring|grid, a directory or "
                    "manifest.json of .tar shards, a brace pattern, http(s):// or pipe: URLs")
    res: int | None = opt(None, "image resolution (a power of two; default: the dataset's)")
    workers: int | None = opt(None, "data-loading worker processes per rank "
                              "(default: 1 on machines with up to 4 cores, else 4)")
    shuffle: int = opt(2000, "shuffle buffer, in samples per worker")
    sampling: str = opt("resampled", "resampled: shards drawn with replacement per rank and "
                        "worker, fixed epoch length; exact: every sample once per epoch "
                        "across ranks and workers (needs sample counts: a manifest)",
                        choices=("resampled", "exact"))
    epoch_images: int | None = opt(None, "images per epoch in resampled mode (default: the "
                                   "dataset's size)")
    subset: int | None = opt(None, "train on the first N images of an embedded dataset (a "
                             "limited-data run; builtin:shapes has 16 modes, so a multiple "
                             "of 16 keeps them balanced)")
    cache_dir: str | None = opt(None, "where embedded datasets are written as shards "
                                "(default: $FASTGAN_CACHE or ~/.cache/fastgan)")


@dataclass
class ModelConfig:
    arch: str | None = opt(None, "architecture (default: dcgan for images, mlp for 2-D points)",
                           choices=("dcgan", "stylegan2", "mlp"))
    z_dim: int | None = opt(None, "latent size (default: 100 for dcgan, 512 for stylegan2, "
                            "16 for mlp)")
    width: int | None = opt(None, "channels at full resolution (dcgan, default 64; stylegan2, "
                            "default 16384 / res up to 512) or hidden units of G and D (mlp, "
                            "default 128)")
    pack: int = opt(1, "PacGAN packing: D judges this many samples at once (mlp)")
    latent_modes: int = opt(0, "G's latent is a mixture of this many Gaussians, so that G "
                            "can jump between disconnected modes (mlp; builtin:grid's "
                            "default is 100; 0: one Gaussian)")
    cond: bool = opt(False, "condition G and D on the shards' class labels (stylegan2; the "
                     "manifest must name the classes, as `fastgan shards` writes them)")


@dataclass
class OptimConfig:
    lr_g: float = opt(2e-4, "generator Adam learning rate")
    lr_d: float = opt(2e-4, "discriminator Adam learning rate")
    beta1: float = opt(0.5, "Adam beta1")
    beta2: float = opt(0.999, "Adam beta2")
    lr_decay: float = opt(0.0, "final fraction of training over which both learning rates "
                          "fall linearly to zero (0: constant)")
    loss: str = opt("bce", "the GAN loss: bce (non-saturating) or rpgan (relativistic "
                    "pairing, R3GAN's: D ranks each real image above a generated one; pair "
                    "it with --r1-gamma and --r2-gamma)", choices=("bce", "rpgan"))
    r1_gamma: float | None = opt(None, "R1 penalty weight on D's gradient at real data "
                                 "(0: off; default: the dataset's preset, else 0.0002 * "
                                 "res^2 / batch for stylegan2, else 0)")
    r2_gamma: float = opt(0.0, "R2 penalty weight on D's gradient at generated data (0: "
                          "off), lazy with R1")
    r1_interval: int = opt(4, "steps between (lazy) R1 and R2 penalties")
    pl_weight: float = opt(0.0, "path-length regularisation weight (stylegan2): G's image "
                           "should change by a steady amount per step in w (0: off; "
                           "default 2 for stylegan2)")
    pl_interval: int = opt(4, "steps between (lazy) path-length penalties")
    style_mixing: float = opt(0.0, "style mixing (stylegan2): the probability per batch that "
                              "G's layers from a random one on take w from a second latent "
                              "(0: off; default 0.9 for stylegan2)")
    augment: str = opt("none", "diffaug: D sees real and generated images through random "
                       "colour, translation and cutout (for small datasets)",
                       choices=("none", "diffaug"))
    augment: str = opt("none", "what D sees of real and generated images (for small "
                       "datasets): diffaug, random colour, translation and cutout; ada, "
                       "StyleGAN2-ADA's geometric and colour augmentations at a "
                       "probability p that rises while D overfits",
                       choices=("none", "diffaug", "ada"))
    augment_p: float | None = opt(None, "--augment ada at this fixed probability p "
                                  "(default: p adapts from 0)")
    ada_target: float = opt(0.6, "--augment ada: p rises while the share of real images "
                            "D judges real, as E[sign(D(x))], is above this, and falls below")
    ada_interval: int = opt(4, "--augment ada: D steps between adjustments of p")
    ada_kimg: float = opt(500.0, "--augment ada: thousands of images in which p can go "
                          "from 0 to 1 (the speed of the adjustment)")
    ema_kimg: float | None = opt(None, "half-life of the EMA generator in thousands of images "
                                 "(0: no EMA; default: 10 for stylegan2, else 0); samples, "
                                 "metrics and generator.pt use it")
    ema_rampup: float = opt(0.05, "cap the EMA half-life at this times the images seen "
                            "(0: no ramp-up)")


@dataclass
class LoopConfig:
    batch: int | None = opt(None, "global batch size, split over ranks (default: the dataset's)")
    kimg: float | None = opt(None, "train for this many thousand real images")
    steps: int | None = opt(None, "train for this many steps (overrides --kimg)")
    log_every: int | None = opt(None, "steps between log lines / metrics.jsonl records")
    sample_every: int | None = opt(None, "steps between sample grids (0: only at the end)")
    ckpt_every: int | None = opt(None, "steps between checkpoints (0: only at the end)")
    keep_ckpts: int = opt(3, "newest complete checkpoints kept (at least 2)")
    metric_samples: int | None = opt(None, "generated samples scored for mode metrics "
                                     "(default: 2048 images, 2500 points as PacGAN)")


@dataclass
class RunConfig:
    out: str | None = opt(None, "run directory (default: runs/<dataset>-<arch>-<time>)")
    seed: int = opt(0, "random seed")
    precision: str = opt("auto", "numeric precision of the forward passes (auto: bf16 where "
                         "the device supports it, else fp32; fp16 adds a loss scaler per "
                         "network)", choices=("auto", "fp32", "bf16", "fp16"))
    device: str = opt("auto", "device (auto: cuda:LOCAL_RANK when available, else cpu)")
    progress: bool = opt(True, "show a progress bar on rank 0")
    tensorboard: bool = opt(False, "also write TensorBoard scalars and sample grids to "
                            "RUN_DIR/tensorboard (needs the tensorboard package)")
    resume: str = opt("auto", "auto: continue the newest complete checkpoint of --out that "
                      "proves sound (a damaged one is moved aside), or start afresh when "
                      "there is none; none: refuse a run directory that "
                      "holds a run; or a checkpoint (or run) directory to continue",
                      metavar="auto|none|PATH")
    resume_force: bool = opt(False, "resume even when the configuration differs from the "
                             "checkpoint's in something that matters (architecture, "
                             "resolution, batch, world size under DeepSpeed...)")
    deterministic: bool = opt(False, "deterministic algorithms only (slower on GPUs): a "
                              "run stopped and resumed is then bitwise the run that never "
                              "stopped")
    compile: bool = opt(False, "torch.compile G and D for the main phases (lazy R1 runs "
                        "the same weights eagerly: compile cannot differentiate twice); "
                        "the first steps compile, for seconds to minutes")
    compile_mode: str = opt("default", "torch.compile's mode for --compile: "
                            "reduce-overhead adds CUDA graphs on GPUs",
                            choices=("default", "reduce-overhead", "max-autotune",
                                     "max-autotune-no-cudagraphs"))
    max_nonfinite: int = opt(20, "stop the run after this many consecutive steps with a "
                             "NaN/Inf loss (the last good checkpoint is kept)")


@dataclass
class DistConfig:
    strategy: str = opt("auto", "how G and D are spread over the ranks torchrun starts "
                        "(auto: ddp with several processes, none with one)",
                        choices=("auto", "none", "ddp", "deepspeed"))
    zero: int = opt(1, "DeepSpeed ZeRO stage: 0, 1 (optimizer states sharded) or 2 (and "
                    "gradients)")
    deepspeed_config: str | None = opt(None, "JSON file: a DeepSpeed config block shared by "
                                       "both networks, with per-network overrides under "
                                       "\"G\" and \"D\"")
    accum: int = opt(1, "gradient accumulation: micro-batches per step (the batch is split "
                     "over ranks, then into this many micro-batches)")
    grad_clip: float = opt(0.0, "clip each network's gradient norm to this (0: off)")
    timeout: int = opt(600, "seconds a collective waits for the other ranks before the run "
                       "fails with an error (a dead or stuck peer), instead of hanging")


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def flag_fields(cfg: TrainConfig):
    """(section, field) for every flag, in declaration order."""
    for sec in fields(cfg):
        for f in fields(getattr(cfg, sec.name)):
            yield sec.name, f


def flag_name(f) -> str:
    return "--" + f.name.replace("_", "-")


# {field name: (section, field)} of every flag
_FIELDS = {f.name: (section, f) for section, f in flag_fields(TrainConfig())}


# ------------------------------------------------------------------ assignment

def base_type(f) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return t.replace(" | None", "").strip()


def int_flag(value, flag: str, minimum: int | None = None) -> int:
    """An integer flag or TOML value: a string of decimal digits or an int (not a bool,
    not a float with a fraction); UserError naming the flag for anything else, or for a
    number below ``minimum``."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        n = int(value.strip(), 10) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag}: expected an integer, got {value!r}") from None
    if minimum is not None and n < minimum:
        raise UserError(f"{flag}: must be >= {minimum}, got {n}")
    return n


def float_flag(value, flag: str, minimum: float | None = None) -> float:
    """A finite number flag (a string or a number, not a bool, NaN or infinity);
    UserError naming the flag for anything else, or for a number below ``minimum``."""
    try:
        x = _convert_other("float", value)
    except (TypeError, ValueError):
        raise UserError(f"{flag}: expected a finite number, got {value!r}") from None
    if minimum is not None and x < minimum:
        raise UserError(f"{flag}: must be >= {minimum:g}, got {x:g}")
    return x


def convert(f, value):
    """Convert a flag or TOML value to the field's type; UserError names the flag."""
    name = flag_name(f)
    kind = base_type(f)
    if kind == "int":
        out = int_flag(value, name)
    else:
        try:
            out = _convert_other(kind, value)
        except (TypeError, ValueError):
            want = {"float": "a number", "bool": "true or false"}.get(kind, "a string")
            raise UserError(f"{name}: expected {want}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise UserError(f"{name}: {out!r} is not one of {', '.join(choices)}")
    return out


def _convert_other(kind: str, value):
    """A bool, float or str field's value; ValueError or TypeError when it is none."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
        if out != out or out in (float("inf"), float("-inf")):
            raise ValueError
        return out
    if not isinstance(value, str):
        raise ValueError
    return value


def set_field(cfg: TrainConfig, key: str, value, source: str) -> None:
    """Set the field ``key`` (a flag or field name: ``--lr-g``, ``lr-g``, ``lr_g``) of
    whichever section holds it, converted to its type (None: left to :func:`resolve`);
    an unknown key is a UserError naming ``source``."""
    name = key.lstrip("-").replace("-", "_")
    if name not in _FIELDS:
        raise UserError(f"{source}: unknown option {key!r}")
    section, f = _FIELDS[name]
    setattr(getattr(cfg, section), name, None if value is None else convert(f, value))


def apply(cfg: TrainConfig, values: dict, source: str) -> None:
    """Set fields from {flag-or-field-name: value}; unknown keys are an error."""
    for key, value in values.items():
        set_field(cfg, key, value, source)


def load_toml(path: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"--config: no such file: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"--config: cannot read {path}: {e}") from None


# ---------------------------------------------------------------------- presets

# Settings per embedded dataset, for the fields the user left unset; the general flag
# defaults (Adam 2e-4, betas (0.5, 0.999)) hold everywhere else. Each preset learns in
# minutes on a 2-core CPU (how they were found: BENCHMARKS.md, "Why the defaults are what
# they are"):
# * shapes: DCGAN at width 32 with lr 1e-3, kept stable by lazy R1 (gamma 10 every 4
#   steps).
# * ring/grid: PacGAN's batch of 100 with packing 2, a 16-d latent, MLPs of 128 units
#   working in unit-variance coordinates, and lr 1e-3 decaying linearly to zero over the
#   second half (the decay pulls the samples into the 3-std discs). Length decides
#   quality: the grid's 25 modes need 40,000 steps, the ring's 8 28,000. The grid adds a
#   latent mixture of 100 Gaussians (models/mlp.py) and a light lazy R1 (gamma 0.01
#   every 16 steps); the ring keeps one Gaussian.
PRESETS: dict[str, dict] = {
    "shapes": dict(res=32, arch="dcgan", width=32, batch=64, kimg=400.0, log_every=500,
                   sample_every=1000, ckpt_every=2000, lr_g=1e-3, lr_d=1e-3, r1_gamma=10.0,
                   r1_interval=4),
    "ring": dict(arch="mlp", batch=100, kimg=2800.0, log_every=1000, sample_every=5000,
                 ckpt_every=5000, pack=2, lr_g=1e-3, lr_d=1e-3, lr_decay=0.5),
    "grid": dict(arch="mlp", batch=100, kimg=4000.0, log_every=1000, sample_every=5000,
                 ckpt_every=5000, pack=2, lr_g=1e-3, lr_d=1e-3, lr_decay=0.5,
                 latent_modes=100, r1_gamma=0.01, r1_interval=16),
}
# StyleGAN2's recipe (NVlabs' config F / StyleGAN2-ADA's auto config): Adam 0.0025 with
# betas (0, 0.99), lazy R1 every 16 steps with gamma 0.0002 * res^2 / batch (filled in
# by resolve), an EMA generator with a 10 kimg half-life, path length with weight 2
# every 4 steps and style mixing in 90% of the batches.
ARCH_PRESETS: dict[str, dict] = {
    "stylegan2": dict(lr_g=0.0025, lr_d=0.0025, beta1=0.0, beta2=0.99, r1_interval=16,
                      r1_gamma=None, ema_kimg=10.0, pl_weight=2.0, style_mixing=0.9),
}
# StyleGAN2 on the shapes: gamma 1, as the heuristic (0.003 at 32x32, batch 64) lets D win
# and G collapse (BENCHMARKS.md, "Why the defaults are what they are").
ARCH_DATASET_PRESETS: dict[tuple[str, str], dict] = {
    ("stylegan2", "shapes"): dict(r1_gamma=1.0),
}
USER_DATA_DEFAULTS = dict(res=64, arch="dcgan", batch=64, kimg=1000.0, log_every=100,
                          sample_every=1000, ckpt_every=5000)


def resolve(cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """Fill the auto fields, then validate. ``explicit``: field names the user set."""
    from .data.sources import parse_data, shard_set  # late: config stays light to import

    name = parse_data(cfg.data.data)
    preset = PRESETS.get(name, USER_DATA_DEFAULTS) if name else USER_DATA_DEFAULTS
    if name is None:
        shards = shard_set(cfg.data.data)  # a missing path fails here, before anything starts
        size = shards.resolution
        if size and size >= 8 and size & (size - 1) == 0:  # train at the shards' size
            preset = {**preset, "res": min(size, 1024)}
    arch = cfg.model.arch if "arch" in explicit else preset.get("arch")
    if arch in ARCH_PRESETS:  # the architecture's own recipe beats the dataset's DCGAN one
        preset = {**preset, **ARCH_PRESETS[arch], **ARCH_DATASET_PRESETS.get((arch, name), {})}
    for key, value in preset.items():
        if key not in explicit:
            set_field(cfg, key, value, "preset")
    m = cfg.model
    points = name in ("ring", "grid")
    if m.arch is None:
        m.arch = "mlp" if points else "dcgan"
    if m.z_dim is None:
        m.z_dim = {"mlp": 16, "stylegan2": 512}.get(m.arch, 100)
    if cfg.optim.r1_gamma is None:  # StyleGAN2-ADA's heuristic for stylegan2, else off
        cfg.optim.r1_gamma = (0.0002 * (cfg.data.res or 32) ** 2 / cfg.loop.batch
                              if m.arch == "stylegan2" else 0.0)
    if cfg.optim.ema_kimg is None:
        cfg.optim.ema_kimg = 10.0 if m.arch == "stylegan2" else 0.0
    if m.width is None:
        m.width = {"mlp": 128, "stylegan2": min(16384 // (cfg.data.res or 256), 512)}.get(
            m.arch, 64)
    d = cfg.data
    if d.workers is None:
        d.workers = 1 if (os.cpu_count() or 1) <= 4 else 4
    if d.cache_dir is None:
        d.cache_dir = default_cache_dir()
    lp = cfg.loop
    if lp.metric_samples is None:
        lp.metric_samples = 2500 if points else 2048
    if cfg.run.out is None:
        # Under torchrun, its run id: the same on every rank and through every restart
        # (torchrun --max-restarts), so that a restarted job finds its checkpoints.
        # Otherwise the time (rank 0's is broadcast: see loop.train).
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        label = (name or "data")
        cfg.run.out = os.path.join("runs", f"{label}-{m.arch}-" + (
            run_id if run_id not in ("", "none") else time.strftime('%Y%m%d-%H%M%S')))
    validate(cfg, points)
    return cfg


def default_cache_dir() -> str:
    return os.environ.get("FASTGAN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "fastgan")


def validate(cfg: TrainConfig, points: bool) -> None:
    d, m, o, lp, r = cfg.data, cfg.model, cfg.optim, cfg.loop, cfg.run

    def need(ok: bool, flag: str, msg: str):
        if not ok:
            raise UserError(f"{flag}: {msg}")

    if points:
        need(o.augment == "none", "--augment", f"{o.augment} works on images, not 2-D points")
        need(m.arch == "mlp", "--arch", f"{m.arch} cannot model 2-D points; use --arch mlp")
    else:
        need(m.arch != "mlp", "--arch", "mlp models 2-D points only; use --arch dcgan or "
             "stylegan2 for images")
        need(d.res is not None and d.res >= 8 and d.res & (d.res - 1) == 0 and d.res <= 1024,
             "--res", f"must be a power of two from 8 to 1024, got {d.res}")
    if d.subset is not None:
        need(d.subset >= 1, "--subset", f"must be >= 1, got {d.subset}")
        need(d.data.startswith("builtin:") and not points, "--subset", "only for the "
             f"embedded image datasets, not {d.data}; for your own, write the images you "
             "want as shards (fastgan shards)")
    need(d.workers >= 0, "--workers", f"must be >= 0, got {d.workers}")
    need(d.shuffle >= 1, "--shuffle", f"must be >= 1, got {d.shuffle}")
    need(d.epoch_images is None or d.epoch_images >= 1, "--epoch-images",
         f"must be >= 1, got {d.epoch_images}")
    need(m.z_dim >= 1, "--z-dim", f"must be >= 1, got {m.z_dim}")
    need(m.width >= 1, "--width", f"must be >= 1, got {m.width}")
    need(m.pack >= 1, "--pack", f"must be >= 1, got {m.pack}")
    need(m.latent_modes >= 0, "--latent-modes", f"must be >= 0, got {m.latent_modes}")
    need(m.latent_modes == 0 or m.arch == "mlp", "--latent-modes",
         f"a mixture latent is built into the mlp generator only, not {m.arch}; use 0")
    need(not m.cond or m.arch == "stylegan2", "--cond", f"needs --arch stylegan2, not {m.arch}")
    for flag, v in (("--lr-g", o.lr_g), ("--lr-d", o.lr_d)):
        need(0 < v < 1, flag, f"must be in (0, 1), got {v}")
    for flag, v in (("--beta1", o.beta1), ("--beta2", o.beta2)):
        need(0 <= v < 1, flag, f"must be in [0, 1), got {v}")
    need(0 <= o.lr_decay <= 1, "--lr-decay", f"must be in [0, 1], got {o.lr_decay}")
    need(o.r1_gamma >= 0, "--r1-gamma", f"must be >= 0, got {o.r1_gamma}")
    need(o.r2_gamma >= 0, "--r2-gamma", f"must be >= 0, got {o.r2_gamma}")
    need(o.r1_interval >= 1, "--r1-interval", f"must be >= 1, got {o.r1_interval}")
    need(o.pl_weight >= 0, "--pl-weight", f"must be >= 0, got {o.pl_weight}")
    need(o.pl_interval >= 1, "--pl-interval", f"must be >= 1, got {o.pl_interval}")
    need(0 <= o.style_mixing <= 1, "--style-mixing", f"must be in [0, 1], got {o.style_mixing}")
    for flag, v in (("--pl-weight", o.pl_weight), ("--style-mixing", o.style_mixing)):
        need(v == 0 or m.arch == "stylegan2", flag, f"needs --arch stylegan2 (the mapping "
             f"network's w), not {m.arch}; use 0")
    need(o.augment_p is None or o.augment == "ada", "--augment-p",
         f"sets ADA's probability: needs --augment ada, not {o.augment}")
    need(o.augment_p is None or 0 <= o.augment_p <= 1, "--augment-p",
         f"must be in [0, 1], got {o.augment_p}")
    need(-1 < o.ada_target < 1, "--ada-target", f"must be in (-1, 1), got {o.ada_target}")
    need(o.ada_interval >= 1, "--ada-interval", f"must be >= 1, got {o.ada_interval}")
    need(o.ada_kimg > 0, "--ada-kimg", f"must be > 0, got {o.ada_kimg}")
    need(o.ema_kimg >= 0, "--ema-kimg", f"must be >= 0, got {o.ema_kimg}")
    need(o.ema_rampup >= 0, "--ema-rampup", f"must be >= 0, got {o.ema_rampup}")
    need(lp.batch >= 1, "--batch", f"must be >= 1, got {lp.batch}")
    need(lp.batch % m.pack == 0, "--batch", f"{lp.batch} is not a multiple of --pack {m.pack}")
    if m.arch == "mlp" or m.pack > 1:
        # BatchNorm in G needs more than one sample per rank.
        need(lp.batch >= 2, "--batch", "must be >= 2")
    if lp.steps is not None:
        need(lp.steps >= 1, "--steps", f"must be >= 1, got {lp.steps}")
    else:
        need(lp.kimg is not None and lp.kimg > 0, "--kimg", f"must be > 0, got {lp.kimg}")
    need(lp.log_every >= 1, "--log-every", f"must be >= 1, got {lp.log_every}")
    need(lp.sample_every >= 0, "--sample-every", f"must be >= 0, got {lp.sample_every}")
    need(lp.ckpt_every >= 0, "--ckpt-every", f"must be >= 0, got {lp.ckpt_every}")
    need(lp.keep_ckpts >= 2, "--keep-ckpts", f"must be >= 2 (one may be mid-write when a "
         f"job dies), got {lp.keep_ckpts}")
    need(r.max_nonfinite >= 1, "--max-nonfinite", f"must be >= 1, got {r.max_nonfinite}")
    need(lp.metric_samples >= 16, "--metric-samples", f"must be >= 16, got {lp.metric_samples}")
    need(r.seed >= 0, "--seed", f"must be >= 0, got {r.seed}")
    ds = cfg.dist
    need(ds.zero in (0, 1, 2), "--zero", f"must be 0, 1 or 2, got {ds.zero} (ZeRO-3 shards "
         "the parameters, and the G phase runs D's plain module, which needs them whole)")
    need(ds.accum >= 1, "--accum", f"must be >= 1, got {ds.accum}")
    need(lp.batch % ds.accum == 0, "--batch", f"{lp.batch} does not split into --accum "
         f"{ds.accum} micro-batches")
    need(ds.grad_clip >= 0, "--grad-clip", f"must be >= 0, got {ds.grad_clip}")
    need(ds.timeout >= 1, "--timeout", f"must be >= 1 second, got {ds.timeout}")
    if ds.deepspeed_config is not None:
        need(ds.strategy == "deepspeed", "--deepspeed-config", "needs --strategy deepspeed")
        need(os.path.isfile(ds.deepspeed_config), "--deepspeed-config",
             f"no such file: {ds.deepspeed_config}")
    need(not r.compile or ds.strategy != "deepspeed", "--compile", "not supported under "
         "--strategy deepspeed (its engine owns the forward); use --strategy ddp or none")
    need(r.device == "auto" or r.device == "cpu" or r.device.startswith("cuda"),
         "--device", f"must be auto, cpu or cuda[:N], got {r.device!r}")


def total_steps(cfg: TrainConfig) -> int:
    lp = cfg.loop
    if lp.steps is not None:
        return lp.steps
    return max(1, round(lp.kimg * 1000 / lp.batch))
