"""Export a tuned or pre-trained speech encoder: to its release format, to Hugging Face transformers, or to
safetensors.

    python -m fairseq_plugins.export_laser CHECKPOINT --out OUT [--format {fairseq,hf,safetensors}]
        [--original released.pt] [--atol 1e-5]

CHECKPOINT is a ``laser_finetune`` checkpoint written by fairseq-hydra-train (LASER or SCORE; the projection
head is discarded) or any speech encoder the plugin loads (:func:`fairseq_plugins.modules.backbones.
load_backbone`: the plugin's own ``wavlm`` / HuBERT pre-training checkpoints, fairseq releases, CTC fine-tuned
checkpoints, WavLM release files). Formats:

- ``fairseq`` (default, ``laser_finetune`` checkpoints only): the original release file with the tuned
  backbone weights in place -- a fairseq HuBERT / wav2vec 2.0 checkpoint that fairseq loads without the plugin,
  or a WavLM ``{'cfg', 'model'}`` file. The original is read from the path recorded in the fine-tuning config
  unless ``--original`` points elsewhere; the pre-training heads and ``task_state`` come from it. Verified by
  loading it back and comparing every tensor.
- ``hf``: a transformers ``save_pretrained`` folder for ``HubertModel`` / ``WavLMModel`` (``config.json`` +
  ``model.safetensors`` + ``preprocessor_config.json``), verified in a fresh process that never imports the
  plugin: every hidden state of a padded batch within ``--atol`` of the fairseq model's
  (:mod:`fairseq_plugins.modules.hf_convert`).
- ``safetensors``: the encoder's own (fairseq) weight names in ``model.safetensors`` + ``config.json`` with its
  architecture; ``load_backbone(folder)``, the probes, ``inspect_checkpoint`` and ``laser_finetune``'s
  ``model.checkpoint`` read the folder back. Verified by loading it back and comparing every tensor.
"""
import argparse
import logging
import os
import sys
from typing import Dict, Optional

import torch

from fairseq_plugins.compat import cli_logging

logger = logging.getLogger(__name__)
FORMATS = ("fairseq", "hf", "safetensors")


def load_tuned(checkpoint: str):
    """``(Backbone, laser model or None)`` for a ``laser_finetune`` checkpoint (its tuned backbone) or any
    speech encoder :func:`load_backbone` reads."""
    from fairseq_plugins.inspect_checkpoint import load_fairseq_checkpoint
    from fairseq_plugins.models.laser_finetune import LaserFinetuneModel
    from fairseq_plugins.modules.backbones import (
        Backbone,
        BackboneCheckpointError,
        is_plugin_training_checkpoint,
        load_backbone,
        read_checkpoint,
    )

    if os.path.isdir(checkpoint) or not is_plugin_training_checkpoint(read_checkpoint(checkpoint)):
        return load_backbone(checkpoint), None
    model, _, _ = load_fairseq_checkpoint(checkpoint)
    if not isinstance(model, LaserFinetuneModel):
        raise BackboneCheckpointError(f"{checkpoint}: a {type(model).__name__} checkpoint; expected a "
                                      f"laser_finetune one or a speech encoder")
    spec = model.cfg.backbone_spec
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
    embed_dim = model.proj.in_features
    b = Backbone(model.kind, model.backbone.eval(), spec, embed_dim, model.num_layers, model.normalize,
                 f"laser_finetune checkpoint {os.path.abspath(checkpoint)}")
    return b, model


def export(checkpoint: str, out: str, original: Optional[str] = None, fmt: str = "fairseq",
           atol: float = 1e-5) -> Dict[str, object]:
    """Write the encoder of ``checkpoint`` to ``out`` in format ``fmt``; returns a summary. Raises on any
    mismatch."""
    from fairseq_plugins.modules.backbones import (
        BackboneCheckpointError,
        export_backbone,
        load_backbone,
        save_backbone_safetensors,
    )

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    backbone, laser = load_tuned(checkpoint)
    if fmt == "hf":
        from fairseq_plugins.modules.hf_convert import export_hf

        res = export_hf(backbone, out, atol=atol)
        return {"format": fmt, "kind": backbone.kind, "out": res["folder"], "class": res["class"],
                "max_abs_diff": max(res["max_abs_diff"]), "tensors": len(backbone.model.state_dict())}
    if fmt == "safetensors":
        save_backbone_safetensors(backbone, out)
        back = load_backbone(out).model.state_dict()
        want = backbone.model.state_dict()
        wrong = [k for k, v in want.items() if not torch.equal(back[k], v.cpu())]
        if wrong or set(back) != set(want):
            raise RuntimeError(f"{out}: exported weights differ after reloading: {wrong[:10]}")
        return {"format": fmt, "kind": backbone.kind, "out": os.path.abspath(out), "tensors": len(want)}
    if laser is None:
        raise BackboneCheckpointError(
            f"{checkpoint}: --format fairseq writes tuned laser_finetune weights into their original release "
            f"file; this is already a {backbone.kind} encoder checkpoint (use --format hf or safetensors)")
    original = original or laser.cfg.checkpoint
    if not os.path.exists(original):
        raise FileNotFoundError(
            f"the original checkpoint {original} recorded in {checkpoint} is not there; pass --original PATH "
            f"(the pre-training heads and task state of the release come from it)")
    weights = laser.backbone_state_dict()
    kind, n = export_backbone(weights, original, out)
    reloaded = load_backbone(out).model
    back = reloaded.release_state_dict() if hasattr(reloaded, "release_state_dict") else reloaded.state_dict()
    wrong = [k for k, v in weights.items() if not torch.equal(back[k], v)]
    if wrong:
        raise RuntimeError(f"{out}: exported weights differ after reloading: {wrong[:10]}")
    return {"format": fmt, "kind": kind, "tensors": n, "original": original, "out": os.path.abspath(out)}


def main(argv=None) -> int:
    from fairseq_plugins.compat import UnsafeCheckpointError
    from fairseq_plugins.modules.backbones import BackboneCheckpointError

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="laser_finetune checkpoint (e.g. checkpoint_best.pt) or a speech encoder")
    p.add_argument("--out", required=True, help="output file (fairseq) or folder (hf, safetensors)")
    p.add_argument("--format", default="fairseq", choices=FORMATS, help="what to write (default: fairseq)")
    p.add_argument("--original", help="fairseq format: the released checkpoint it was fine-tuned from "
                                      "(default: the recorded path)")
    p.add_argument("--atol", type=float, default=1e-5,
                   help="hf format: largest hidden-state difference accepted by the fresh-process check")
    args = p.parse_args(argv)
    cli_logging()
    try:
        info = export(args.checkpoint, args.out, args.original, args.format, args.atol)
    except (BackboneCheckpointError, UnsafeCheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.format == "fairseq":
        print(f"exported {info['tensors']} tuned {info['kind']} tensors into the format of {info['original']}: "
              f"{info['out']}")
    elif args.format == "hf":
        print(f"exported {info['kind']} encoder as transformers {info['class']} to {info['out']} (fresh-process "
              f"check: every hidden state within {info['max_abs_diff']:.2e} of the fairseq model)")
    else:
        print(f"exported {info['tensors']} {info['kind']} tensors to {info['out']} (model.safetensors + "
              f"config.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
