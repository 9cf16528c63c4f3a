#!/usr/bin/env bash
# `make demo`: the main job on the built-in mini corpus, on CPU, end to end.
#   1. build the mini corpus (espeak-ng TTS, phone-aligned labels, speakers, noise) and its manifests
#   2. make first-iteration HuBERT targets (MFCC k-means), as fairseq's HuBERT recipe does
#   3. pre-train a tiny HuBERT with fairseq's stock hubert_pretraining task through fairseq-hydra-train
#   4. load the checkpoint back (import_user_module + load_model_ensemble_and_task) and describe it
# Re-running resumes: fairseq continues from checkpoint_last.pt and stops at once if it is complete.
# Environment: DEMO_OUT (default demo_out), DEMO_MINUTES (corpus size, default 3), HUBERT_UPDATES (default 300).
set -euo pipefail
VPY=${1:-.venv/bin/python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(dirname "$VPY")
OUT=$(mkdir -p "${DEMO_OUT:-$REPO/demo_out}" && cd "${DEMO_OUT:-$REPO/demo_out}" && pwd)
MINUTES=${DEMO_MINUTES:-3}
HUBERT_UPDATES=${HUBERT_UPDATES:-300}
CORPUS=$OUT/corpus
MANIFEST=$CORPUS/manifest
PLUGIN=$REPO/fairseq_plugins
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)
step() { printf '\n=== [%4ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }

step "1/4 mini corpus ($MINUTES min of TTS speech) -> $CORPUS"
if [ -f "$CORPUS/corpus.json" ] && grep -q "\"minutes_requested\": $MINUTES" "$CORPUS/corpus.json" 2>/dev/null \
   && [ -f "$MANIFEST/train.km" ]; then
  echo "reusing $CORPUS (delete it to rebuild)"
else
  "$VPY" -m manifests.mini_corpus --out "$CORPUS" --seed 0 --minutes "$MINUTES"
  step "2/4 HuBERT targets: MFCC k-means (50 clusters, 50 Hz)"
  "$VPY" -m manifests.hubert_labels --manifest-dir "$MANIFEST" --splits train valid --n-clusters 50
fi

step "3/4 pre-train a tiny HuBERT (fairseq hubert_pretraining, $HUBERT_UPDATES updates) -> $OUT/hubert"
"$BIN/fairseq-hydra-train" --config-dir "$REPO/examples/hubert/config" --config-name hubert_tiny \
  task.data="$MANIFEST" task.label_dir="$MANIFEST" checkpoint.save_dir="$OUT/hubert/ckpt" \
  optimization.max_update="$HUBERT_UPDATES" common.user_dir="$PLUGIN" hydra.run.dir="$OUT/hubert" \
  2>&1 | tee "$OUT/hubert/train.log" | grep -E "train_inner|valid on|done training|Error|error" || true
test "${PIPESTATUS[0]}" -eq 0 || { echo "HuBERT pre-training failed: see $OUT/hubert/train.log"; exit 1; }

step "4/4 load it back with import_user_module + load_model_ensemble_and_task"
WAV=$(awk -F'\t' 'NR==2 {print $1}' "$MANIFEST/valid.tsv")
"$VPY" -m fairseq_plugins.inspect_checkpoint "$OUT/hubert/ckpt/checkpoint_last.pt" \
  --wav "$(head -1 "$MANIFEST/valid.tsv")/$WAV" 2>/dev/null

step "done: corpus $CORPUS, HuBERT checkpoint $OUT/hubert/ckpt/checkpoint_last.pt (released-HuBERT format)"
