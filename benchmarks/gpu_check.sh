#!/usr/bin/env bash
# Every GPU check in one run, on a bare GPU box that holds only this repository (torch and
# torchvision, maybe no papermill or pypdf), within a global deadline of 8 minutes:
#   env         versions, cores, load; nvidia-smi
#   data        with no DATA_DIR, the demo set (python -m selfsup.cli data demo) in a work folder
#               (smoke mode: the same generator, a tenth of the images)
#   cuda_tests  the CUDA tests: augmentation and losses with no host sync, bf16 losses in fp32
#   throughput  ours vs the usual pipeline (ResNet18, imagenet stem, batch 1024, bf16; aug and train)
#   cifar       the same, cifar stem, training steps only
#   knn, probe  k-NN (100k x 512, 10k queries) and the linear probe, on the GPU vs scikit-learn
#   compile     the imagenet-stem training step with torch.compile
#   learning    a short accuracy run: the course preset (ResNet18, SimCLR tau 0.1), 30 epochs
# Each step has its own time limit, cut to what is left of the deadline (skipped when too little is);
# each writes its JSON to OUT as soon as it has numbers (throughput after every measurement).
# OUT ends with at most 8 files (what the device tool brings back): log.txt, summary.txt (the
# table printed at the end) and the JSON files. Copy the numbers into benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_check.sh [DATA_DIR] [OUT_DIR]   # DATA_DIR: train.npz, val.npz[, ood.npz]
#   SMOKE=1 bash benchmarks/gpu_check.sh "" OUT_DIR     # the same steps on the CPU at tiny sizes,
#                                                       # CUDA-only steps skipped (tests/test_gpu_check.py)
# Environment: PY (python3), BUDGET_S (480, the global deadline), WORKERS (DataLoader workers of the
# usual pipeline; all cores), LEARN_EPOCHS (30), KEEP_WORK=1 keeps the work folder (data, runs).
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

if [[ $SMOKE == 1 ]]; then  # tiny sizes on the CPU: the script's path end to end in well under a minute
    # 2 x 2 workers x batch 64 = 256 images > the 200 made: random images, as on a bare GPU box.
    DEVICE=cpu BACKBONE=convnet BATCH=64 PRECISION=fp32 WORKERS=${WORKERS:-2} THREADS=(--threads 1)
    WARMUP=2 STEPS=4 LEARN_EPOCHS=${LEARN_EPOCHS:-1}
    FEATURES=(--n-train 2000 --n-test 200 --dim 32 --classes 10)
    LEARN=(--config "$ROOT/configs/demo.yaml" --set batch_size=64 --set width=8 --set eval_every=0 --threads 1)
else
    DEVICE=cuda BACKBONE=resnet18 BATCH=1024 PRECISION=bf16 WORKERS=${WORKERS:-$(nproc)} THREADS=()
    # Warm-up: every worker's first batch arrives at about the same time; then two rounds are timed.
    WARMUP=$WORKERS STEPS=$((2 * WORKERS)) LEARN_EPOCHS=${LEARN_EPOCHS:-30}
    FEATURES=()
    LEARN=(--config "$ROOT/configs/course.yaml" --set batch_size=512 --set warmup_epochs=3)
fi

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
    if [[ $SMOKE == 1 ]]; then  # the same generator, 200 / 50 / 50 images instead of 2000 / 500 / 500
        step data 60 "$PY" -c "import sys; from selfsup import data, demo_data
print(f'wrote {sys.argv[1]}:', data.describe(demo_data.make_demo(sys.argv[1], train_per_class=20,
      val_per_class=5, ood_per_class=5)).replace(chr(10), '; '))" "$DATA"
    else
        step data 60 "$PY" -m selfsup.cli data demo --out "$DATA"
    fi
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

if [[ $SMOKE == 1 ]]; then
    skip cuda_tests "smoke mode (CPU)"
else
    # Only the CUDA tests (the device image may lack papermill/pypdf, which other test files import).
    step cuda_tests 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_augment.py tests/test_losses.py -k cuda
fi

T=("$PY" benchmarks/throughput.py "${THROUGHPUT_DATA[@]}" --device "$DEVICE" --backbone "$BACKBONE"
   --batch "$BATCH" --precision "$PRECISION" --workers "$WORKERS" --steps "$STEPS" --warmup-steps "$WARMUP"
   --repeats 1 "${THREADS[@]}")
step throughput 120 "${T[@]}" --stem imagenet --out "$OUT/throughput_imagenet.json"
if [[ $SMOKE == 1 ]]; then
    skip cifar "smoke mode (the convnet backbone has no stem)"
else
    step cifar 60 "${T[@]}" --stem cifar --only train --out "$OUT/throughput_cifar.json"
fi
step knn 50 "$PY" benchmarks/knn.py --device "$DEVICE" "${FEATURES[@]}" "${THREADS[@]}" --out "$OUT"
step probe 40 "$PY" benchmarks/probe.py --device "$DEVICE" "${FEATURES[@]}" "${THREADS[@]}" --out "$OUT"
if [[ $SMOKE == 1 ]]; then
    skip compile "smoke mode (CPU)"
else
    step compile 120 "${T[@]}" --stem imagenet --compile --only train --out "$OUT/throughput_compile.json"
fi
step learning 150 "$PY" benchmarks/learning.py --data "$DATA" "${LEARN[@]}" --methods simclr \
    --epochs "$LEARN_EPOCHS" --runs "$WORK/runs" --out "$OUT/learning.json"

rm -f "$OUT"/*.tmp  # a throughput step stopped mid-write
"$PY" "$ROOT/benchmarks/gpu_check_summary.py" "$OUT" "$STATUS" | tee "$OUT/summary.txt" | tee -a "$LOG"
echo "total ${SECONDS}s of the ${BUDGET_S}s deadline; OUT=$OUT" | tee -a "$OUT/summary.txt" "$LOG"
# Exit status: 0 when every step ran to success or was skipped on purpose (smoke mode).
failed=$(cut -f1,2 "$STATUS" | grep -v -e $'\tok$' -e $'\tskipped$' | cut -f1 | tr '\n' ' ')
if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
if [[ -n $failed ]]; then echo "not ok: $failed" | tee -a "$LOG"; exit 1; fi
