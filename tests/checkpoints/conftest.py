"""Checkpoints shaped like the ones users download, each made by a real fairseq-hydra-train run and then
reshaped the way that release is shaped (session fixtures, built once).

Where each shape is known from:

- HuBERT 2021 releases (hubert_base_ls960.pt, hubert_large_ll60k.pt, hubert_xtralarge_ll60k.pt): fairseq issues
  #3624, #4003 and #4070 print what loading them does: ``cfg`` present, no ``task_state`` (so fairseq rebuilds
  the dictionaries from ``cfg.task.label_dir`` and fails with FileNotFoundError on ``dict.lyr9.km500.txt``),
  ``task.data`` / ``task.label_dir`` on the authors' cluster, ``labels: ['lyr9.km500']`` for Base, ``['km']``
  for Large / X-Large; the weights still hold ``label_embs_concat`` and ``final_proj.*`` (they were saved during
  pre-training). Large / X-Large: ``task.normalize: true``, ``model.layer_norm_first: true``,
  ``model.extractor_mode: layer_norm`` (examples/hubert/config/pretrain/hubert_large_librivox.yaml in fairseq).
  Their ``cfg.model`` has only the fields HuBERT's config had when HuBERT was published (:data:`HUBERT_2021_FIELDS`,
  fairseq's ``HubertConfig`` of 2021); fields added later must come from the dataclass defaults.
- wav2vec 2.0 releases saved before fairseq's Hydra migration (wav2vec_small.pt, libri960_big.pt): an ``args``
  ``argparse.Namespace`` with every option flat (``arch``, ``task``, ``criterion`` and the model/task fields)
  and no ``cfg`` (fairseq's ``checkpoint_utils._upgrade_state_dict`` converts ``args`` when ``cfg`` is absent).
- CTC fine-tuned HuBERT (hubert_large_ll60k_finetune_ls960.pt, and fairseq's own fine-tuning today):
  ``w2v_encoder.w2v_model.*`` weights plus the ``w2v_encoder.proj`` CTC head, the encoder's pre-training config
  in ``cfg.model.w2v_args``. Built here by fairseq's own fine-tuning, so it is exactly that shape.
- WavLM releases (WavLM-Base+.pt ...): ``{'cfg': dict, 'model': state_dict}`` (microsoft/unilm WavLM README:
  ``checkpoint['cfg']``, ``checkpoint['model']``); written here by the plugin's ``wavlm`` model pre-trained with
  fairseq-hydra-train for a few updates and exported with ``export_release``.
"""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from fairseq_plugins.compat import load_checkpoint_state

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HUBERT_CONFIG = os.path.join(REPO, "examples", "hubert", "config")
HERE = os.path.dirname(os.path.abspath(__file__))

#: fairseq's HubertConfig fields of 2021 (the HuBERT commit), i.e. what the released cfg.model holds
HUBERT_2021_FIELDS = (
    "_name", "label_rate", "extractor_mode", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
    "encoder_attention_heads", "activation_fn", "dropout", "attention_dropout", "activation_dropout",
    "encoder_layerdrop", "dropout_input", "dropout_features", "final_dim", "untie_final_proj", "layer_norm_first",
    "conv_feature_layers", "conv_bias", "logit_temp", "target_glu", "feature_grad_mult", "mask_length",
    "mask_prob", "mask_selection", "mask_other", "no_mask_overlap", "mask_min_space", "mask_channel_length",
    "mask_channel_prob", "mask_channel_selection", "mask_channel_other", "no_mask_channel_overlap",
    "mask_channel_min_space", "conv_pos", "conv_pos_groups", "latent_temp", "skip_masked", "skip_nomask",
)


#: a 4-update run that validates and saves checkpoint_last at its end
SHORT_RUN = ["optimization.max_update=4", "checkpoint.save_interval_updates=4", "dataset.validate_interval_updates=4"]


def shape_like_2021_hubert(src: str, out: str, labels, cluster: str) -> str:
    """``src`` (a fairseq-hydra-train HuBERT checkpoint) reshaped like a 2021 HuBERT release file."""
    state = load_checkpoint_state(src)
    state.pop("task_state")
    state["last_optimizer_state"] = None
    cfg = state["cfg"]
    cfg["model"] = {k: v for k, v in cfg["model"].items() if k in HUBERT_2021_FIELDS}
    cfg["task"]["data"] = f"/checkpoint/{cluster}/manifest"
    cfg["task"]["label_dir"] = f"/checkpoint/{cluster}/labels"
    cfg["task"]["labels"] = list(labels)
    assert "label_embs_concat" in state["model"] and "final_proj.weight" in state["model"]
    torch.save(state, out)
    return out


def _python(*args, cwd=REPO):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="session")
def hubert_2021(tiny_hubert, tmp_path_factory):
    """Base-style 2021 release: the session's tiny HuBERT with labels ['lyr9.km500'] and no task_state."""
    out = str(tmp_path_factory.mktemp("hubert_2021") / "hubert_base_2021_like.pt")
    return {"path": shape_like_2021_hubert(tiny_hubert["ckpt"], out, ["lyr9.km500"], "authors/librispeech"),
            "original": tiny_hubert["ckpt"]}


@pytest.fixture(scope="session")
def hubert_large_2021(tiny_hubert, hydra_train, tmp_path_factory):
    """Large-style 2021 release: a tiny HuBERT pre-trained with normalize, layer_norm_first and the
    layer-norm conv extractor (like HuBERT Large), labels ['km'], no task_state."""
    run = str(tmp_path_factory.mktemp("hubert_large"))
    manifest = tiny_hubert["manifest"]
    hydra_train(HUBERT_CONFIG, "hubert_tiny",
                [f"task.data={manifest}", f"task.label_dir={manifest}", f"checkpoint.save_dir={run}/ckpt",
                 "task.normalize=true", "+model.layer_norm_first=true", "model.extractor_mode=layer_norm",
                 *SHORT_RUN], run)
    original = os.path.join(run, "ckpt", "checkpoint_last.pt")
    return {"path": shape_like_2021_hubert(original, os.path.join(run, "hubert_large_2021_like.pt"), ["km"],
                                           "authors/librivox"), "original": original}


@pytest.fixture(scope="session")
def hubert_ctc(tiny_hubert, hydra_train, tmp_path_factory):
    """The tiny HuBERT CTC fine-tuned on letters by fairseq's own fine-tuning (audio_finetuning + ctc)."""
    run = str(tmp_path_factory.mktemp("hubert_ctc"))
    hydra_train(HUBERT_CONFIG, "hubert_tiny_ctc",
                [f"task.data={tiny_hubert['manifest']}", f"model.w2v_path={tiny_hubert['ckpt']}",
                 f"checkpoint.save_dir={run}/ckpt", "model.freeze_finetune_updates=2", *SHORT_RUN],
                run)
    path = os.path.join(run, "ckpt", "checkpoint_last.pt")
    return {"path": path, "original": path}


@pytest.fixture(scope="session")
def wav2vec2_prehydra(tiny_hubert, hydra_train, tmp_path_factory):
    """A tiny wav2vec 2.0 pre-trained by fairseq, reshaped like a pre-hydra release: ``args`` Namespace with
    the options flat, no ``cfg``."""
    run = str(tmp_path_factory.mktemp("wav2vec2"))
    hydra_train(HERE, "wav2vec2_tiny", [f"task.data={tiny_hubert['manifest']}", f"checkpoint.save_dir={run}/ckpt",
                                        *SHORT_RUN], run)
    original = os.path.join(run, "ckpt", "checkpoint_last.pt")
    state = load_checkpoint_state(original)
    cfg = state.pop("cfg")
    flat = {}
    for group in ("common", "checkpoint", "distributed_training", "dataset", "optimization", "task", "model"):
        flat.update({k: v for k, v in (cfg.get(group) or {}).items() if k != "_name"})
    flat["data"] = "/checkpoint/authors/librispeech/960h"
    names = {"arch": cfg["model"]["_name"], "task": cfg["task"]["_name"], "criterion": cfg["criterion"]["_name"],
             "optimizer": cfg["optimizer"]["_name"], "lr_scheduler": cfg["lr_scheduler"]["_name"]}
    state["args"] = argparse.Namespace(**flat, **names)
    state.pop("task_state", None)
    state["last_optimizer_state"] = None
    out = os.path.join(run, "wav2vec2_small_prehydra_like.pt")
    torch.save(state, out)
    return {"path": out, "original": original}


@pytest.fixture(scope="session")
def wavlm_release_file(tiny_hubert, hydra_train, tmp_path_factory):
    """A WavLM release file ``{'cfg', 'model'}`` of the plugin's ``wavlm`` model pre-trained for 4 updates."""
    run = str(tmp_path_factory.mktemp("wavlm"))
    manifest = tiny_hubert["manifest"]
    hydra_train(HUBERT_CONFIG, "hubert_tiny",
                [f"task.data={manifest}", f"task.label_dir={manifest}", f"checkpoint.save_dir={run}/ckpt",
                 "model._name=wavlm", *SHORT_RUN], run)
    out = os.path.join(run, "WavLM-tiny.pt")
    original = os.path.join(run, "ckpt", "checkpoint_last.pt")
    _python("-c", "from fairseq_plugins.inspect_checkpoint import load_fairseq_checkpoint; "
                  f"m, _, _ = load_fairseq_checkpoint({original!r}); m.export_release({out!r})")
    return {"path": out, "original": original}


@pytest.fixture(scope="session")
def release_shapes(hubert_2021, hubert_large_2021, hubert_ctc, wav2vec2_prehydra, wavlm_release_file, tiny_hubert):
    """name -> ``{"path": the shaped file, "original": the fairseq-hydra-train checkpoint it was made from}``
    for every shape, plus the session's tiny HuBERT as today's fairseq saves it."""
    return {"hubert_2021": hubert_2021, "hubert_large_2021": hubert_large_2021, "hubert_ctc": hubert_ctc,
            "wav2vec2_prehydra": wav2vec2_prehydra, "wavlm_release": wavlm_release_file,
            "hubert_today": {"path": tiny_hubert["ckpt"], "original": tiny_hubert["ckpt"]}}


@pytest.fixture(scope="session")
def run_python():
    """Run ``python ARGS`` in the repository; returns ``CompletedProcess`` (not checked)."""
    def run(*args, cwd=REPO):
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd)
    return run


@pytest.fixture(scope="session")
def wavs(tiny_hubert):
    """Two real utterances of the mini corpus as a padded batch: ``(B x S waveform, B x S padding mask)``."""
    import soundfile as sf

    with open(os.path.join(tiny_hubert["manifest"], "valid.tsv")) as f:
        root = f.readline().strip()
        rows = [line.split("\t")[0] for line in f][:2]
    audio = [torch.from_numpy(sf.read(os.path.join(root, r), dtype="float32")[0]) for r in rows]
    n = max(a.numel() for a in audio)
    wav = torch.zeros(len(audio), n)
    pad = torch.ones(len(audio), n, dtype=torch.bool)
    for i, a in enumerate(audio):
        wav[i, : a.numel()], pad[i, : a.numel()] = a, False
    assert pad.any(), "the two utterances should differ in length"
    return wav, pad


@pytest.fixture(scope="session")
def fairseq_reference():
    """``(original checkpoint, wav, pad) -> {"final", "layers", "frame_pad", "normalize", "input"}``: the encoder inside
    fairseq's own ``load_model_ensemble_and_task`` of a fairseq-hydra-train checkpoint (its label dirs exist
    here), run through fairseq's own ``extract_features``: ``final`` B x T x C, ``layers[k]`` the output of
    layer k (fairseq's ``output_layer=k`` / ``layer=k-1``) for k = 1 .. L-1, ``frame_pad`` B x T. The waveform
    is layer-normalised first when the task says ``normalize`` (as fairseq's datasets do): ``input``."""
    import torch.nn.functional as F
    from fairseq.models.wav2vec import Wav2Vec2Model

    from fairseq_plugins.inspect_checkpoint import load_fairseq_checkpoint

    def run(original, wav, pad):
        model, cfg, _ = load_fairseq_checkpoint(original)
        if hasattr(model, "w2v_encoder"):
            model = model.w2v_encoder.w2v_model
        model.eval()
        normalize = bool(cfg.task.get("normalize", False))
        if normalize:
            wav = torch.stack([torch.cat([F.layer_norm(w[~m], w[~m].shape), w[m] * 0]) for w, m in zip(wav, pad)])

        def features(layer=None):
            with torch.no_grad():
                if isinstance(model, Wav2Vec2Model):
                    res = model.extract_features(wav, padding_mask=pad, mask=False,
                                                 layer=None if layer is None else layer - 1)
                    return res["x"], res["padding_mask"]
                return model.extract_features(wav, padding_mask=pad, mask=False, output_layer=layer)

        final, frame_pad = features()
        n_layers = len(model.encoder.layers)
        return {"final": final, "frame_pad": frame_pad, "normalize": normalize, "input": wav,
                "layers": {k: features(k)[0] for k in range(1, n_layers)}}
    return run
