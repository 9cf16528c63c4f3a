#!/usr/bin/env bash
# SLICER evidence on CPU: pre-train the tiny model and its ablations, then probe them on data none of them saw.
#
#   bash examples/slicer/evidence.sh OUT_DIR        (after `make setup`; ~25 min per pre-training seed on 2 cores)
#
# Pre-training data : mini corpus (seed 0, 12 min, 24 voices) train split + procedural clips (seed 0, 48 per class)
# Probe data        : a second mini corpus (seed 1, 12 min, 48 voices drawn with that seed, other sentences) for
#                     speaker id, and keyword / clip sets built by manifests.keywords / manifests.clips with --seed 1 (other
#                     voices and clip draws than the pre-training clips)
# Variants          : slicer (the authors' chain log-mixup-exp -> resize crop -> k-mix, + cluster loss), no_cluster
#                     (cluster + entropy weight 0), no_kmix (the same chain without k-mix), no_both; each removes
#                     exactly one piece; each pre-trained with every seed of SEEDS for UPDATES updates
# Output            : OUT_DIR/eval$TAG/table.md (one column per run; + plots, results.jsonl) and
#                     OUT_DIR/eval$TAG/pooled.md (mean ± std over pre-training seeds x probe seeds); run logs in
#                     OUT_DIR/runs/*.log. Re-running skips finished runs (fairseq resumes from checkpoint_last).
# Environment       : UPDATES (default 2000), SEEDS (default "1 2"), PROBE_SEEDS (default "0 1 2"), JOBS (parallel
#                     pre-training runs, default 2; each uses one thread), VARIANTS (default "slicer no_cluster
#                     no_kmix no_both"), EXTRA (overrides for every run, e.g. "model.conv_channels=64"), TAG (suffix
#                     of run and eval names, e.g. _w64)
set -euo pipefail
OUT=${1:?usage: evidence.sh OUT_DIR}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
VPY=${VPY:-$REPO/.venv/bin/python}
BIN=$(dirname "$VPY")
UPDATES=${UPDATES:-2000}
SEEDS=${SEEDS:-1 2}
PROBE_SEEDS=${PROBE_SEEDS:-0 1 2}
JOBS=${JOBS:-2}
VARIANTS=${VARIANTS:-slicer no_cluster no_kmix no_both}
EXTRA=${EXTRA:-}
TAG=${TAG:-}
mkdir -p "$OUT/runs" && OUT=$(cd "$OUT" && pwd)
cd "$REPO"
export OMP_NUM_THREADS=1

[ -f "$OUT/pretrain_corpus/corpus.json" ] || "$VPY" -m manifests.mini_corpus --out "$OUT/pretrain_corpus" --seed 0 --minutes 12
[ -f "$OUT/pretrain_clips/clips.json" ] || "$VPY" -m manifests.clips --out "$OUT/pretrain_clips" --seed 0 --per-class 48 12 24
[ -f "$OUT/probe_corpus/corpus.json" ] || "$VPY" -m manifests.mini_corpus --out "$OUT/probe_corpus" --seed 1 --minutes 12 --num-speakers 48

declare -A VARIANT=(
  [slicer]=""
  [no_cluster]="criterion.cluster_weight=0 criterion.entropy_weight=0"
  [no_kmix]="model.mix_mode=mixup"
  [no_both]="model.mix_mode=mixup criterion.cluster_weight=0 criterion.entropy_weight=0"
)
train() {  # NAME SEED
  local name=$1 seed=$2 run=$OUT/runs/$1${TAG}_s$2
  # shellcheck disable=SC2086
  "$BIN/fairseq-hydra-train" --config-dir examples/slicer/config --config-name slicer_tiny \
    task.data="$OUT/pretrain_corpus/manifest" "task.extra_data=[$OUT/pretrain_clips]" \
    checkpoint.save_dir="$run/ckpt" common.user_dir="$REPO/fairseq_plugins" hydra.run.dir="$run" \
    optimization.max_update="$UPDATES" common.seed="$seed" checkpoint.save_interval_updates=500 \
    dataset.validate_interval_updates=500 ${VARIANT[$name]} $EXTRA > "$run.log" 2>&1 \
    || { echo "pre-training $name seed $seed failed: see $run.log" >&2; return 1; }
  echo "$(date +%T) pre-trained $name seed $seed: $(grep -o 'done training in .*' "$run.log")"
}
pids=()
for seed in $SEEDS; do
  for name in $VARIANTS; do
    train "$name" "$seed" & pids+=($!)
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 2; done
  done
done
for p in "${pids[@]}"; do wait "$p"; done

ckpts=()
for seed in $SEEDS; do
  for name in $VARIANTS; do
    ckpts+=("$name${TAG}_s$seed=$OUT/runs/$name${TAG}_s$seed/ckpt/checkpoint_last.pt")
  done
done
"$VPY" -m manifests.keywords --out "$OUT/probe_keywords" --seed 1 --repeats 4 > /dev/null
"$VPY" -m manifests.clips --out "$OUT/probe_clips" --seed 1 --per-class 48 12 24 > /dev/null
# shellcheck disable=SC2086
"$VPY" -m fairseq_plugins.evaluate --user-dir fairseq_plugins --checkpoints "${ckpts[@]}" \
  --manifest-dir "$OUT/probe_corpus/manifest" --tasks speaker_id,keyword,clip --out "$OUT/eval$TAG" \
  --seeds $PROBE_SEEDS --keyword-dir "$OUT/probe_keywords" --clip-dir "$OUT/probe_clips"
"$VPY" -m fairseq_plugins.evaluate.pool_seeds "$OUT/eval$TAG/results.jsonl" > "$OUT/eval$TAG/pooled.md"
cat "$OUT/eval$TAG/table.md" "$OUT/eval$TAG/pooled.md"
