"""The ``csc`` model and criterion: shapes, cross-attention weights over the K conditions, the mean-of-
conditions ablation, per-utterance independence, probe-facing ``extract_features``, and the collapse monitor:
the separation term keeps the embeddings from collapsing, L_csc alone with a large lambda collapses them."""
import tempfile

import pytest
import torch
from omegaconf import OmegaConf

from fairseq_plugins.criterions.csc import CscCriterion
from fairseq_plugins.models.csc import CscConfig, CscModel
from fairseq_plugins.tasks.multiview_audio_pretraining import (
    MultiviewAudioPretrainingConfig,
    MultiviewAudioPretrainingTask,
)

K, B, L = 3, 4, 6400


def build(tiny, seed=1, **overrides):
    task = MultiviewAudioPretrainingTask.setup_task(OmegaConf.structured(MultiviewAudioPretrainingConfig(
        data=tempfile.gettempdir(), seed=seed, tpu=False, train_subset="train", augmentations=[], num_views=K,
        aligned_views=True, clean_target=True)))
    torch.manual_seed(seed)
    cfg = OmegaConf.structured(CscConfig(**{**tiny.encoder, "pool_hidden_dim": 16, "attention_dim": 16,
                                            "sep_n_fft": 256, "sep_hop_length": 80, **overrides}))
    return task, CscModel.build_model(cfg, task)


def batch(seed=0):
    """K conditions of B synthetic targets (harmonic tones, one f0 per 'speaker'), view-major, with the clean
    target repeated per condition, as the multiview dataset lays them out."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L) / 16000
    f0 = 100 + 200 * torch.rand(B, 1, generator=g)
    clean = sum(torch.sin(2 * torch.pi * h * f0 * t) / h for h in range(1, 5)) * 0.1
    clean = clean * (1 + torch.sin(2 * torch.pi * 4 * t + torch.rand(B, 1, generator=g) * 6))
    other = clean.roll(1, 0)
    noise = 0.05 * torch.randn(K, B, L, generator=g)
    mixtures = torch.stack([clean + other, clean + noise[1], clean + 0.5 * other + noise[2]])
    source = mixtures.reshape(K * B, L)
    pad = torch.zeros(K * B, L, dtype=torch.bool)
    return {"id": torch.arange(B), "net_input": {"source": source, "padding_mask": pad,
                                                 "target_source": clean.repeat(K, 1)},
            "views": {"num_views": K, "batch_size": B, "aligned": True}}


def test_forward_shapes_and_attention_weights_sum_to_one(tiny):
    _, model = build(tiny)
    s = batch()
    out = model(**s["net_input"], num_views=K)
    D = tiny.encoder["encoder_embed_dim"]
    assert out["est"].shape == (K * B, L) and out["spk"].shape == (K, B, D) and out["g"].shape == (K, B, D)
    assert out["attn"].shape == (B, K, K) and out["mu"].shape == (K * B, D)
    assert torch.allclose(out["attn"].sum(-1), torch.ones(B, K), atol=1e-6)
    assert (out["attn"] >= 0).all() and not torch.allclose(out["attn"], torch.full_like(out["attn"], 1 / K))
    g_ref = torch.einsum("bkj,jbd->kbd", out["attn"], out["spk"])  # g_k = sum_j a_kj e_j of the same utterance
    assert torch.allclose(out["g"], g_ref, atol=1e-5)


def test_no_cross_attention_is_the_mean_of_condition_vectors(tiny):
    _, model = build(tiny, cross_attention=False)
    out = model(**batch()["net_input"], num_views=K)
    assert torch.allclose(out["attn"], torch.full((B, K, K), 1 / K))
    assert torch.allclose(out["g"], out["spk"].mean(0, keepdim=True).expand(K, B, -1), atol=1e-6)


def test_global_vector_of_an_utterance_ignores_the_other_utterances(tiny):
    _, model = build(tiny)
    model.eval()
    s = batch()
    out = model(**s["net_input"], num_views=K)
    src = s["net_input"]["source"].clone().view(K, B, L)
    src[:, 1:] = torch.randn(K, B - 1, L)
    out2 = model(source=src.reshape(K * B, L), padding_mask=s["net_input"]["padding_mask"], num_views=K)
    assert torch.allclose(out["g"][:, 0], out2["g"][:, 0], atol=1e-5)
    assert not torch.allclose(out["g"][:, 1], out2["g"][:, 1], atol=1e-3)


def test_extract_features_gives_frames_and_the_pooled_speaker_embedding(tiny):
    _, model = build(tiny)
    model.eval()
    wav = batch()["net_input"]["source"][:2]
    pad = torch.zeros_like(wav, dtype=torch.bool)
    pad[1, 4000:] = True
    feats = model.extract_features(wav, padding_mask=pad, mask=False)
    x, frame_pad = feats
    assert x.dim() == 3 and x.size(0) == 2 and feats["speaker"].shape == (2, x.size(-1))
    assert torch.allclose(feats["speaker"], model.speaker_embedding(x, frame_pad))
    model.remove_pretraining_modules()
    assert model.extract_features(wav, padding_mask=pad)["speaker"] is None


def test_build_needs_aligned_conditions_with_clean_target(tiny):
    task = MultiviewAudioPretrainingTask.setup_task(OmegaConf.structured(MultiviewAudioPretrainingConfig(
        data=tempfile.gettempdir(), tpu=False, augmentations=[], num_views=K)))
    with pytest.raises(ValueError, match="clean_target"):
        CscModel.build_model(OmegaConf.structured(CscConfig(**tiny.encoder)), task)


def train(tiny, sep_weight, csc_weight, steps=30):
    task, model = build(tiny, seed=3, learn_kappa=False, kappa_init=10.0)
    crit = CscCriterion(task, sep_weight=sep_weight, csc_weight=csc_weight)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        loss, n, log = crit(model, batch(seed=step % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        log = crit(model, batch(seed=99))[2]
    return {k: v / log["sample_size"] for k, v in log.items() if k not in ("sample_size", "nsentences", "ntokens")}


def test_separation_term_keeps_embeddings_from_collapsing(tiny):
    """Measured on this tiny setup (30 Adam steps, kappa fixed at 10): L_sep alone leaves the frames' collapse
    monitor at about 0.03; L_sep + lambda 0.01 keeps most of it; L_csc alone (lambda 100) drops it about 5x
    (collapse: every frame on its utterance's speaker direction). With L_sep and lambda >= 0.1 the frames
    collapse too (the separation head still reads the small residual deviations), which is why the default
    lambda is 0.01: the separation term protects only while it dominates the gradient."""
    torch.set_num_threads(1)
    sep_only = train(tiny, sep_weight=1.0, csc_weight=0.0)
    both = train(tiny, sep_weight=1.0, csc_weight=0.01)
    alone = train(tiny, sep_weight=0.0, csc_weight=100.0)
    print("\nL_sep only:", sep_only, "\nL_sep + 0.01 L_csc:", both, "\nL_csc alone, lambda 100:", alone)
    assert both["frame_collapse_std"] > 0.5 * sep_only["frame_collapse_std"]
    assert alone["frame_collapse_std"] < 0.3 * sep_only["frame_collapse_std"]
    assert alone["frame_collapse_std"] < 0.4 * both["frame_collapse_std"]
    assert alone["spk_collapse_std"] < 0.3 * both["spk_collapse_std"]
    assert alone["mean_cos"] > 0.99  # every frame on its speaker direction: the collapsed solution
    assert both["si_snri"] > 0 and sep_only["si_snri"] > 0  # the separation head learned something
