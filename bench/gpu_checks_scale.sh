#!/usr/bin/env bash
# The GPU checks of the real-scale work, in one run on a CUDA machine with many cores
# (about 8 minutes on an H200 with 16 cores):
#   1. the seed stage's CRF pool at VOC size (bench.bench_scale pool): DeiT-S on the GPU,
#      CRF dicts of alphas 1 and 12 in 1, 4, 8, 16 worker processes; img/s and how long the
#      network waited for the workers;
#   2. make rehearsal (the README's VOC commands, real backbones) on the GPU, beside
#   3. the test files of the real-scale work (pytest, 6 CPU workers).
# Usage: bash bench/gpu_checks_scale.sh OUT_DIR [PYTHON]. pydensecrf2 must be importable
# (where no wheel fits, build one for that Python elsewhere and install it first).
set -u
out=${1:?output folder}
py=${2:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
start=$SECONDS
{ nvidia-smi -L; nproc; "$py" -c "import torch, timm, pydensecrf.densecrf; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1 | tee "$out/env.txt"

echo "== 1. CRF pool of the seed stage"
timeout 200 "$py" -m bench.bench_scale pool --out "$out" --workers 1 4 8 16 \
    --images_per_worker 8 2>&1 | tee "$out/pool.txt"

echo "== 2+3. rehearsal on the GPU, tests beside it ($((SECONDS - start)) s used so far)"
left=$((520 - (SECONDS - start)))
timeout "$left" "$py" -m pytest -q -n 6 -p no:cacheprovider tests/test_scale.py \
    tests/test_common.py tests/test_infer_eval.py tests/test_train.py tests/test_stages_cli.py \
    > "$out/pytest.txt" 2>&1 &
suite=$!
timeout "$((left - 20))" "$py" -m bench.rehearsal --work /tmp/rehearsal > "$out/rehearsal.txt" 2>&1
echo "rehearsal exit $? after $((SECONDS - start)) s"
tail -n 40 "$out/rehearsal.txt"
wait $suite
echo "pytest exit $? after $((SECONDS - start)) s"
tail -n 25 "$out/pytest.txt"
