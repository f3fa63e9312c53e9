"""How G and D are trained across ranks: the one place that knows DDP and DeepSpeed.

Each network gets an :class:`Engine`: its plain module, the wrapper that the network's own
phases run through, its optimizer (and fp16 loss scaler), and what the phases need of
them: micro-batch synchronisation, backward, step, save and load. ``--strategy``:

none       one process: the module itself.
ddp        one DistributedDataParallel wrapper per network.
deepspeed  one DeepSpeed engine per network, each with its own config (ZeRO stage,
           precision, batch, clipping, and the optimizer fastgan hands it), so a setting
           meant for one network never reaches the other (DeepSpeed #1975).

G's loss flows back through D. That backward must leave D alone: the G phase freezes D's
parameters and calls D's *plain* module, so DDP waits for no gradient of D and DeepSpeed's
ZeRO-2 gradient hooks on D's parameters never fire. Those hooks firing inside G's
backward is DeepSpeed #4923 (its GAN example raises a TypeError under ZeRO-2): with D
frozen and unwrapped there, they have nothing to do, at any ZeRO stage.

BatchNorm buffers: DDP is built with ``broadcast_buffers=False`` (as StyleGAN2-ADA does).
In training mode BatchNorm normalises with each batch's own statistics, so the running
statistics never touch training, and broadcasting rank 0's buffers before every forward
(DDP's default) would cost a collective per forward for nothing. They matter when G runs
in eval mode (samples, mode metrics, checkpoints), so :func:`sync_buffers` averages them
over ranks first; every rank then holds the same, global estimate.

NaN and Inf: every loss is back-propagated; a step whose gradients (after the
all-reduce) or any rank's loss is not finite is skipped on every rank, decided on the
device (:meth:`Engine.step`). Host reads left in a step: none under none and DDP with
the fused Adam that fastgan builds (an optimizer that is not fused costs one read per
step: it cannot take the skip flag on the device). Under DeepSpeed, none either: under
ZeRO 1 and 2 DeepSpeed's own gradient norm, whose validity it reads back twice per
engine step (its NaN/Inf check, and again before clipping), is turned off, and fastgan
checks and clips the reduced gradients on the device (:meth:`Engine._check_partition`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError
from .distributed import Dist, all_reduce_grads, all_reduce_sum, average_in_place, max_over_ranks

log = logging.getLogger("fastgan")

# DeepSpeed keys that fastgan derives from its own flags: a --deepspeed-config that sets
# them would silently disagree with the flags, so it is an error, naming the flag.
OWNED_KEYS = {
    "train_batch_size": "--batch", "train_micro_batch_size_per_gpu": "--batch and --accum",
    "gradient_accumulation_steps": "--accum", "fp16": "--precision", "bf16": "--precision",
    "torch_autocast": "--precision", "optimizer": "--lr-g/--lr-d/--beta1/--beta2",
    "scheduler": "--lr-decay",
}
NETWORKS = ("G", "D")
# DDP without a buffer broadcast before every forward (the flag was renamed in torch 2.13)
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False})


@dataclass
class EngineOptions:
    strategy: str      # none | ddp | deepspeed (resolved)
    precision: str     # fp32 | bf16 | fp16 (resolved)
    micro_batch: int   # per rank and micro-step
    accum: int
    grad_clip: float
    zero: int = 1
    deepspeed_config: str | None = None
    compile_mode: str | None = None  # torch.compile's mode for --compile; None: eager


class Engine:
    """One network, its optimizer, and the strategy's way of stepping them.

    A step never reads a device value back to the host (under none and DDP; DeepSpeed's
    own reads are listed at :meth:`_deepspeed_step`). Whether an optimizer step is
    skipped for a NaN or Inf is decided on the device, the same way on every rank: the
    flag comes from the gradients after their all-reduce (identical on every rank, and
    any rank's NaN reaches all of them through the sum) and from every rank's losses
    (one scalar all-reduce per step, so that a NaN loss whose gradients came out finite
    still counts). The fused Adam takes the flag as ``found_inf``, GradScaler's own
    channel, and skips its update on the device (step counter included).
    """

    def __init__(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer,
                 opts: EngineOptions, dist: Dist):
        self.name, self.module, self.optimizer = name, module, optimizer
        self.opts, self.dist = opts, dist
        self.accum = opts.accum
        self.scaler = None
        device = dist.device
        # fp16 loss-scaler overflows, cumulative, on the device (read when the loop logs)
        self.overflow_skips = torch.zeros((), dtype=torch.float64, device=device)
        # The last step's outcome, as float32 0/1 device flags: skipped at all; skipped
        # for a non-finite loss or gradient (not an fp16 overflow); some rank's loss was
        # not finite (its statistics are left out).
        self.skipped = self.nonfinite = self.loss_bad = torch.zeros((), device=device)
        self._loss_bad: torch.Tensor | None = None  # any non-finite loss in this step
        self._manual_sync = False
        self.grad_norm: torch.Tensor | None = None  # see step()
        if opts.strategy == "ddp":
            ids = [device.index] if device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(module, device_ids=ids,
                                                   gradient_as_bucket_view=True,
                                                   **_NO_FORWARD_BUFFER_SYNC)
        elif opts.strategy == "deepspeed":
            self.wrapped, self._partition_clip = _deepspeed_engine(name, module, optimizer,
                                                                   opts, dist)
            self._partition_sq: torch.Tensor | None = None  # see _check_partition
            if self._zero_without_norm:
                if not _skips_on_device(optimizer):
                    raise UserError(f"--deepspeed-config: {name}: compute_grad_norm false "
                                    "leaves a NaN step to the optimizer, and "
                                    f"{type(optimizer).__name__} cannot skip one")
                optimizer.register_step_pre_hook(self._check_partition)
        else:
            self.wrapped = module
        # What the phases call: ``forward`` through the wrapper (the network's own
        # phase) and ``plain_forward``, the plain module (D, frozen, in G's phase).
        # --compile compiles both; R1 calls ``module`` itself, eagerly, on the same
        # weights: torch.compile cannot differentiate twice (pytorch #91469).
        self.forward, self.plain_forward = self.wrapped, module
        if opts.compile_mode is not None:
            self.forward = torch.compile(self.wrapped, mode=opts.compile_mode)
            self.plain_forward = torch.compile(module, mode=opts.compile_mode)
        if opts.precision == "fp16" and opts.strategy != "deepspeed":
            # one scaler per network: G's and D's gradients differ in scale by orders of
            # magnitude, and an overflow in one must not shrink the other's scale
            self.scaler = torch.amp.GradScaler(device.type)
        self._skips_on_device = _skips_on_device(optimizer)

    @property
    def deepspeed(self) -> bool:
        return self.opts.strategy == "deepspeed"

    def sync(self, last: bool):
        """Context for one micro-batch's forward and backward: DDP all-reduces only on the
        last (DeepSpeed counts micro-steps itself)."""
        if self.opts.strategy == "ddp" and not last:
            return self.wrapped.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, micro: int, *, wrapped: bool = True) -> None:
        """Back-propagate micro-batch ``micro``'s loss (a mean over that micro-batch).

        ``wrapped``: whether the forward ran through the wrapper. DDP all-reduces only
        what ran through it; R1 runs D's plain module (DDP does not all-reduce double
        backward, pytorch #63929), so its gradients are all-reduced by hand at step().
        A NaN or Inf loss is back-propagated like any other: step() skips the update.
        """
        if self.deepspeed:
            self.wrapped.backward(loss)  # divides by the accumulation steps itself
            if micro < self.accum - 1:
                self.wrapped.step()      # only counts the micro-step before the boundary
            return
        bad = ~torch.isfinite(loss.detach())
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad
        if not wrapped:
            self._manual_sync = True
        loss = loss / self.accum if self.accum > 1 else loss
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def step(self) -> torch.Tensor:
        """The optimizer step closing the current micro-batches; returns ``skipped``.

        Leaves in ``grad_norm`` the norm of the gradients (unscaled, before clipping: for
        the health monitor), a device tensor, or None where DeepSpeed reports none; and
        in ``skipped``, ``nonfinite`` and ``loss_bad`` this step's device flags.
        """
        if self.deepspeed:
            return self._deepspeed_step()
        if self._manual_sync:
            all_reduce_grads(self.module, self.dist)
        self._manual_sync = False
        params = [p for p in self.module.parameters() if p.grad is not None]
        loss_bad, self._loss_bad = self._loss_bad, None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # in place, before the norm
        norm = nn.utils.get_total_norm([p.grad for p in params], foreach=True).float()
        grad_bad = ~torch.isfinite(norm)
        loss_bad = max_over_ranks(loss_bad.float(), self.dist)
        skipped = torch.maximum(grad_bad.float(), loss_bad)
        if self.opts.grad_clip > 0:
            nn.utils.clip_grads_with_norm_(params, self.opts.grad_clip, norm, foreach=True)
        if self._skips_on_device:
            self.optimizer.found_inf = skipped
            self.optimizer.step()
            del self.optimizer.found_inf
        elif not skipped.item():
            self.optimizer.step()
        if self.scaler is not None:
            # its own found_inf (set by unscale_) halves the scale after an overflow;
            # a skip for a NaN loss is not an overflow
            self.scaler.update()
            nonfinite = loss_bad
        else:
            nonfinite = skipped
        self.overflow_skips += skipped - nonfinite
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_norm, self.skipped, self.nonfinite = norm, skipped, nonfinite
        self.loss_bad = loss_bad
        return skipped

    @property
    def _zero_without_norm(self) -> bool:
        """ZeRO 1 or 2 with DeepSpeed's own gradient norm turned off."""
        return (self.wrapped.zero_optimization_stage() in (1, 2)
                and not self.wrapped.zero_compute_grad_norm())

    def _deepspeed_step(self) -> torch.Tensor:
        """DeepSpeed's step, skipped on every rank for a NaN or Inf in the reduced
        gradients (DeepSpeed's check covers the losses through their gradients).

        Without ZeRO (stage 0) the gradients sit in ``.grad`` after the engine's
        all-reduce, and the fused Adam skips on the device as above. Under ZeRO 1 and 2
        each rank holds only its own partition of them: :meth:`_check_partition` checks
        it, inside ZeRO's step. Where DeepSpeed keeps its own norm (an optimizer that
        cannot skip on the device, or a config that asks for it), DeepSpeed checks it
        and skips the step itself, reading the norm's validity back
        (``is_invalid_grad_norm``, twice per step)."""
        before = self.wrapped.skipped_steps
        if self.wrapped.zero_optimization_stage() == 0:
            params = [p for p in self.module.parameters() if p.grad is not None]
            norm = nn.utils.get_total_norm([p.grad for p in params], foreach=True).float()
            self.optimizer.found_inf = (~torch.isfinite(norm)).float()
            self.wrapped.step()
            skipped = self.optimizer.found_inf
            del self.optimizer.found_inf
        elif self._zero_without_norm:
            self._partition_sq = None
            self.wrapped.step()
            norm = self._partition_sq.sqrt()
            skipped = self.optimizer.found_inf  # the hook's, from the same sum
            del self.optimizer.found_inf
        else:
            self.wrapped.step()
            # ZeRO computes it every step: a device tensor, or inf (a float) when skipped
            norm = self.wrapped.get_global_grad_norm()
            norm = norm if isinstance(norm, torch.Tensor) else None
            skipped = self._flags[int(self.wrapped.skipped_steps > before)]
        self.grad_norm, self.skipped, self.nonfinite = norm, skipped, skipped
        self.loss_bad = skipped  # DeepSpeed's check covers the losses through their gradients
        return skipped

    def _check_partition(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        """Step pre-hook of the optimizer that ZeRO 1 and 2 step (fastgan's own), run once
        per parameter group, each holding this rank's partition of the reduced
        gradients: their squared norm, summed over ranks (one scalar all-reduce, on the
        device), gives the global norm, and a NaN or Inf anywhere makes it not finite
        on every rank alike. The fused Adam takes that as ``found_inf`` and skips its
        update on the device; ZeRO then all-gathers the unchanged partitions. The
        partitions are clipped by the global norm, as DeepSpeed would (fastgan's
        optimizers hold one parameter group; with more, each is clipped by the norm of
        the groups stepped so far)."""
        params = [p for group in optimizer.param_groups for p in group["params"]
                  if p.grad is not None]
        sq = nn.utils.get_total_norm([p.grad for p in params], foreach=True).float().square()
        sq = all_reduce_sum(sq, self.dist)
        self._partition_sq = sq if self._partition_sq is None else self._partition_sq + sq
        optimizer.found_inf = (~torch.isfinite(self._partition_sq)).float()
        if self._partition_clip > 0:
            nn.utils.clip_grads_with_norm_(params, self._partition_clip,
                                           self._partition_sq.sqrt(), foreach=True)

    @functools.cached_property
    def _flags(self) -> tuple[torch.Tensor, torch.Tensor]:
        """0 and 1 as device flags, made once (a fresh tensor would be a copy per step)."""
        return (torch.zeros((), device=self.dist.device),
                torch.ones((), device=self.dist.device))

    # ------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """Optimizer and scaler state (none/ddp); DeepSpeed's lives in save_sharded()'s
        files, which this names."""
        if self.deepspeed:
            return {"deepspeed": self.name}
        out = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            out["scaler"] = self.scaler.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        if self.deepspeed:
            if "deepspeed" not in state:
                raise UserError(f"checkpoint holds no DeepSpeed state for {self.name}")
            return  # load_sharded reads it
        if "optimizer" not in state:
            raise UserError(f"checkpoint holds no optimizer state for {self.name} "
                            "(was it written under --strategy deepspeed?)")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    @property
    def writes_shards(self) -> bool:
        """Whether this engine writes files of its own into a checkpoint (DeepSpeed's
        per-rank optimizer partitions)."""
        return self.deepspeed

    def save_sharded(self, ckpt_dir: Path) -> None:
        """Every rank calls this: DeepSpeed writes each rank's optimizer partition."""
        if self.deepspeed:
            self.wrapped.save_checkpoint(str(ckpt_dir / self.name), tag="engine",
                                         save_latest=False)

    def load_sharded(self, ckpt_dir: Path) -> None:
        """Every rank calls this: DeepSpeed reads each rank's optimizer partition."""
        if not self.deepspeed:
            return
        # DeepSpeed returns (None, None) when nothing is there: never carry on silently
        path, _ = self.wrapped.load_checkpoint(str(Path(ckpt_dir) / self.name), tag="engine",
                                               load_lr_scheduler_states=False)
        if path is None:
            raise UserError(f"{ckpt_dir}: no DeepSpeed checkpoint of {self.name}")


def _skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` takes GradScaler's ``found_inf`` and skips its update on the
    device (the fused ones do); any other needs the skip flag on the host: one read per
    step."""
    return getattr(optimizer, "_step_supports_amp_scaling", False)


def resolve_strategy(strategy: str, world: int) -> str:
    if strategy == "auto":
        return "ddp" if world > 1 else "none"
    if strategy == "none" and world > 1:
        raise UserError(f"--strategy none: {world} processes were started; use ddp or "
                        "deepspeed, or start one process")
    return strategy


def build(G: nn.Module, D: nn.Module, opt_G: torch.optim.Optimizer,
          opt_D: torch.optim.Optimizer, opts: EngineOptions, dist: Dist,
          engine: type[Engine] = Engine) -> tuple[Engine, Engine]:
    """G's and D's engines, of class ``engine``."""
    return engine("G", G, opt_G, opts, dist), engine("D", D, opt_D, opts, dist)


@torch.no_grad()
def sync_buffers(module: nn.Module, dist: Dist) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks."""
    average_in_place([b for b in module.buffers() if b.is_floating_point()], dist)


# ------------------------------------------------------------------ DeepSpeed

def deepspeed_configs(opts: EngineOptions, world: int, *, cpu: bool = False,
                      skips_on_device: bool = True) -> dict[str, dict]:
    """The config of each network's engine: fastgan's flags, then the user's shared block,
    then the user's block for that network (deep-merged, later wins). ``cpu``: the ranks
    talk over gloo. ``skips_on_device``: the optimizers take GradScaler's ``found_inf``
    (fastgan's fused Adam does), so that a step can be skipped without DeepSpeed."""
    zero = {"stage": opts.zero}
    if cpu:
        # gloo has no reduce-scatter: ZeRO then reduces every gradient slice to its owner
        # with a collective of its own; one all-reduce per bucket is cheaper there.
        # Contiguous gradients spare a GPU's memory fragmentation; on a CPU they are
        # one more copy of every gradient per step.
        zero["reduce_scatter"] = False
        zero["contiguous_gradients"] = False
    base = {
        "train_micro_batch_size_per_gpu": opts.micro_batch,
        "gradient_accumulation_steps": opts.accum,
        "train_batch_size": opts.micro_batch * opts.accum * world,
        "zero_optimization": zero,
        "gradient_clipping": opts.grad_clip,
        # fastgan's own Adam (fused, one kernel for all tensors) with its per-network lr
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }
    # A DeepSpeed engine turns off any autocast around its forward unless its config
    # names one, so fastgan's own autocast (which covers the plain-module calls: D in the
    # G phase, R1) does not reach the forwards that run through the engines.
    if opts.precision == "bf16":
        # Weights, gradients and ZeRO partitions stay fp32; the engine's forward runs
        # under torch's bf16 autocast. No module is "lower-precision safe": gradients are
        # all-reduced in fp32 (DeepSpeed would otherwise reduce Linear/Conv ones in bf16).
        base["torch_autocast"] = {"enabled": True, "dtype": "bfloat16",
                                  "lower_precision_safe_modules": []}
    user = _read_user_config(opts.deepspeed_config) if opts.deepspeed_config else {}
    shared = {k: v for k, v in user.items() if k not in NETWORKS}
    out = {}
    for net in NETWORKS:
        cfg = _merge(_merge(copy.deepcopy(base), shared), user.get(net, {}))
        stage = cfg.get("zero_optimization", {}).get("stage", 0)
        if stage not in (0, 1, 2):
            raise UserError(f"--deepspeed-config: ZeRO stage {stage} for {net}: only 0, 1 and "
                            "2 are supported (the G phase runs D's plain module, which needs "
                            "its parameters whole)")
        if stage in (1, 2) and skips_on_device:
            # DeepSpeed's own norm reads its validity back to the host every step (its
            # NaN/Inf check, and again before it clips); the engine checks and clips the
            # reduced gradients on the device instead (Engine._check_partition).
            cfg["zero_optimization"].setdefault("compute_grad_norm", False)
        out[net] = cfg
    return out


def _read_user_config(path: str) -> dict:
    try:
        user = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"--deepspeed-config: cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"--deepspeed-config: {path} is not valid JSON: {e}") from None
    if not isinstance(user, dict):
        raise UserError(f"--deepspeed-config: {path} must hold a JSON object")
    for net in NETWORKS:
        if not isinstance(user.get(net, {}), dict):
            raise UserError(f"--deepspeed-config: \"{net}\" must be an object of overrides")
    for where, block in [("", user), *((f"{n}.", user.get(n, {})) for n in NETWORKS)]:
        for key in block:
            if key in OWNED_KEYS:
                raise UserError(f"--deepspeed-config: {where}{key} comes from "
                                f"{OWNED_KEYS[key]}; remove it from {path}")
    return user


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def _deepspeed_engine(name: str, module: nn.Module, optimizer: torch.optim.Optimizer,
                      opts: EngineOptions, dist: Dist):
    """Network ``name``'s DeepSpeed engine, and the gradient norm that fastgan clips to
    in its place (0: none), where DeepSpeed's own norm is turned off."""
    try:
        import deepspeed
    except ImportError as e:
        raise UserError(f"--strategy deepspeed: cannot import deepspeed ({e})") from None
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if opts.precision == "fp16":
        # DeepSpeed's fp16 turns the weights themselves to fp16, but not BatchNorm's
        # running statistics (the step then fails: "Expected running_mean to have type
        # Half"), and StyleGAN2 keeps its low resolutions in fp32: not supported.
        raise UserError("--precision fp16: not supported under --strategy deepspeed "
                        "(DeepSpeed's fp16 keeps the weights themselves in fp16, which "
                        "fastgan's networks do not take); use bf16, or fp16 with "
                        "--strategy ddp or none")
    # DeepSpeed reads these even for one process started without a launcher
    for key, value in (("LOCAL_RANK", dist.local_rank), ("RANK", dist.rank),
                       ("WORLD_SIZE", dist.world)):
        os.environ.setdefault(key, str(value))
    cfg = deepspeed_configs(opts, dist.world, cpu=dist.device.type == "cpu",
                            skips_on_device=_skips_on_device(optimizer))[name]
    clip = 0.0
    if cfg["zero_optimization"].get("compute_grad_norm") is False:
        # DeepSpeed clips only by its own norm: fastgan clips in its place
        clip, cfg["gradient_clipping"] = cfg.get("gradient_clipping", 0.0), 0.0
    try:
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=cfg,
                                               dist_init_required=False)
    except (ValueError, AssertionError) as e:  # DeepSpeed's config validation
        raise UserError(f"--strategy deepspeed: {name}'s engine rejected its config: "
                        f"{e}") from None
    engine.checkpoint_engine.load = _load_weights_only
    return engine, clip


def _load_weights_only(path: str, map_location=None):
    """DeepSpeed's checkpoint loader with ``weights_only=True`` (its own passes False):
    loading a checkpoint never runs code from it. Its files hold tensors, containers
    and the few DeepSpeed classes allowed here by name."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location=map_location, weights_only=True)

