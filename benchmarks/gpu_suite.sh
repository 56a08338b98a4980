#!/usr/bin/env bash
# The GPU checks and benchmarks behind RESULTS.md, in sections small enough to run one or a few
# at a time (each has its own time limit). Logs go to $LOG_DIR (default: bench-logs); the
# benchmarks also append their tables to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_suite.sh kernel-tests decode-b1        # one H200
#   bash benchmarks/gpu_suite.sh tp                             # two GPUs
#
# Sections:
#   kernel-tests   Triton kernels and CUDA graphs against their references (pytest -m gpu)
#   engine-tests   engine parity with transformers / peft on CUDA (LORAPLEX_TEST_DEVICE=cuda)
#   gemv-sweep     decode GEMV block sizes, bf16 and fp8, written to the GPU's config table
#   decode-b1      the fused decode projections against the kernels they replace, then batch-1
#                  decode, bf16 and fp8, against the memory roofline; step anatomy
#   prefetch       batch-1 decode with the GEMV's L2 prefetch off and on
#   hotload        adapter load times, disk -> CPU -> GPU slot
#   lora           multi-LoRA throughput at batch 256 (base, 1..128 adapters, fp8 base)
#   attention      decode attention block sizes, written to the GPU's config table
#   tp             tensor parallelism: all-reduce latency (NCCL, symmetric memory), parity
#                  tests, then TP 1 and 2 throughput (two GPUs)
#   moe            the mixtral-8x7b preset beside transformers, bf16 and fp8 (~94 GB on disk;
#                  the two-GPU machine has the disk for it)
#   moe-tp2        fused MoE kernel tests, then the same preset at TP 2 (two GPUs; right after
#                  `moe`, while the machine still holds the checkpoint)
#   serve          the server with 128 adapters over 16 slots under streaming clients; needs the
#                  platform's wheels in .whl/ where the GPU machine has no package index:
#                  pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#                    --abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#                    --dest .whl fastapi uvicorn sqlalchemy alembic boto3 pydantic-settings \
#                    python-multipart
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG_DIR="${LOG_DIR:-bench-logs}"
mkdir -p "$LOG_DIR"
LOG_DIR="$(cd "$LOG_DIR" && pwd)"
START=$(date +%s)

note() { echo "== $1 ($(($(date +%s) - START)) s)"; }

# run NAME SECONDS COMMAND...: the command's output to $LOG_DIR/NAME.log, its tail here.
run() {
    local name=$1 limit=$2 dir=.
    shift 2
    if [ "$1" = in_benchmarks ]; then
        dir=benchmarks
        shift
    fi
    (cd "$dir" && timeout "$limit" "$@") >"$LOG_DIR/$name.log" 2>&1
    local status=$?
    grep -E "^\||passed|failed|error|Error" "$LOG_DIR/$name.log" | grep -v "^\[" | tail -40
    note "$name: exit $status"
}

# set_config FIELD VALUE OP/KEY...: set FIELD in each OP/KEY entry of this GPU's config table
set_config() {
    python - "$@" <<'EOF'
import json, sys, torch
from pathlib import Path
from loraplex.kernels.launch_config import device_table_name
field, value, *entries = sys.argv[1:]
path = Path("loraplex/kernels/configs") / f"{device_table_name(torch.device('cuda'))}.json"
table = json.loads(path.read_text())
for entry in entries:
    op, key = entry.split("/")
    table.setdefault(op, {}).setdefault(key, {})[field] = json.loads(value)
path.write_text(json.dumps(table, indent=1) + "\n")
EOF
}

for section in "$@"; do
    case $section in
    kernel-tests)
        run kernel-tests 300 python -m pytest -m gpu -q -p no:cacheprovider -rf --tb=short \
            tests/kernels tests/engine/test_cuda_graphs.py tests/engine/test_fused_projections.py \
            --ignore=tests/kernels/test_fused_moe_gpu.py
        ;;
    engine-tests)
        LORAPLEX_TEST_DEVICE=cuda run engine-tests 500 python -m pytest -q -p no:cacheprovider \
            -rf --tb=short tests/engine/test_greedy_parity.py tests/engine/test_lora_parity.py \
            tests/engine/test_fp8.py tests/engine/test_async_scheduling.py
        ;;
    gemv-sweep)
        run gemv-sweep 300 in_benchmarks python fp8_gemm.py --quick --rows 1,4 --write-config
        ;;
    decode-b1)
        run fused-projections 120 in_benchmarks python fused_projections.py
        run decode-b1 200 in_benchmarks python offline_throughput.py --batches 1 \
            --hf-batches "" --quantization fp8
        run profile-bf16 90 in_benchmarks python profile_decode.py --batch 1 --kernels 14
        run profile-fp8 90 in_benchmarks python profile_decode.py --batch 1 --kernels 14 \
            --quantization fp8
        ;;
    prefetch)
        for k in 0 2048 8192; do
            entries=()
            for key in 6144x4096 4096x4096 28672x4096 4096x14336; do
                entries+=("gemv/$key" "fp8_gemv/$key")
            done
            set_config prefetch_k "$k" "${entries[@]}"
            run "prefetch-$k" 90 in_benchmarks python profile_decode.py --batch 1 --kernels 8
        done
        ;;
    hotload)
        run hotload 150 in_benchmarks python lora_hotload.py
        ;;
    lora)
        run lora 400 in_benchmarks python lora_throughput.py --batch 256 \
            --adapters 0,1,8,32,128
        run lora-fp8 300 in_benchmarks python lora_throughput.py --batch 256 --adapters 0,32 \
            --quantization fp8 --peft-batch 0
        ;;
    attention)
        run attention 400 in_benchmarks python kernel_tuning.py --only attention
        ;;
    tp)
        run all-reduce 120 in_benchmarks python all_reduce.py --gpus 2
        LORAPLEX_TEST_DEVICE=cuda run tp-tests 400 python -m pytest -q -p no:cacheprovider -rf \
            --tb=short -s tests/engine/test_tensor_parallel.py -k "tp2_greedy or symmetric"
        LORAPLEX_TP_ALL_REDUCE=symm_mem run tp-throughput 400 in_benchmarks \
            python offline_throughput.py --tp 1,2 --batches 1,256 --hf-batches ""
        LORAPLEX_TP_ALL_REDUCE=symm_mem run tp-lora 300 in_benchmarks python lora_throughput.py \
            --tp 2 --batch 1,256 --adapters 0,32 --peft-batch 0
        ;;
    moe)
        run moe 570 in_benchmarks python moe.py --batches 1,64 --hf-batches 1,64
        ;;
    moe-tp2)
        run moe-kernel-tests 150 python -m pytest -m gpu -q -p no:cacheprovider -rf \
            --tb=short tests/kernels/test_fused_moe_gpu.py
        LORAPLEX_TP_ALL_REDUCE=symm_mem run moe-tp2 420 in_benchmarks python moe.py --tp 2 \
            --batches 1,64 --fp8-batches 1 --no-hf --no-kernel
        ;;
    serve)
        if ls .whl/*.whl >/dev/null 2>&1; then
            python -m pip install -q --no-index --no-deps --target /tmp/loraplex-site .whl/*.whl
            export PYTHONPATH="$PYTHONPATH:/tmp/loraplex-site"
        fi
        run serve 500 in_benchmarks python serve.py --adapters 128 --slots 16 --rate 4 \
            --duration 60
        ;;
    *)
        echo "unknown section $section" >&2
        exit 2
        ;;
    esac
done
cp benchmarks/RESULTS.md "$LOG_DIR/RESULTS.md"
