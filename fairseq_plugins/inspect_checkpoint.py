"""Load a checkpoint the way a user does and say what it holds.

    python -m fairseq_plugins.inspect_checkpoint CHECKPOINT [--wav FILE.wav]

Speech encoders in every shape they ship (fairseq HuBERT / wav2vec 2.0 pre-training checkpoints, 2021 releases
whose task points at label directories that do not exist here, pre-hydra ``args`` files, CTC fine-tuned
checkpoints, WavLM release files, folders exported with ``--format safetensors``) load through the plugin's one
loader, :func:`fairseq_plugins.modules.backbones.load_backbone`; the summary says which shape was found, the
kind, layers, width, ``normalize`` and which head keys were dropped. The plugin's own training checkpoints
(``slicer``, ``simsiam_recon``, ``laser_finetune`` ...) load with ``fairseq.checkpoint_utils.
load_model_ensemble_and_task`` after ``fairseq.utils.import_user_module`` (loading does not import a user dir
by itself), under torch's ``weights_only=True`` (the plugin allow-lists the fairseq classes checkpoints
contain). Given a wav file, it also prints the shape of the features ``extract_features`` returns. A file that
is none of these gives one line naming it and what was expected, and exit code 1.
"""
import argparse
import logging
import os
import sys
from argparse import Namespace
from typing import Any, Dict, Optional

import torch

from fairseq_plugins.compat import cli_logging

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
logger = logging.getLogger(__name__)


def load_fairseq_checkpoint(path: str, arg_overrides: Optional[Dict[str, Any]] = None):
    """``(model, cfg, task)`` of a fairseq checkpoint, with the plugin imported first. Model in eval mode."""
    from fairseq import checkpoint_utils, utils

    utils.import_user_module(Namespace(user_dir=PLUGIN_DIR))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=arg_overrides)
    model = models[0].eval()
    return model, cfg, task


def describe(path: str, wav: Optional[str] = None) -> Dict[str, Any]:
    """A summary dict of the checkpoint (file or exported folder) at ``path`` (and of the features of
    ``wav``, if given). Raises ``BackboneCheckpointError`` / ``FileNotFoundError`` naming the file."""
    from fairseq_plugins.modules.backbones import (
        is_plugin_training_checkpoint,
        load_backbone,
        load_backbone_state,
        read_checkpoint,
    )

    state = None if os.path.isdir(path) else read_checkpoint(path)
    info: Dict[str, Any] = {"checkpoint": os.path.abspath(path)}
    if state is not None and is_plugin_training_checkpoint(state):
        model, cfg, task = load_fairseq_checkpoint(path)
        hist = state.get("optimizer_history") or [{}]
        info.update({
            "model": f"{cfg.model._name} ({type(model).__module__}.{type(model).__name__})",
            "task": cfg.task._name,
            "criterion": cfg.criterion._name if cfg.get("criterion") else None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "num_updates": hist[-1].get("num_updates"),
            "encoder": {k: cfg.model.get(k) for k in ("encoder_layers", "encoder_embed_dim", "label_rate") if
                        cfg.model.get(k) is not None},
        })
    else:
        b = load_backbone(path) if state is None else load_backbone_state(state, path)
        model = b.model
        info.update(b.summary())
        info["model"] = f"{type(model).__module__}.{type(model).__name__}"
        if state is not None and state.get("optimizer_history"):
            info["num_updates"] = state["optimizer_history"][-1].get("num_updates")
    if wav:
        import soundfile as sf

        audio, sr = sf.read(wav, dtype="float32")
        source = torch.from_numpy(audio).unsqueeze(0)
        with torch.no_grad():
            out = model.extract_features(source=source, padding_mask=None, mask=False)
        feats = out[0] if isinstance(out, tuple) else out["x"]
        info["features"] = {"wav": wav, "seconds": round(len(audio) / sr, 3), "shape": list(feats.shape)}
    return info


def main(argv=None) -> int:
    from fairseq_plugins.compat import UnsafeCheckpointError
    from fairseq_plugins.modules.backbones import BackboneCheckpointError

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint (.pt) or a folder exported with --format safetensors")
    p.add_argument("--wav", help="optional 16 kHz mono wav to run through extract_features")
    args = p.parse_args(argv)
    cli_logging(logging.WARNING)
    try:
        info = describe(args.checkpoint, args.wav)
    except (BackboneCheckpointError, UnsafeCheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
