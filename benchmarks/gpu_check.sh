#!/usr/bin/env bash
# What the course run needs, measured on a bare GPU box that holds only this repository (torch,
# torchvision, numpy, scikit-learn; no papermill, pooch, nbconvert or pypdf), in one run within a
# global deadline of 8 minutes. Steps, in the order that keeps the headline numbers if time runs out:
#   env         versions, cores, load; nvidia-smi
#   data        with no DATA_DIR, the demo set (python -m selfsup.cli data demo) in a work folder
#   cuda_tests  the CUDA tests: augmentation and losses with no host sync, bf16 losses in fp32, the
#               precision auto picks, the dataset moved with one copy, one sync for the state check
#   throughput  the card's matmul rate; then for each method (ResNet18, imagenet stem, 64x64, batch 1024,
#               bf16, channels_last, fused AdamW) our training step vs the usual torchvision +
#               DataLoader pipeline (all cores as workers): images/s, the ratio, and the step's
#               FLOP rate as a fraction of the matmul rate (throughput.json)
#   epoch       the course run as a user runs it: 2 epochs of 100,000 random 64x64 images with
#               monitoring and checkpoints, its wall time, peak GPU memory with the uint8 set resident,
#               the projected 300-epoch time; then features of the 100k + 10k images by the model
#               (timed), the k-NN (100k x 512) and the linear probe at 100k (epoch.json)
#   compiled    our training step with torch.compile, for each method (compiled.json)
#   learning    a short accuracy run: the course preset (SimCLR, tau 0.1), 30 epochs, on DATA_DIR
#               (e.g. the shared tinyimagenet-10 set) else the demo set (learning.json)
# Each step has its own time limit, cut to what is left of the deadline (skipped when too little is);
# each writes its JSON to OUT as soon as it has a number. OUT ends with at most 8 files (what the
# device tool brings back): log.txt, summary.txt (benchmarks/gpu_check_summary.py: a row per method,
# the epoch, memory and projection rows) and the JSON files. Copy the numbers into benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_check.sh [DATA_DIR] [OUT_DIR]   # DATA_DIR: train.npz, val.npz[, ood.npz]
#   SMOKE=1 bash benchmarks/gpu_check.sh "" OUT_DIR     # the same steps on the CPU at tiny sizes
#                                                       # (tests/test_gpu_check.py)
# SMOKE only changes the sizes below; each can also be set on its own (the test of the GPU path runs
# it on the CPU that way). Steps that need CUDA (cuda_tests) are skipped when DEVICE is not cuda.
#   PY (python3), BUDGET_S (480, the global deadline), DEVICE (cuda), BACKBONE (resnet18), IMAGE_SIZE
#   (64: of the throughput steps; the epoch's comes from its config), BATCH (1024),
#   PRECISION (bf16), WORKERS (DataLoader workers of the usual pipeline; all cores), THREADS (torch
#   threads; 0: torch's default), MATMUL (8192: matrix side of the matmul rate), METHODS (all four),
#   COMPILE_METHODS (all four), WARMUP and STEPS (untimed and timed steps a measurement: WORKERS and
#   2 x WORKERS), EPOCH_IMAGES (100000), VAL_IMAGES (10000), CLASSES (100),
#   EPOCH_CONFIG (configs/course.yaml), EPOCH_SET (config overrides, "key=value ..."), THROUGHPUT_SET
#   (the same for the throughput steps: smoke makes the heads small, as Barlow Twins' 8192-wide
#   projector takes seconds a step on a CPU), DEMO_ARGS
#   (options of `selfsup data demo`), LEARN_CONFIG (configs/course.yaml), LEARN_SET, LEARN_EPOCHS (30),
#   KEEP_WORK=1 keeps the work folder (data, runs).
#
# The usual pipeline needs 2 x WORKERS batches an epoch (throughput.py checks it): 32,768 images at
# 16 workers and batch 1024. A train.npz that small is used; a smaller one (the 2,000-image demo set)
# is replaced for the throughput steps by random uint8 images of that count -- the per-image cost
# of either pipeline does not depend on the pixels -- and the log and the JSON (setup.data) say so.
set -uo pipefail
DATA=${1:-}
OUT=${2:-benchmarks/out/gpu}
PY=${PY:-python3}
SMOKE=${SMOKE:-0}
BUDGET_S=${BUDGET_S:-480}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n $DATA ]]; then  # steps run from the repository root: make it absolute
    [[ -f $DATA/train.npz ]] || { echo "gpu_check.sh: no train.npz in $DATA" >&2; exit 2; }
    DATA=$(cd "$DATA" && pwd)
fi
export PYTHONPATH="$ROOT/lib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
DEADLINE=$((SECONDS + BUDGET_S))
RESERVE_S=10  # kept for the summary
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/log.txt"
: >"$LOG"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
STATUS="$WORK/steps.tsv"
: >"$STATUS"

# The sizes: the only thing SMOKE changes. Smoke: tiny sizes on the CPU, the script's path end to end
# in a minute or two: the usual pipeline in the main process (WORKERS=0: no worker processes to
# start on a small shared CPU; tests/test_gpu_check.py runs the real mode's workers and random
# images), and no method compiled (torch.compile's C++ build takes minutes on a CPU;
# tests/test_gpu_config.py compiles on the CPU). A variable set but empty (COMPILE_METHODS=) is kept.
ALL_METHODS=simclr,byol,barlow,vicreg
if [[ $SMOKE == 1 ]]; then
    : "${DEVICE:=cpu}" "${BACKBONE:=convnet}" "${IMAGE_SIZE:=32}" "${BATCH:=64}" "${PRECISION:=fp32}"
    : "${WORKERS:=0}" "${THREADS:=1}" "${MATMUL:=256}" "${METHODS:=$ALL_METHODS}" "${COMPILE_METHODS=}"
    : "${EPOCH_IMAGES:=256}" "${VAL_IMAGES:=64}" "${CLASSES:=10}" "${EPOCH_CONFIG:=$ROOT/configs/demo.yaml}"
    : "${EPOCH_SET=backbone=convnet width=8 batch_size=64}" "${THROUGHPUT_SET=width=8 proj_hidden=64 proj_dim=32 pred_hidden=64}"
    : "${DEMO_ARGS=--train-per-class 20 --val-per-class 5 --ood-per-class 5}"
    : "${LEARN_CONFIG:=$ROOT/configs/demo.yaml}" "${LEARN_SET=batch_size=64 width=8 eval_every=0}"
    : "${LEARN_EPOCHS:=1}" "${WARMUP:=1}" "${STEPS:=2}"
else
    : "${DEVICE:=cuda}" "${BACKBONE:=resnet18}" "${IMAGE_SIZE:=64}" "${BATCH:=1024}" "${PRECISION:=bf16}"
    : "${WORKERS:=$(nproc)}" "${THREADS:=0}" "${MATMUL:=8192}" "${METHODS:=$ALL_METHODS}"
    : "${COMPILE_METHODS=$ALL_METHODS}"
    : "${EPOCH_IMAGES:=100000}" "${VAL_IMAGES:=10000}" "${CLASSES:=100}" "${EPOCH_CONFIG:=$ROOT/configs/course.yaml}"
    : "${EPOCH_SET=}" "${THROUGHPUT_SET=}" "${DEMO_ARGS=}"
    : "${LEARN_CONFIG:=$ROOT/configs/course.yaml}" "${LEARN_SET=batch_size=512 warmup_epochs=3}"
    : "${LEARN_EPOCHS:=30}"
fi
# Warm-up: every worker's first batch arrives at about the same time; then two rounds are timed.
WARMUP=${WARMUP:-$WORKERS} STEPS=${STEPS:-$((2 * WORKERS))}
sets() { for kv in $1; do printf -- '--set\n%s\n' "$kv"; done; }  # "k=v k2=v2" -> --set k=v --set k2=v2
mapfile -t EPOCH_SETS < <(sets "$EPOCH_SET")
mapfile -t THROUGHPUT_SETS < <(sets "$THROUGHPUT_SET")
mapfile -t LEARN_SETS < <(sets "$LEARN_SET")
read -ra DEMO_OPTS <<<"$DEMO_ARGS"
echo "sizes: DEVICE=$DEVICE BACKBONE=$BACKBONE BATCH=$BATCH PRECISION=$PRECISION WORKERS=$WORKERS THREADS=$THREADS" \
    "METHODS=$METHODS COMPILE_METHODS=$COMPILE_METHODS EPOCH_IMAGES=$EPOCH_IMAGES VAL_IMAGES=$VAL_IMAGES" \
    "LEARN_EPOCHS=$LEARN_EPOCHS" >>"$LOG"

# step NAME LIMIT_S COMMAND...: run COMMAND from the repository root with a time limit of
# min(LIMIT_S, what is left of the deadline), its output into the log, its outcome into STATUS.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS - RESERVE_S))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        printf '%s\tno time\t0\tno time left of the %ss deadline\n' "$name" "$BUDGET_S" >>"$STATUS"
        echo "== $(date +%T) $name: skipped, no time left" | tee -a "$LOG"
        return
    fi
    echo "== $(date +%T) $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    (cd "$ROOT" && timeout -k 10 "$limit" "$@") 2>&1 | tee -a "$LOG" "$WORK/$name.out"
    local rc=${PIPESTATUS[0]} status=ok
    ((rc == 124 || rc == 137)) && status="timeout (${limit}s)"
    ((rc != 0 && rc != 124 && rc != 137)) && status="failed (exit $rc)"
    local note pick=tail
    [[ $name == data ]] && pick=head  # "wrote DIR: train N images ..."
    note=$(grep -v '^[[:space:]]*$' "$WORK/$name.out" | $pick -n 1 | tr '\t' ' ' | cut -c1-160)
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$note" >>"$STATUS"
}

skip() {  # skip NAME REASON
    printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$STATUS"
    echo "== $(date +%T) $1: skipped, $2" | tee -a "$LOG"
}

# Versions, CPU and GPU names also go into every JSON; the summary prints them.
step env 30 bash -c "uptime; echo cores \$(nproc); if command -v nvidia-smi >/dev/null; \
then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; else echo 'no nvidia-smi'; fi"

if [[ -z $DATA ]]; then
    DATA="$WORK/demo"
    step data 60 "$PY" -m selfsup.cli data demo --out "$DATA" "${DEMO_OPTS[@]}"
fi
N_TRAIN=$("$PY" -c "import sys, numpy as np; print(len(np.load(sys.argv[1])['labels']))" "$DATA/train.npz" 2>/dev/null || echo 0)
NEED=$((2 * WORKERS * BATCH))
if ((N_TRAIN >= NEED)); then
    THROUGHPUT_DATA=(--data "$DATA/train.npz")
else
    THROUGHPUT_DATA=(--num-images "$NEED")
    echo "== throughput: $DATA/train.npz has $N_TRAIN images, fewer than 2 x $WORKERS workers x batch $BATCH;" \
        "random uint8 images ($NEED) instead" | tee -a "$LOG"
fi

if [[ $DEVICE == cuda* ]]; then
    # Only the CUDA tests (the device image lacks papermill/pypdf, which other test files import).
    step cuda_tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_augment.py tests/test_losses.py \
        tests/test_gpu_config.py -k cuda
else
    skip cuda_tests "no CUDA device ($DEVICE)"
fi

T=("$PY" benchmarks/throughput.py "${THROUGHPUT_DATA[@]}" --device "$DEVICE" --backbone "$BACKBONE" --stem imagenet
   --image-size "$IMAGE_SIZE"
   --batch "$BATCH" --precision "$PRECISION" --workers "$WORKERS" --threads "$THREADS" --steps "$STEPS"
   --warmup-steps "$WARMUP" --repeats 1 "${THROUGHPUT_SETS[@]}")
step throughput 200 "${T[@]}" --methods "$METHODS" --matmul "$MATMUL" --out "$OUT/throughput.json"
step epoch 120 "$PY" benchmarks/course_epoch.py --device "$DEVICE" --config "$EPOCH_CONFIG" "${EPOCH_SETS[@]}" \
    --images "$EPOCH_IMAGES" --val-images "$VAL_IMAGES" --classes "$CLASSES" --threads "$THREADS" \
    --runs "$WORK/course_epoch" --out "$OUT"
if [[ -n $COMPILE_METHODS ]]; then
    step compiled 150 "${T[@]}" --methods "$COMPILE_METHODS" --compile --only train --pipelines ours \
        --out "$OUT/compiled.json"
else
    skip compiled "COMPILE_METHODS is empty"
fi
step learning 120 "$PY" benchmarks/learning.py --data "$DATA" --config "$LEARN_CONFIG" "${LEARN_SETS[@]}" \
    --methods simclr --epochs "$LEARN_EPOCHS" --threads "$THREADS" --runs "$WORK/runs" --out "$OUT/learning.json"

rm -f "$OUT"/*.tmp  # a step stopped mid-write
"$PY" "$ROOT/benchmarks/gpu_check_summary.py" "$OUT" "$STATUS" | tee "$OUT/summary.txt" | tee -a "$LOG"
echo "total ${SECONDS}s of the ${BUDGET_S}s deadline; OUT=$OUT" | tee -a "$OUT/summary.txt" "$LOG"
# Exit status: 0 when every step ran to success or was skipped on purpose (no CUDA device).
failed=$(cut -f1,2 "$STATUS" | grep -v -e $'\tok$' -e $'\tskipped$' | cut -f1 | tr '\n' ' ')
if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
if [[ -n $failed ]]; then echo "not ok: $failed" | tee -a "$LOG"; exit 1; fi
