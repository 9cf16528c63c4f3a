"""Export a LASER / SCORE fine-tuned backbone back to the format of the checkpoint it started from.

    python -m fairseq_plugins.export_laser CHECKPOINT --out tuned.pt [--original released.pt]

CHECKPOINT is a ``laser_finetune`` checkpoint written by fairseq-hydra-train. The output is the original release
file with the tuned backbone weights in place (the projection head is discarded): a fairseq HuBERT / wav2vec 2.0
checkpoint that fairseq loads without the plugin, or a WavLM ``{'cfg', 'model'}`` file. The original is read
from the path recorded in the fine-tuning config unless ``--original`` points elsewhere; the pre-training heads
and ``task_state`` come from it. The export is verified by loading it back and comparing every tensor.
"""
import argparse
import logging
import os
import sys
from typing import Dict, Optional

import torch

logger = logging.getLogger(__name__)


def export(checkpoint: str, out: str, original: Optional[str] = None) -> Dict[str, object]:
    """Write the tuned backbone of ``checkpoint`` to ``out``; returns a summary. Raises on any mismatch."""
    from fairseq_plugins.inspect_checkpoint import load_fairseq_checkpoint
    from fairseq_plugins.models.laser_finetune import LaserFinetuneModel
    from fairseq_plugins.modules.backbones import export_backbone, load_backbone

    model, cfg, _ = load_fairseq_checkpoint(checkpoint)
    if not isinstance(model, LaserFinetuneModel):
        raise ValueError(f"{checkpoint}: a {type(model).__name__} checkpoint; expected a laser_finetune one")
    original = original or model.cfg.checkpoint
    if not os.path.isfile(original):
        raise FileNotFoundError(
            f"the original checkpoint {original} recorded in {checkpoint} is not there; pass --original PATH "
            f"(the pre-training heads and task state of the release come from it)")
    weights = model.backbone_state_dict()
    kind, n = export_backbone(weights, original, out)
    reloaded = load_backbone(out).model
    back = reloaded.release_state_dict() if hasattr(reloaded, "release_state_dict") else reloaded.state_dict()
    wrong = [k for k, v in weights.items() if not torch.equal(back[k], v)]
    if wrong:
        raise RuntimeError(f"{out}: exported weights differ after reloading: {wrong[:10]}")
    return {"kind": kind, "tensors": n, "original": original, "out": os.path.abspath(out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="laser_finetune checkpoint (e.g. checkpoint_best.pt)")
    p.add_argument("--out", required=True, help="where to write the tuned backbone in its release format")
    p.add_argument("--original", help="the released checkpoint it was fine-tuned from (default: the recorded path)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s | %(name)s | %(message)s")
    info = export(args.checkpoint, args.out, args.original)
    print(f"exported {info['tensors']} tuned {info['kind']} tensors into the format of {info['original']}: "
          f"{info['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
