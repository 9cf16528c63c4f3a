"""scripts/demo.sh (`make demo`) stops at a failed step and names its log, and leaves no background work behind.

The demo pipes each fairseq-hydra-train through tee and grep; with pipefail, a check of PIPESTATUS after
`... || true` read the status of `true` and let a failed training pass (found 2026-12-08 with a bad update count)."""
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_failed_training_stops_the_demo_and_its_background_line(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, DEMO_OUT=str(out), DEMO_MINUTES="1", DEMO_SPEAKERS="16", HUBERT_UPDATES="abc",
               EVAL_SEEDS="0", EVAL_TASKS="speaker_id")
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh"), sys.executable], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"HuBERT pre-training failed (exit 1): see {out}/hubert/train.log" in proc.stdout
    assert "4/9" not in proc.stdout  # nothing after the failed step ran
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert left == [], f"background work still running: {left}"
