#!/usr/bin/env bash
# The lab on one GPU, in one script under 8 minutes (issue 19): 30 training steps with trainer=gpu and ANCE
# negatives refreshed by the async inferencer on the GPU (subsampled SciFact, debug=fast's data), then the encode
# and train-step ratios against sentence-transformers on the same GPU. Where no CUDA GPU is present it says so and
# exits 0. Run from the repository root with the lab installed (and ".[bench]" for the train-step row):
#     RETRIEVAL_LAB_DATA=../shared/data bash benchmarks/gpu_check.sh [output folder]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/gpu_check}"
python -c "import torch, retrieval_lab" || { echo "gpu_check: install the lab first (README: make install)"; exit 1; }
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing to check."
    exit 0
fi
: "${RETRIEVAL_LAB_DATA:?set RETRIEVAL_LAB_DATA to the folder holding beir/scifact}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" WANDB_MODE="${WANDB_MODE:-offline}"
mkdir -p "$OUT"
python -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}')"

echo "== 1. trainer=gpu, 30 steps, ANCE negatives from an async inferencer on the GPU"
# On a GPU ten steps take about a second, less than the inferencer needs to start (spawn, CUDA, the model) and
# encode, so without max_staleness the refresh begun at step 10 would still be running at step 30 and be
# stopped with the training: max_staleness=10 makes step 20 wait for it, so one refresh is always collected.
start=$(date +%s)
timeout 300 python -m retrieval_lab debug=fast trainer=gpu negatives=ance index_refresh=async \
    trainer.max_steps=30 index_refresh.every_n_steps=10 index_refresh.max_staleness=10 index_refresh.device=cuda \
    retriever.device=cuda \
    callbacks.dev_eval.every_n_steps=10 hydra.run.dir="$OUT/train" > "$OUT/train.log" 2>&1 \
    || { echo "gpu_check: the training run failed (exit $?); the end of $OUT/train.log:"; tail -30 "$OUT/train.log"; exit 1; }
python - "$OUT/train" <<'EOF'
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
metrics = json.loads((run / "metrics.json").read_text())
log = (run / "train.log").read_text() if (run / "train.log").exists() else ""
refreshes = log.count("index refresh at step")
print(f"gpu_check: steps {metrics['train']['steps']}, test nDCG@10 {metrics['test']['ndcg@10']:.4f} "
      f"(debug=fast data: not a result), index refreshes completed: {refreshes}")
assert metrics["train"]["steps"] == 30 and refreshes >= 1, (metrics["train"], refreshes)
EOF
echo "gpu_check: training took $(( $(date +%s) - start )) s"

echo "== 2. encoding: the lab against sentence-transformers (2,000 SciFact documents)"
timeout 150 python benchmarks/encode.py --docs 2000 --device cuda | tee "$OUT/encode.log" | tail -1

echo "== 3. a training step: the lab against sentence-transformers' trainer"
if python -c "import datasets" 2>/dev/null; then
    timeout 150 python benchmarks/train_step.py --device cuda --steps 10 --warmup 3 | tee "$OUT/train_step.log" | tail -1
else
    echo "gpu_check: skipped (pip install -e '.[bench]' for sentence-transformers' trainer)"
fi
echo "gpu_check: done; logs in $OUT"
