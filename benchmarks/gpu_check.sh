#!/usr/bin/env bash
# Every GPU check in one run, sized for a 15-minute device lease (about 8 minutes of work):
# throughput of ours vs the usual pipeline (ResNet18, imagenet and cifar stems, batch 1024, bf16),
# k-NN (100k x 512, 10k queries) and the linear probe on the GPU, the CUDA tests, and a short
# real-data accuracy run. Results go to OUT: gpu.txt, log.txt and six JSON files (8 files: what the
# device tool brings back from its $OUT); the run folders go to RUNS. Copy the numbers into RESULTS.md.
#
#   bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]     # DATA_DIR: train.npz, val.npz, ood.npz
set -uo pipefail
DATA=${1:?usage: gpu_check.sh DATA_DIR [OUT_DIR]}
OUT=${2:-benchmarks/out/gpu}
PY=${PY:-python3}
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
run() { echo "== $(date +%T) $*"; timeout "${STEP_TIMEOUT:-240}" "$@" 2>&1 | tee -a "$OUT/log.txt"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/gpu.txt"
T="$PY benchmarks/throughput.py --data $DATA/train.npz --device cuda --backbone resnet18 --batch 1024 --precision bf16 --steps 30 --warmup-steps 10 --repeats 1"
run $T --stem imagenet --out "$OUT/throughput_r18_imagenet.json"
run $T --stem imagenet --compile --only train --out "$OUT/throughput_r18_imagenet_compile.json"
run $T --stem cifar --only train --out "$OUT/throughput_r18_cifar.json"
run $PY benchmarks/knn.py --device cuda --out "$OUT"      # writes knn_cuda_*.json
run $PY benchmarks/probe.py --device cuda --out "$OUT"    # writes probe_cuda_*.json
# Only the CUDA tests (the device image has no papermill/pypdf, which other test files import).
run $PY -m pytest -q -p no:cacheprovider tests/test_augment.py -k cuda
# Short real-data accuracy run: the course preset (ResNet18, SimCLR tau 0.1, AdamW 4e-3), 30 epochs.
run $PY benchmarks/learning.py --data "$DATA" --config configs/course.yaml --methods simclr --epochs 30 \
    --set batch_size=512 --set warmup_epochs=3 --runs "${RUNS:-/tmp/gpu_check_runs}" --out "$OUT/learning.json"
