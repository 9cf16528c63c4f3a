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
# default 48: 12 held out for verification), HUBERT_UPDATES (per iteration, default 1200), HUBERT_ITERATIONS (1 or 2,
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
HUBERT_UPDATES=${HUBERT_UPDATES:-1200}
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
# two lines of work share the two cores, one thread each: HuBERT -> LASER -> probes in the foreground; the log-mel
# floor's probes, SLICER (+ its probes) and SimSiam + recon in the background (shown at steps 7-9)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$(date +%s)
step() { printf '\n=== [%4ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }
SHOW="valid on|done training|Error|error"
# train WHAT CONFIG_DIR CONFIG_NAME RUN_DIR PATTERN OVERRIDE...: one fairseq-hydra-train run of a config in
# examples/CONFIG_DIR/config, its log in RUN_DIR/train.log, the log lines matching PATTERN printed; it resumes
# from RUN_DIR/ckpt/checkpoint_last.pt (and stops at once if that run is complete)
train() {
  local what=$1 cdir=$2 cname=$3 dir=$4 pattern=$5
  shift 5
  local rc=0
  mkdir -p "$dir"
  # pipefail: the pipeline's status is fairseq's (grep finding nothing is not a failure)
  "$BIN/fairseq-hydra-train" --config-dir "$REPO/examples/$cdir/config" --config-name "$cname" \
    checkpoint.save_dir="$dir/ckpt" common.user_dir="$PLUGIN" hydra.run.dir="$dir" "$@" \
    2>&1 | tee "$dir/train.log" | { grep -E "$pattern" || true; } || rc=$?
  [ "$rc" -eq 0 ] || { echo "$what failed (exit $rc): see $dir/train.log"; exit 1; }
}
# probe NAME OUT_DIR EVALUATE_ARGS...: python -m fairseq_plugins.evaluate with the demo's probe sets, its log in
# OUT_DIR.log, its table in OUT_DIR/table.md (not printed here)
probe() {
  local what=$1 dir=$2
  shift 2
  "$VPY" -m fairseq_plugins.evaluate --manifest-dir "$MANIFEST" --out "$dir" --keyword-dir "$OUT/probe_keywords" \
    --clip-dir "$OUT/probe_clips" "$@" > /dev/null 2> "$dir.log" \
    || { tail -20 "$dir.log"; echo "$what failed: see $dir.log"; exit 1; }
}

step "1/9 mini corpus ($MINUTES min of TTS speech, $SPEAKERS voices) -> $CORPUS"
if [ -f "$CORPUS/corpus.json" ] && grep -Eq "\"minutes_requested\": $MINUTES(\.0)?," "$CORPUS/corpus.json" 2>/dev/null \
   && grep -q "\"num_speakers\": $SPEAKERS," "$CORPUS/corpus.json" && [ -f "$MANIFEST/train.km" ]; then
  echo "reusing $CORPUS (delete it to rebuild)"
else
  "$VPY" -m manifests.mini_corpus --out "$CORPUS" --seed 0 --minutes "$MINUTES" --num-speakers "$SPEAKERS"
  step "2/9 HuBERT targets: MFCC k-means (50 clusters, 50 Hz)"
  "$VPY" -m manifests.hubert_labels --manifest-dir "$MANIFEST" --splits train valid --n-clusters 50
fi
# the keyword (same words, other voices) and procedural clip probe sets (seed 1: not the pre-training clips)
"$VPY" -m manifests.keywords --out "$OUT/probe_keywords" --seed 1 > /dev/null
"$VPY" -m manifests.clips --out "$OUT/probe_clips" --seed 1 > /dev/null

# the background line needs no HuBERT: the log-mel floor, SLICER and its probes, SimSiam + recon
background() {
  # shellcheck disable=SC2086
  probe "log-mel probes" "$OUT/eval_logmel" --baselines logmel --tasks "$EVAL_TASKS" --seeds $EVAL_SEEDS
  [ -f "$OUT/clips/train.tsv" ] || "$VPY" -m manifests.clips --out "$OUT/clips" --seed 0 > /dev/null
  train "SLICER pre-training" slicer slicer_tiny "$OUT/slicer" "$SHOW" task.data="$MANIFEST" \
    "task.extra_data=[$OUT/clips]" optimization.max_update="$SLICER_UPDATES"
  # shellcheck disable=SC2086
  probe "SLICER probes" "$OUT/slicer_eval" --checkpoints slicer="$OUT/slicer/ckpt/checkpoint_last.pt" \
    --tasks speaker_id,keyword,clip --seeds $EVAL_SEEDS
  train "simsiam_recon pre-training" simsiam_recon simsiam_recon_tiny "$OUT/simsiam_recon" "$SHOW" \
    task.data="$MANIFEST" task.noise_manifest="$MANIFEST/noise.tsv" optimization.max_update="$SIMSIAM_UPDATES"
}
background > "$OUT/background.log" 2>&1 &
BACKGROUND=$!
# if this line stops, stop the background line too (its running command first, then the subshell)
trap 'pkill -P "$BACKGROUND" 2> /dev/null; kill "$BACKGROUND" 2> /dev/null || true' EXIT
echo "meanwhile on the other core: log-mel probes, SLICER, SimSiam + recon (log: $OUT/background.log)"

step "3/9 pre-train a tiny HuBERT (fairseq hubert_pretraining, $HUBERT_ITERATIONS x $HUBERT_UPDATES updates) -> $OUT/hubert"
# train_hubert RUN_DIR LABEL_DIR: one HuBERT pre-training run
train_hubert() {
  train "HuBERT pre-training" hubert hubert_tiny "$1" "$SHOW" task.data="$MANIFEST" task.label_dir="$2" \
    optimization.max_update="$HUBERT_UPDATES"
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
train "LASER fine-tuning" laser laser_hubert_tiny "$OUT/laser" "laser_finetune:|train_inner|$SHOW" \
  task.data="$MANIFEST" model.checkpoint="$HUBERT" optimization.max_update="$LASER_UPDATES"
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

step "7/9 probe the frozen checkpoints (seeds $EVAL_SEEDS) -> $OUT/eval, with the log-mel floor -> $OUT/eval_all"
# HuBERT, its LASER-tuned export and the random init of HuBERT's architecture here; log-mel in the background
# shellcheck disable=SC2086
probe "probes" "$OUT/eval" --checkpoints hubert="$HUBERT" laser="$OUT/laser/hubert_tiny_laser.pt" \
  --baselines random --tasks "$EVAL_TASKS" --seeds $EVAL_SEEDS
RESULTS=("$OUT/eval/results.jsonl" "$OUT/eval_logmel/results.jsonl")
if [ "$CONTENT_PROBE" = 1 ]; then
  # LASER's claim is about content: same-text cross-speaker query-by-example (DTW over one layer's frames; the layer
  # with the best valid MAP is scored on test). No training, so one seed; HuBERT before vs after LASER
  probe "content probe" "$OUT/eval_content" --checkpoints hubert="$HUBERT" laser="$OUT/laser/hubert_tiny_laser.pt" \
    --baselines random --tasks content_qbe --seeds 0
  RESULTS+=("$OUT/eval_content/results.jsonl")
fi
echo "waiting for the background line (log-mel probes, SLICER, SimSiam + recon) ..."
wait "$BACKGROUND" || { tail -30 "$OUT/background.log"; echo "the background line failed: see $OUT/background.log"; exit 1; }
trap - EXIT
"$VPY" -m fairseq_plugins.evaluate.pool_seeds "${RESULTS[@]}" --out "$OUT/eval_all"
if [ "$CONTENT_PROBE" = 1 ]; then
  "$VPY" - "$OUT/eval_content/results.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"  {r['upstream']:>7} content_qbe valid MAP per layer (0 = transformer input): "
          + " ".join(f"{100 * m:.1f}" for m in r["per_layer_map_valid"]) + f"; scored layer {r['layer']}")
PY
fi

step "8/9 SLICER on speech + procedural non-speech clips ($SLICER_UPDATES updates, in the background) -> $OUT/slicer"
grep -E "$SHOW" "$OUT/slicer/train.log" || true
cat "$OUT/slicer_eval/table.md"

step "9/9 positive-sample contrast + masked reconstruction (simsiam_recon, $SIMSIAM_UPDATES updates, in the background) -> $OUT/simsiam_recon"
grep -E "$SHOW" "$OUT/simsiam_recon/train.log" || true

step "done"
echo "  mini corpus            $CORPUS"
echo "  tiny HuBERT            $HUBERT   (released-HuBERT format)"
echo "  LASER run              $OUT/laser/ckpt/checkpoint_last.pt"
echo "  LASER-tuned HuBERT     $OUT/laser/hubert_tiny_laser.pt   (loads wherever the original loads)"
echo "  alignment + loss plot  $OUT/laser/laser_alignment.png"
echo "  probe table + plots    $OUT/eval_all/table.md, $OUT/eval_all/tasks.png, $OUT/eval/layer_weights.png"
echo "  content probe          $OUT/eval_content/table.md   (CONTENT_PROBE=1)"
echo "  SLICER                 $OUT/slicer/ckpt/checkpoint_last.pt, probes: $OUT/slicer_eval/table.md"
echo "  SimSiam + recon        $OUT/simsiam_recon/ckpt/checkpoint_last.pt"
