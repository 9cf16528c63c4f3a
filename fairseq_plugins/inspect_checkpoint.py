"""Load a checkpoint the way a fairseq user does and say what it holds.

    python -m fairseq_plugins.inspect_checkpoint CHECKPOINT [--wav FILE.wav]

It imports the plugin with ``fairseq.utils.import_user_module`` (loading a checkpoint does not import a user dir
by itself), loads with ``fairseq.checkpoint_utils.load_model_ensemble_and_task`` under torch's
``weights_only=True`` (the plugin allow-lists the fairseq classes checkpoints contain), prints the model, its
size and training state, and, given a wav file, the shape of the features its ``extract_features`` returns.
"""
import argparse
import logging
import os
import sys
from argparse import Namespace
from typing import Any, Dict, Optional

import torch

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
    """A summary dict of the checkpoint at ``path`` (and of the features of ``wav``, if given)."""
    from fairseq_plugins.compat import load_checkpoint_state

    model, cfg, task = load_fairseq_checkpoint(path)
    state = load_checkpoint_state(path)
    hist = state.get("optimizer_history") or [{}]
    info = {
        "checkpoint": os.path.abspath(path),
        "model": f"{cfg.model._name} ({type(model).__module__}.{type(model).__name__})",
        "task": cfg.task._name,
        "criterion": cfg.criterion._name if cfg.get("criterion") else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_updates": hist[-1].get("num_updates"),
        "encoder": {k: cfg.model.get(k) for k in ("encoder_layers", "encoder_embed_dim", "label_rate") if
                    cfg.model.get(k) is not None},
    }
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a fairseq checkpoint (.pt) written by fairseq-hydra-train")
    p.add_argument("--wav", help="optional 16 kHz mono wav to run through extract_features")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    info = describe(args.checkpoint, args.wav)
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
