#!/usr/bin/env bash
# `make demo`: the main job on the built-in mini corpus, on CPU, end to end.
#   1. build the mini corpus (espeak-ng TTS, phone-aligned labels, speakers, noise) and its manifests
#   2. make first-iteration HuBERT targets (MFCC k-means), as fairseq's HuBERT recipe does
#   3. pre-train a tiny HuBERT with fairseq's stock hubert_pretraining task through fairseq-hydra-train
#      (HUBERT_ITERATIONS=2: then k-means on layer HUBERT_ITER2_LAYER of it and a second HuBERT on those labels)
#   4. load the checkpoint back (the shared backbone loader of LASER and the probes) and describe it
#   5. LASER-fine-tune that HuBERT (soft-DTW + IDM, top-2 layers) on speed/pitch-perturbed pairs
#   6. export it in the released-HuBERT format; draw one pair's soft alignment with the loss curves
#   7. probe both checkpoints and the log-mel / random-init floors (python -m fairseq_plugins.evaluate)
#   8. pre-train a tiny SLICER on speech + procedural non-speech clips and probe it (speaker, keyword, clip)
#   9. pre-train a tiny SimSiam + masked-reconstruction model on two augmented views (multiview task)
# Re-running resumes: fairseq continues from checkpoint_last.pt and stops at once if it is complete.
# Environment: DEMO_OUT (default demo_out), DEMO_MINUTES (corpus size, default 10), DEMO_SPEAKERS (voices,
# default 48: 12 held out for verification), HUBERT_UPDATES (per iteration, default 600), HUBERT_ITERATIONS (1 or 2,
# default 1), HUBERT_ITER2_LAYER (default 2), LASER_UPDATES (default 60), SLICER_UPDATES (default 100),
# SIMSIAM_UPDATES (default 300), EVAL_SEEDS (default "0 1 2"), EVAL_TASKS (default: all probes but phone_ctc and
# content_qbe), CONTENT_PROBE (default 1: content_qbe of HuBERT before / after LASER, one seed).
set -euo pipefail
VPY=${1:-.venv/bin/python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(dirname "$VPY")
OUT=$(mkdir -p "${DEMO_OUT:-$REPO/demo_out}" && cd "${DEMO_OUT:-$REPO/demo_out}" && pwd)
MINUTES=${DEMO_MINUTES:-10}
SPEAKERS=${DEMO_SPEAKERS:-48}
HUBERT_UPDATES=${HUBERT_UPDATES:-600}
HUBERT_ITERATIONS=${HUBERT_ITERATIONS:-1}
HUBERT_ITER2_LAYER=${HUBERT_ITER2_LAYER:-2}
case "$HUBERT_ITERATIONS" in 1|2) ;; *) echo "HUBERT_ITERATIONS=$HUBERT_ITERATIONS: expected 1 or 2"; exit 2;; esac
LASER_UPDATES=${LASER_UPDATES:-60}
SLICER_UPDATES=${SLICER_UPDATES:-100}
SIMSIAM_UPDATES=${SIMSIAM_UPDATES:-300}
EVAL_SEEDS=${EVAL_SEEDS:-0 1 2}
# phone_ctc (PER) is left out by default: it is ~80% of the probe time; EVAL_TASKS=phone_ctc,... adds it
EVAL_TASKS=${EVAL_TASKS:-phone_frame,speaker_id,speaker_ver,keyword,clip}
# CONTENT_PROBE=1 (default) adds the content_qbe probe of HuBERT before / after LASER (one seed, ~1 min); 0 skips it
CONTENT_PROBE=${CONTENT_PROBE:-1}
CORPUS=$OUT/corpus
MANIFEST=$CORPUS/manifest
PLUGIN=$REPO/fairseq_plugins
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)
step() { printf '\n=== [%4ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }

step "1/9 mini corpus ($MINUTES min of TTS speech, $SPEAKERS voices) -> $CORPUS"
if [ -f "$CORPUS/corpus.json" ] && grep -Eq "\"minutes_requested\": $MINUTES(\.0)?," "$CORPUS/corpus.json" 2>/dev/null \
   && grep -q "\"num_speakers\": $SPEAKERS," "$CORPUS/corpus.json" && [ -f "$MANIFEST/train.km" ]; then
  echo "reusing $CORPUS (delete it to rebuild)"
else
  "$VPY" -m manifests.mini_corpus --out "$CORPUS" --seed 0 --minutes "$MINUTES" --num-speakers "$SPEAKERS"
  step "2/9 HuBERT targets: MFCC k-means (50 clusters, 50 Hz)"
  "$VPY" -m manifests.hubert_labels --manifest-dir "$MANIFEST" --splits train valid --n-clusters 50
fi

step "3/9 pre-train a tiny HuBERT (fairseq hubert_pretraining, $HUBERT_ITERATIONS x $HUBERT_UPDATES updates) -> $OUT/hubert"
# train_hubert RUN_DIR LABEL_DIR: one HuBERT pre-training run (resumes from RUN_DIR/ckpt/checkpoint_last.pt)
train_hubert() {
  mkdir -p "$1"
  "$BIN/fairseq-hydra-train" --config-dir "$REPO/examples/hubert/config" --config-name hubert_tiny \
    task.data="$MANIFEST" task.label_dir="$2" checkpoint.save_dir="$1/ckpt" \
    optimization.max_update="$HUBERT_UPDATES" common.user_dir="$PLUGIN" hydra.run.dir="$1" \
    2>&1 | tee "$1/train.log" | grep -E "valid on|done training|Error|error" || true
  test "${PIPESTATUS[0]}" -eq 0 || { echo "HuBERT pre-training failed: see $1/train.log"; exit 1; }
}
train_hubert "$OUT/hubert" "$MANIFEST"
HUBERT=$OUT/hubert/ckpt/checkpoint_last.pt
if [ "$HUBERT_ITERATIONS" = 2 ]; then  # fairseq's recipe: iteration 2 = a new model on k-means of iteration 1's layer
  LABELS2=$OUT/hubert_iter2/labels_layer$HUBERT_ITER2_LAYER
  [ -f "$LABELS2/valid.km" ] || "$VPY" -m manifests.hubert_labels --manifest-dir "$MANIFEST" --splits train valid \
    --n-clusters 50 --checkpoint "$HUBERT" --layer "$HUBERT_ITER2_LAYER" --out-dir "$LABELS2"
  train_hubert "$OUT/hubert_iter2" "$LABELS2"
  HUBERT=$OUT/hubert_iter2/ckpt/checkpoint_last.pt
fi

step "4/9 load it back the way LASER and the probes do (fairseq_plugins.inspect_checkpoint) and describe it"
WAV=$(awk -F'\t' 'NR==2 {print $1}' "$MANIFEST/valid.tsv")
"$VPY" -m fairseq_plugins.inspect_checkpoint "$HUBERT" \
  --wav "$(head -1 "$MANIFEST/valid.tsv")/$WAV" 2>/dev/null

step "5/9 LASER fine-tuning of the tiny HuBERT ($LASER_UPDATES updates) -> $OUT/laser"
mkdir -p "$OUT/laser"
"$BIN/fairseq-hydra-train" --config-dir "$REPO/examples/laser/config" --config-name laser_hubert_tiny \
  task.data="$MANIFEST" model.checkpoint="$HUBERT" \
  checkpoint.save_dir="$OUT/laser/ckpt" optimization.max_update="$LASER_UPDATES" \
  common.user_dir="$PLUGIN" hydra.run.dir="$OUT/laser" \
  2>&1 | tee "$OUT/laser/train.log" | grep -E "laser_finetune:|train_inner|valid on|done training|Error|error" || true
test "${PIPESTATUS[0]}" -eq 0 || { echo "LASER fine-tuning failed: see $OUT/laser/train.log"; exit 1; }
"$VPY" - "$OUT/laser/train.log" <<'PY'
import sys
from fairseq_plugins.laser_report import parse_fairseq_log
c = parse_fairseq_log(sys.argv[1])
for key in ("train", "valid"):
    if c[key]:
        (u0, l0), (u1, l1) = c[key][0], c[key][-1]
        print(f"LASER {key} loss: {l0:.2f} at update {u0} -> {l1:.2f} at update {u1}")
PY

step "6/9 export the tuned backbone as a released-format HuBERT checkpoint + alignment picture"
"$VPY" -m fairseq_plugins.export_laser "$OUT/laser/ckpt/checkpoint_last.pt" --out "$OUT/laser/hubert_tiny_laser.pt" 2>/dev/null
"$VPY" -m fairseq_plugins.laser_report "$OUT/laser/ckpt/checkpoint_last.pt" --manifest-dir "$MANIFEST" \
  --log "$OUT/laser/train.log" --out "$OUT/laser/laser_alignment.png" 2>/dev/null

step "7/9 probe the frozen checkpoints (seeds $EVAL_SEEDS) -> $OUT/eval"
# the keyword (same words, other voices) and procedural clip probe sets, built once (seed 1: not the pre-training clips)
"$VPY" -m manifests.keywords --out "$OUT/probe_keywords" --seed 1 > /dev/null
"$VPY" -m manifests.clips --out "$OUT/probe_clips" --seed 1 > /dev/null
# shellcheck disable=SC2086
"$VPY" -m fairseq_plugins.evaluate --checkpoints hubert="$HUBERT" \
  laser="$OUT/laser/hubert_tiny_laser.pt" --manifest-dir "$MANIFEST" --out "$OUT/eval" \
  --tasks "$EVAL_TASKS" --seeds $EVAL_SEEDS --keyword-dir "$OUT/probe_keywords" --clip-dir "$OUT/probe_clips" \
  2> "$OUT/eval.log" || { tail -20 "$OUT/eval.log"; exit 1; }
if [ "$CONTENT_PROBE" = 1 ]; then
  # LASER's claim is about content: same-text cross-speaker query-by-example (DTW over one layer's frames; the layer
  # with the best valid MAP is scored on test). No training, so one seed; HuBERT before vs after LASER
  "$VPY" -m fairseq_plugins.evaluate --checkpoints hubert="$HUBERT" laser="$OUT/laser/hubert_tiny_laser.pt" \
    --manifest-dir "$MANIFEST" --out "$OUT/eval_content" --tasks content_qbe --seeds 0 --baselines random \
    --keyword-dir "$OUT/probe_keywords" 2> "$OUT/eval_content.log" | grep -E "^\|( task|---| content)" \
    || { tail -20 "$OUT/eval_content.log"; exit 1; }
  "$VPY" - "$OUT/eval_content/results.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"  {r['upstream']:>7} content_qbe valid MAP per layer (0 = transformer input): "
          + " ".join(f"{100 * m:.1f}" for m in r["per_layer_map_valid"]) + f"; scored layer {r['layer']}")
PY
fi

step "8/9 SLICER on speech + procedural non-speech clips ($SLICER_UPDATES updates) and its probes -> $OUT/slicer"
[ -f "$OUT/clips/train.tsv" ] || "$VPY" -m manifests.clips --out "$OUT/clips" --seed 0 > /dev/null
mkdir -p "$OUT/slicer"
"$BIN/fairseq-hydra-train" --config-dir "$REPO/examples/slicer/config" --config-name slicer_tiny \
  task.data="$MANIFEST" "task.extra_data=[$OUT/clips]" checkpoint.save_dir="$OUT/slicer/ckpt" \
  optimization.max_update="$SLICER_UPDATES" common.user_dir="$PLUGIN" hydra.run.dir="$OUT/slicer" \
  2>&1 | tee "$OUT/slicer/train.log" | grep -E "valid on|done training|Error|error" || true
test "${PIPESTATUS[0]}" -eq 0 || { echo "SLICER pre-training failed: see $OUT/slicer/train.log"; exit 1; }
# shellcheck disable=SC2086
"$VPY" -m fairseq_plugins.evaluate --checkpoints slicer="$OUT/slicer/ckpt/checkpoint_last.pt" \
  --manifest-dir "$MANIFEST" --out "$OUT/slicer_eval" --tasks speaker_id,keyword,clip --seeds $EVAL_SEEDS \
  --keyword-dir "$OUT/probe_keywords" --clip-dir "$OUT/probe_clips" 2> "$OUT/slicer_eval.log" || { tail -20 "$OUT/slicer_eval.log"; exit 1; }

step "9/9 positive-sample contrast + masked reconstruction (simsiam_recon, $SIMSIAM_UPDATES updates) -> $OUT/simsiam_recon"
mkdir -p "$OUT/simsiam_recon"
"$BIN/fairseq-hydra-train" --config-dir "$REPO/examples/simsiam_recon/config" --config-name simsiam_recon_tiny \
  task.data="$MANIFEST" task.noise_manifest="$MANIFEST/noise.tsv" checkpoint.save_dir="$OUT/simsiam_recon/ckpt" \
  optimization.max_update="$SIMSIAM_UPDATES" common.user_dir="$PLUGIN" hydra.run.dir="$OUT/simsiam_recon" \
  2>&1 | tee "$OUT/simsiam_recon/train.log" | grep -E "valid on|done training|Error|error" || true
test "${PIPESTATUS[0]}" -eq 0 || { echo "simsiam_recon pre-training failed: see $OUT/simsiam_recon/train.log"; exit 1; }

step "done"
echo "  mini corpus            $CORPUS"
echo "  tiny HuBERT            $HUBERT   (released-HuBERT format)"
echo "  LASER run              $OUT/laser/ckpt/checkpoint_last.pt"
echo "  LASER-tuned HuBERT     $OUT/laser/hubert_tiny_laser.pt   (loads wherever the original loads)"
echo "  alignment + loss plot  $OUT/laser/laser_alignment.png"
echo "  probe table + plots    $OUT/eval/table.md, $OUT/eval/tasks.png, $OUT/eval/layer_weights.png"
echo "  content probe          $OUT/eval_content/table.md   (CONTENT_PROBE=1)"
echo "  SLICER                 $OUT/slicer/ckpt/checkpoint_last.pt, probes: $OUT/slicer_eval/table.md"
echo "  SimSiam + recon        $OUT/simsiam_recon/ckpt/checkpoint_last.pt"
