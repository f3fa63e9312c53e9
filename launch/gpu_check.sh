#!/usr/bin/env bash
# The GPU check, in one go, within GPU_CHECK_BUDGET seconds (default 480; the commands
# that do not fit are cut short or skipped, and reported). Stages, in order:
#   kernels  the kernel tests with Triton compiled for CUDA (not interpreted), the
#            Triton-path training test, then `fastgan bench kernels`
#   sync     launch/sync_check.py: steady-state training steps (DCGAN, StyleGAN2; fp32,
#            bf16, fp16; --accum 2; --compile; DeepSpeed ZeRO-1) under
#            set_sync_debug_mode("error")
#   step     `fastgan bench step`: DCGAN 64 (batch 64) per precision with --compile,
#            StyleGAN2 256 (batch 16, NVlabs' default at 256 on one GPU) in bf16 with
#            --compile and in fp16, DeepSpeed ZeRO-1 against none (DCGAN 64, batch 64)
#            and the StyleGAN2 256 profile (python -m fastgan.bench.stylegan2_profile)
#   train    short `fastgan train` runs on the GPU (DCGAN, StyleGAN2, DeepSpeed with a
#            resume) and `fastgan sample` from the result
# Results go to $OUT (default ./gpu_check_out): summary.txt (the last thing printed) and
# logs.tar.gz (every log and JSON). Each command has its own timeout; a failing stage
# does not stop the next one, and the exit status says whether any failed.
#   bash launch/gpu_check.sh [kernels] [sync] [step] [train]   # default: all four
# fastgan must be importable (an editable install, as the README's).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT/logs"
LOGS="$OUT/logs"
unset TRITON_INTERPRET FASTGAN_KERNELS  # compiled kernels on CUDA tensors
stages="${*:-kernels sync step train}"
status=0
BUDGET="${GPU_CHECK_BUDGET:-480}"  # seconds for all commands; later ones are cut to fit
run() {  # run NAME SECONDS CMD...: log to $LOGS/NAME.log, note pass/fail in the summary
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS rc=0 left=$((BUDGET - SECONDS))
    if [ "$left" -lt 20 ]; then
        printf '%-28s skipped (budget of %ss spent)\n' "$name" "$BUDGET" >>"$OUT/summary.txt"
        status=1; return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "== $name: $*"
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
    tail -n 25 "$LOGS/$name.log"
    printf '%-28s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" >>"$OUT/summary.txt"
    [ "$rc" = 0 ] || status=1
}

python - <<'PY' | tee "$LOGS/device.txt" >"$OUT/summary.txt"
import torch, triton
assert torch.cuda.is_available(), "gpu_check: no CUDA GPU"
p = torch.cuda.get_device_properties(0)
print(f"{p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB; "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}")
PY
git rev-parse --short HEAD >>"$OUT/summary.txt" 2>/dev/null

for stage in $stages; do
case $stage in
kernels)
    run kernel_tests 200 python -m pytest -q tests/test_kernels.py \
        "tests/test_phases.py::test_training_is_the_same_on_the_triton_path"
    run bench_kernels 150 python -m fastgan bench kernels --json "$LOGS/kernels.json"
    ;;
sync)
    FASTGAN_CACHE="$PWD/.gpu-cache" run sync_check 240 python launch/sync_check.py
    ;;
step)
    for p in fp32 bf16 fp16; do
        run "step_dcgan64_$p" 150 python -m fastgan bench step --arch dcgan --res 64 \
            --batch 64 --precision $p --seconds 12 --compile --json "$LOGS/step_dcgan64_$p.json"
    done
    # DeepSpeed ZeRO-1 against no wrapper, in the same turns (versus_ratio)
    run step_dcgan64_bf16_deepspeed 120 python -m fastgan bench step --arch dcgan --res 64 \
        --batch 64 --precision bf16 --seconds 16 --no-baseline --strategy deepspeed --zero 1 \
        --versus none --json "$LOGS/step_dcgan64_bf16_deepspeed.json"
    run step_dcgan64_bf16_b512 90 python -m fastgan bench step --arch dcgan --res 64 \
        --batch 512 --precision bf16 --seconds 12 --json "$LOGS/step_dcgan64_bf16_b512.json"
    run step_sg2_256_bf16 240 python -m fastgan bench step --arch stylegan2 --res 256 \
        --batch 16 --precision bf16 --seconds 30 --compile --json "$LOGS/step_sg2_256_bf16.json"
    run step_sg2_256_fp16 150 python -m fastgan bench step --arch stylegan2 --res 256 \
        --batch 16 --precision fp16 --seconds 30 --json "$LOGS/step_sg2_256_fp16.json"
    run stylegan2_profile 150 python -m fastgan.bench.stylegan2_profile
    ;;
train)
    export FASTGAN_CACHE="$PWD/.gpu-cache"
    run train_dcgan 150 python -m fastgan train --data builtin:shapes --steps 400 \
        --log-every 100 --ckpt-every 200 --out "$OUT/run_dcgan" --no-progress
    run sample 60 python -m fastgan sample "$OUT/run_dcgan" --device cuda --out "$LOGS/grid.png"
    # DeepSpeed (bf16 through its torch_autocast), stopped at 60 steps and resumed to 100
    run train_deepspeed 150 python -m fastgan train --data builtin:shapes --steps 60 \
        --log-every 20 --strategy deepspeed --out "$OUT/run_ds" --no-progress
    run train_deepspeed_resumed 150 python -m fastgan train --data builtin:shapes --steps 100 \
        --log-every 20 --strategy deepspeed --out "$OUT/run_ds" --no-progress
    run train_sg2_32 150 python -m fastgan train --data builtin:shapes --arch stylegan2 \
        --width 32 --steps 200 --log-every 100 --out "$OUT/run_sg2" --no-progress
    if [ -f "$OUT/run_dcgan/metrics.jsonl" ]; then cp "$OUT/run_dcgan/metrics.jsonl" "$LOGS/dcgan_metrics.jsonl"; fi
    ;;
*) echo "gpu_check: unknown stage '$stage' (kernels, step, train)" >&2; exit 2 ;;
esac
done

tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs
rm -rf "$OUT/run_dcgan" "$OUT/run_ds" "$OUT/run_sg2"
python - "$LOGS" <<'PY' >>"$OUT/summary.txt"
# One line per bench step result: the figures BENCHMARKS.md takes.
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("step_*.json")):
    r = json.loads(f.read_text())
    if r.get("flops_per_img"):
        r["tflop_s"] = r["flops_per_img"] * r["img_s"] / 1e12
    keys = ("img_s", "baseline_img_s", "speedup", "sec_per_kimg", "tflop_s", "host_ms",
            "device_ms", "syncs_per_step", "ops_per_step", "compile_img_s", "compile_s")
    print(f.stem, " ".join(f"{k}={r[k]:.4g}" for k in keys if isinstance(r.get(k), (int, float))))
PY
echo "=== summary"
cat "$OUT/summary.txt"
exit $status
