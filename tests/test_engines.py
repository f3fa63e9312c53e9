"""Engines: DeepSpeed configs per network, strategy choice, DeepSpeed checkpoints that
save and load across 2 real ranks."""

import functools
import json

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from fastgan import models
from fastgan.errors import UserError
from fastgan.models.mlp import MLPDiscriminator, MLPGenerator
from fastgan.train import checkpoint, distributed, engines
from fastgan.train import state as train_state
from fastgan.train.build import build_gan
from fastgan.train.phases import GANStep
from ranks import free_port, set_rank_env, spawn


def _opts(**kw):
    base = dict(strategy="deepspeed", precision="fp32", micro_batch=8, accum=2, grad_clip=0.0,
                zero=1)
    return engines.EngineOptions(**{**base, **kw})


def test_deepspeed_configs_per_network(tmp_path):
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": False},
                             "G": {"gradient_clipping": 1.0},
                             "D": {"zero_optimization": {"stage": 0}}}))
    cfgs = engines.deepspeed_configs(_opts(deepspeed_config=str(f), precision="bf16"), 4)
    G, D = cfgs["G"], cfgs["D"]
    assert G["train_batch_size"] == D["train_batch_size"] == 8 * 2 * 4
    assert G["gradient_accumulation_steps"] == 2
    assert G["zero_optimization"] == {"stage": 2, "overlap_comm": False,
                                      "compute_grad_norm": False}
    assert D["zero_optimization"] == {"stage": 0, "overlap_comm": False}
    assert G["gradient_clipping"] == 1.0 and D["gradient_clipping"] == 0.0
    assert "G" not in G and "D" not in D
    # bf16: the engine's forward under torch's autocast (a DeepSpeed engine turns an outer
    # CUDA autocast off), fp32 weights, and gradients reduced in fp32
    assert G["torch_autocast"] == {"enabled": True, "dtype": "bfloat16",
                                   "lower_precision_safe_modules": []}
    assert G["torch_autocast"] is not D["torch_autocast"]
    assert "bf16" not in G and "fp16" not in G
    assert "torch_autocast" not in engines.deepspeed_configs(_opts(precision="fp32"), 2)["G"]


def test_zero_leaves_the_norm_to_fastgan(tmp_path):
    """DeepSpeed's own gradient norm, read back every step, is turned off under ZeRO 1 and
    2 (fastgan checks and clips in its place) unless the optimizer cannot skip a step on
    the device or the user's config says otherwise."""
    def norm_flag(*, skips_on_device=True, **kw):
        cfgs = engines.deepspeed_configs(_opts(**kw), 2, skips_on_device=skips_on_device)
        return {net: cfg["zero_optimization"].get("compute_grad_norm") for net, cfg in
                cfgs.items()}

    assert norm_flag() == norm_flag(zero=2) == {"G": False, "D": False}
    assert norm_flag(zero=0) == {"G": None, "D": None}
    assert norm_flag(grad_clip=1.0) == {"G": False, "D": False}
    assert norm_flag(skips_on_device=False) == {"G": None, "D": None}
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"D": {"zero_optimization": {"compute_grad_norm": True}}}))
    assert norm_flag(deepspeed_config=str(f)) == {"G": False, "D": True}


@pytest.mark.parametrize("content, message", [
    ({"train_batch_size": 64}, "train_batch_size comes from --batch"),
    ({"D": {"optimizer": {"type": "Adam"}}}, "D.optimizer comes from --lr-g"),
    ({"bf16": {"enabled": True}}, "bf16 comes from --precision"),
    ({"G": {"zero_optimization": {"stage": 3}}}, "ZeRO stage 3 for G"),
    ({"G": 1}, '"G" must be an object'),
    ([1, 2], "must hold a JSON object"),
])
def test_deepspeed_config_errors_name_the_culprit(tmp_path, content, message):
    f = tmp_path / "ds.json"
    f.write_text(json.dumps(content))
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        engines.deepspeed_configs(_opts(deepspeed_config=str(f)), 2)


def test_deepspeed_config_not_json(tmp_path):
    f = tmp_path / "ds.json"
    f.write_text("{stage: 2")
    with pytest.raises(UserError, match="ds.json is not valid JSON"):
        engines.deepspeed_configs(_opts(deepspeed_config=str(f)), 2)


def test_resolve_strategy():
    assert engines.resolve_strategy("auto", 1) == "none"
    assert engines.resolve_strategy("auto", 2) == "ddp"
    assert engines.resolve_strategy("deepspeed", 1) == "deepspeed"
    with pytest.raises(UserError, match="--strategy none: 2 processes"):
        engines.resolve_strategy("none", 2)


@pytest.mark.parametrize("args, message", [
    (["--zero", "3"], "--zero: must be 0, 1 or 2, got 3"),
    (["--batch", "16", "--accum", "3"], "--batch: 16 does not split into --accum 3"),
    (["--deepspeed-config", "x.json"], "--deepspeed-config: needs --strategy deepspeed"),
    (["--strategy", "deepspeed", "--deepspeed-config", "missing.json"],
     "--deepspeed-config: no such file: missing.json"),
    (["--strategy", "fsdp"], "--strategy: 'fsdp' is not one of auto, none, ddp, deepspeed"),
    (["--precision", "fp8"], "--precision: 'fp8' is not one of"),
    (["--grad-clip", "-1"], "--grad-clip: must be >= 0"),
])
def test_bad_distribution_flags(tmp_path, args, message):
    from conftest import run_cli

    r = run_cli("train", "--dry-run", "--data", "builtin:ring", *args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _engine_state(step: GANStep, d) -> train_state.TrainState:
    """What a checkpoint holds of a GAN step's networks and engines."""
    state = train_state.TrainState(d)
    for name, piece in (("G", step.G.module), ("D", step.D.module), ("engine_G", step.G),
                        ("engine_D", step.D)):
        state.add(name, piece)
    return state


def _gan(d, seed, strategy, zero=2):
    torch.manual_seed(seed)
    G, D = MLPGenerator(z_dim=4, width=16), MLPDiscriminator(width=16)
    opts = engines.EngineOptions(strategy=strategy, precision="fp32", micro_batch=8, accum=1,
                                 grad_clip=0.0, zero=zero)
    G_e, D_e = engines.build(G, D, torch.optim.Adam(G.parameters(), 1e-2),
                             torch.optim.Adam(D.parameters(), 1e-2), opts, d)
    return GANStep(G_e, D_e, dist=d, precision="fp32")


def _batch(i, rank):
    g = torch.Generator().manual_seed(1000 * i + rank)
    return torch.randn(8, 2, generator=g), torch.randn(8, 4, generator=g)


def _roundtrip_worker(rank, port, tmp, strategy, results):
    set_rank_env(rank, 2, port)
    d = distributed.init("cpu")
    try:
        a = _gan(d, 0, strategy)
        for i in range(1, 4):
            a(*_batch(i, rank), i)
        saving = _engine_state(a, d)
        # only DeepSpeed's engines write files of their own
        assert (saving.shard_writer() is not None) == (strategy == "deepspeed")
        checkpoint.save(tmp, 3, saving.state_dict({"step": 3}), {}, keep=2,
                        sharded=saving.shard_writer(),
                        gather=functools.partial(distributed.all_gather_object, d=d),
                        is_main=d.is_main)
        distributed.barrier(d)
        b = _gan(d, 1, strategy)  # other initial weights, fresh optimizer state
        ckpt = checkpoint.complete(tmp)[-1]
        _engine_state(b, d).load_state_dict(train_state.load(ckpt), ckpt)
        same_at_load = all(torch.equal(p, q) for p, q in zip(
            [*a.G.module.parameters(), *a.D.module.parameters()],
            [*b.G.module.parameters(), *b.D.module.parameters()]))
        for i in range(4, 7):  # Adam's moments must have come back too
            a(*_batch(i, rank), i)
            b(*_batch(i, rank), i)
        pa = [p.detach().clone() for p in [*a.G.module.parameters(), *a.D.module.parameters()]]
        pb = [p.detach().clone() for p in [*b.G.module.parameters(), *b.D.module.parameters()]]
        results[rank] = (same_at_load, max((x - y).abs().max().item() for x, y in zip(pa, pb)),
                         sorted(p.name for p in (ckpt / "G" / "engine").iterdir())
                         if strategy == "deepspeed" else [])
    finally:
        distributed.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_engine_checkpoint_saves_and_loads(tmp_path, strategy):
    """Train 3 steps on 2 ranks, checkpoint, load into fresh engines with other weights,
    train 3 more: bitwise the same as going straight on (ZeRO-2 optimizer partitions
    included)."""
    results = mp.Manager().dict()
    spawn(_roundtrip_worker, (free_port(), str(tmp_path), strategy, results), 2)
    for rank in (0, 1):
        same_at_load, diff, files = results[rank]
        assert same_at_load and diff == 0.0
    if strategy == "deepspeed":  # one optimizer partition per rank
        assert [f for f in files if f.startswith("zero_pp_rank_")] == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def _comm_worker(rank, port, results):
    """Count DDP's all-reduces: per network, per phase."""
    set_rank_env(rank, 2, port)
    d = distributed.init("cpu")
    try:
        torch.manual_seed(0)
        G, D = MLPGenerator(z_dim=4, width=16), MLPDiscriminator(width=16)
        opts = engines.EngineOptions(strategy="ddp", precision="fp32", micro_batch=4,
                                     accum=4, grad_clip=0.0)
        G_e, D_e = engines.build(G, D, torch.optim.Adam(G.parameters(), 1e-3),
                                 torch.optim.Adam(D.parameters(), 1e-3), opts, d)
        calls = {"G": 0, "D": 0}

        def counting(name):
            def hook(state, bucket):
                calls[name] += 1
                fut = torch.distributed.all_reduce(bucket.buffer().div_(2), async_op=True)
                return fut.get_future().then(lambda f: f.value()[0])
            return hook

        G_e.wrapped.register_comm_hook(None, counting("G"))
        D_e.wrapped.register_comm_hook(None, counting("D"))
        step = GANStep(G_e, D_e, dist=d, precision="fp32", accum=4)
        real, z = _batch(1, rank)
        real, z = torch.cat([real, real]), torch.cat([z, z])  # 16 = 4 micro-batches of 4
        batch = step.split(real, z)  # 4 micro-batches: G runs in each phase
        step.d_main(batch)
        after_d = dict(calls)
        step.g_main(batch)
        results[rank] = (after_d, dict(calls))
    finally:
        distributed.shutdown()


@pytest.mark.slow
def test_ddp_all_reduces_once_per_step_and_never_d_in_the_g_phase():
    """--accum 4: D's gradients are all-reduced on the last micro-batch only (one call
    per bucket: these MLPs fit one bucket); the G phase all-reduces G's and never D's."""
    results = mp.Manager().dict()
    spawn(_comm_worker, (free_port(), results), 2)
    for rank in (0, 1):
        after_d, after_g = results[rank]
        assert after_d == {"G": 0, "D": 1}
        assert after_g == {"G": 1, "D": 1}


@pytest.mark.slow  # a DeepSpeed engine: the first in a venv builds its shm op (~90 s)
def test_deepspeed_bf16_forward_runs_in_bf16_with_fp32_weights():
    """DeepSpeed takes fastgan's bf16 config: forwards through the engine in bf16, weights
    and gradients fp32. (On CPU DeepSpeed leaves an outer CPU autocast alone; on CUDA it
    switches it off, which only the config above prevents: GPU-checked.)"""
    d = distributed.init("cpu", group_of_one=True)
    try:
        G, D = MLPGenerator(z_dim=4, width=16), MLPDiscriminator(width=16)
        opts = engines.EngineOptions(strategy="deepspeed", precision="bf16", micro_batch=8,
                                     accum=1, grad_clip=0.0, zero=0)  # grads stay in .grad
        G_e, D_e = engines.build(G, D, torch.optim.Adam(G.parameters(), 1e-3),
                                 torch.optim.Adam(D.parameters(), 1e-3), opts, d)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the phases call it
            with torch.no_grad():
                assert G_e.wrapped(torch.randn(8, 4)).dtype == torch.bfloat16
            out = D_e.wrapped(torch.randn(8, 2))
        assert out.dtype == torch.bfloat16
        D_e.wrapped.backward(out.float().mean())
        assert all(p.dtype == torch.float32 for p in G.parameters())
        assert all(p.grad is not None and p.grad.dtype == torch.float32
                   for p in D.parameters())
    finally:
        distributed.shutdown()


class ConvolutionWeights(TorchDispatchMode):
    """Whether each convolution's weight came in channels_last, in call order, and the
    storage of each forward convolution's weight."""

    # the position of the weight among each convolution op's arguments
    WEIGHT_ARG = {torch.ops.aten.convolution.default: 1,
                  torch.ops.aten.convolution_backward.default: 2}

    def __init__(self):
        super().__init__()
        self.channels_last, self.forward_storages = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.WEIGHT_ARG:
            weight = args[self.WEIGHT_ARG[func]]
            self.channels_last.append(weight.is_contiguous(memory_format=torch.channels_last))
            if func == torch.ops.aten.convolution.default:
                self.forward_storages.append(weight.untyped_storage().data_ptr())
        return func(*args, **(kwargs or {}))


@pytest.mark.slow  # a DeepSpeed engine: the first in a venv builds its shm op (~90 s)
@pytest.mark.parametrize("strategy", ["none", "deepspeed"])
def test_convolutions_take_channels_last_weights_under_every_strategy(strategy):
    """DeepSpeed keeps its weights contiguous (views of its flat buffers); its DCGAN's
    convolutions still take them channels_last, as fastgan's other strategies store them,
    as views of the stored weights (no copy per call), and a step trains every weight."""
    d = distributed.init("cpu", group_of_one=True)
    try:
        g_kw, d_kw = models.model_kwargs("dcgan", res=8, z_dim=4, width=4)
        gan = build_gan("dcgan", g_kw, d_kw, images=True, dist=d, lr_g=1e-3, lr_d=1e-3,
                        betas=(0.5, 0.999), seed=0, opts=engines.EngineOptions(
                            strategy=strategy, precision="fp32", micro_batch=4, accum=1,
                            grad_clip=0.0, zero=1))
        nets = (gan.step.G.module, gan.step.D.module)
        weights = [p for net in nets for p in net.parameters() if p.dim() == 4]
        stored_cl = [w.is_contiguous(memory_format=torch.channels_last) for w in weights]
        assert all(stored_cl) == (strategy != "deepspeed") and any(stored_cl) == all(stored_cl)
        before = [w.detach().clone() for w in weights]
        real = torch.rand(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
        with ConvolutionWeights() as convs:
            gan.step(real, torch.randn(4, 4), 1)
        assert len(convs.channels_last) > 10 and all(convs.channels_last)
        stored = {w.untyped_storage().data_ptr() for w in weights}
        assert convs.forward_storages and set(convs.forward_storages) <= stored
        assert all(not torch.equal(w, b) for w, b in zip(weights, before))
    finally:
        distributed.shutdown()


@pytest.mark.slow  # a CLI process importing DeepSpeed (~8 s)
def test_deepspeed_fp16_is_refused_in_one_line(tmp_path):
    from conftest import run_fastgan

    r = run_fastgan("train", "--data", "builtin:ring", "--steps", "1", "--strategy",
                    "deepspeed", "--precision", "fp16", "--out", str(tmp_path / "r"))
    assert r.returncode == 2, r.stderr
    assert "--precision fp16: not supported under --strategy deepspeed" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # a DeepSpeed engine: the first in a venv builds its shm op (~90 s)
def test_deepspeed_without_zero_skips_a_nan_step_on_the_device():
    """ZeRO stage 0: the gradients sit in .grad after the engine's all-reduce, and the
    fused Adam that DeepSpeed steps takes fastgan's skip flag: a NaN in D's loss leaves D
    as it was (G steps), and D steps again after."""
    d = distributed.init("cpu", group_of_one=True)
    try:
        torch.manual_seed(0)
        G, D = MLPGenerator(z_dim=4, width=16), MLPDiscriminator(width=16)
        opts = engines.EngineOptions(strategy="deepspeed", precision="fp32", micro_batch=8,
                                     accum=1, grad_clip=0.0, zero=0)
        G_e, D_e = engines.build(G, D, torch.optim.Adam(G.parameters(), 1e-2, fused=True),
                                 torch.optim.Adam(D.parameters(), 1e-2, fused=True), opts, d)
        step = GANStep(G_e, D_e, dist=d, precision="fp32")
        real, z = torch.randn(8, 2), torch.randn(8, 4)
        step(real, z, 1)
        d_before = [p.detach().clone() for p in D.parameters()]
        g_before = [p.detach().clone() for p in G.parameters()]
        bad = real.clone()
        bad[0, 0] = float("nan")
        step(bad, z, 2)
        assert all(torch.equal(a, b) for a, b in zip(d_before, D.parameters()))
        assert any(not torch.equal(a, b) for a, b in zip(g_before, G.parameters()))
        assert step.skip_counts() == [1, 0, 0]
        step(real, z, 3)
        assert any(not torch.equal(a, b) for a, b in zip(d_before, D.parameters()))
    finally:
        distributed.shutdown()
