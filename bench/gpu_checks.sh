#!/usr/bin/env bash
# The GPU checks, in one run on a CUDA machine (each set about 8 minutes on an H200):
#  set "network" (the compiled network and mixed precision):
#   1. the DeiT-S training-step table (bench/bench_gpu.py): eager / compiled x fp32 / bf16;
#   2. the toy seed stage twice from one pre-training: float32 eager, then --amp bf16
#      --compile (PCSS, seeds, mIoU), on the same data and seed;
#   3. the test suite (pytest, 6 CPU workers), beside part 2 and in the time left.
#  set "scale" (real scale, on a machine with many cores):
#   1. the seed stage's CRF pool at VOC size (bench.bench_scale pool): DeiT-S on the GPU,
#      CRF dicts of alphas 1 and 12 in 1, 4, 8, 16 worker processes; img/s and how long the
#      network waited for the workers;
#   2. make rehearsal (the README's VOC commands, real backbones) on the GPU, beside
#   3. the test files of the real-scale work (pytest, 6 CPU workers).
# Usage: bash bench/gpu_checks.sh OUT_DIR [PYTHON] [network|scale]. Each part's log goes to
# OUT_DIR. The scale set needs pydensecrf2 importable (where no wheel fits, build one for
# that Python elsewhere and install it first: bench/README.md).
set -u
out=${1:?output folder}
py=${2:-python3}
set_=${3:-network}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
start=$SECONDS
{ nvidia-smi -L; "$py" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1 | tee "$out/env.txt"

if [ "$set_" = scale ]; then
echo "== 1. CRF pool of the seed stage"
timeout 200 "$py" -m bench.bench_scale pool --out "$out" --workers 1 4 8 16 \
    --images_per_worker 8 2>&1 | tee "$out/pool.txt"

echo "== 2+3. rehearsal on the GPU, tests beside it ($((SECONDS - start)) s used so far)"
left=$((520 - (SECONDS - start)))
timeout "$left" "$py" -m pytest -q -n 6 -p no:cacheprovider tests/wsss/test_scorefile.py \
    tests/engine/test_pool.py tests/engine/test_segment.py tests/scripts/test_infer_workers.py \
    tests/utils tests/engine/test_common.py tests/engine/test_run_folder.py \
    tests/models/test_weights.py tests/datasets/test_loader.py tests/scripts/test_infer_eval.py \
    tests/wsss/test_pseudo.py tests/scripts/test_train_pcss.py tests/scripts/test_refine_stages.py \
    > "$out/pytest.txt" 2>&1 &
suite=$!
timeout "$((left - 20))" "$py" -m bench.rehearsal --work /tmp/rehearsal > "$out/rehearsal.txt" 2>&1
echo "rehearsal exit $? after $((SECONDS - start)) s"
tail -n 40 "$out/rehearsal.txt"
wait $suite
echo "pytest exit $? after $((SECONDS - start)) s"
tail -n 25 "$out/pytest.txt"
exit 0
fi

echo "== 1. training-step table"
timeout 240 "$py" -m bench.bench_gpu --steps 10 --rounds 3 2>&1 | tee "$out/bench_gpu.txt"

echo "== 3. test suite, in the background ($((SECONDS - start)) s used so far)"
left=$((570 - (SECONDS - start)))
timeout "$left" "$py" -m pytest -q -n 6 -p no:cacheprovider tests > "$out/pytest.txt" 2>&1 &
suite=$!

echo "== 2. toy seed stage: fp32 eager, then bf16 + compile"
work=$(mktemp -d)
data="$work/toy"
timeout 60 "$py" -m datasets.toy --out "$data" --num-images 800 --seed 0 > "$out/toy.txt" 2>&1
common=(--data-set TOY --data-path "$data" --device cuda --seed 0 --num_workers 2)
# one pre-training (float32) for both, so that they differ in the PCSS stage alone
timeout 120 "$py" pretrain_toy.py --name gpu_pre --epochs 10 --out "$work/pre.pth" \
    "${common[@]}" > "$out/pretrain.txt" 2>&1
for v in fp32 bf16_compile; do
  flags=()
  [ "$v" = bf16_compile ] && flags=(--amp bf16 --compile)
  t0=$SECONDS
  timeout 150 "$py" train_PCSS.py --name "gpu_$v" --arch toy --finetune "$work/pre.pth" \
      --freeze 'patch_embed.*' 'blocks.[0-2].*' --epochs 8 --batch_size 32 --lr 5e-4 \
      --warmup-epochs 0 --augment light --W 0.5 0.5 --val_start_epo 8 --no-tensorboard \
      "${common[@]}" "${flags[@]}" &&
  timeout 90 "$py" infer_PCSS.py --name "gpu_$v" --arch toy --load_epo 7 --dict \
      --val_list "$data/ImageSets/Segmentation/train.txt" "${common[@]}" "${flags[@]}" &&
  timeout 90 "$py" evaluation.py --name "gpu_$v" --task cam --data-set TOY --data-path "$data" \
      --list "$data/ImageSets/Segmentation/train.txt" --thresholds 0.30 0.80 0.01
  echo "$v: exit $?, $((SECONDS - t0)) s"
done > "$out/toy_stage.txt" 2>&1
grep -E "exit|mIoU|best" "$out/toy_stage.txt" | tail -n 12

wait $suite
echo "pytest exit $? after $((SECONDS - start)) s"
tail -n 30 "$out/pytest.txt"
