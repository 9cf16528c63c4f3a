"""WavLM backbone (fairseq_plugins.modules.wavlm) and the registered fairseq model ``wavlm``.

(a) numerical parity with HF transformers' WavLMModel (random tiny weights mapped key by key, strictly, by the
    HF export's one mapping, fairseq_plugins.modules.hf_convert);
(b) the released-checkpoint format: round trip, strict key errors, refusal of fairseq checkpoints;
(c) the fairseq model built through fairseq's task/model registries and trained one step by the stock
    ``hubert`` criterion; export to / initialisation from the release format.
"""
import os

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import fairseq_plugins.models.wavlm  # noqa: F401  (registers the model)
from fairseq_plugins.models.wavlm import MODEL_NAME, WavLMModel, WavLMPretrainConfig
from fairseq_plugins.modules.backbones import BackboneCheckpointError
from fairseq_plugins.modules.wavlm import (
    RELEASE_CFG_KEYS,
    WavLMBackbone,
    WavLMConfig,
    load_wavlm_release,
    normalize_waveform,
    save_wavlm_release,
)

# the real conv stack (320x down-sampling) with small channel counts; 2 layers, 4 heads
CONV = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"
TINY = dict(encoder_embed_dim=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_embed_dim=128,
            conv_feature_layers=CONV, conv_pos=16, conv_pos_groups=4, num_buckets=320, max_distance=800,
            relative_position_embedding=True, gru_rel_pos=True)


def tiny_backbone(seed: int = 0, **overrides) -> WavLMBackbone:
    """A tiny WavLM in eval mode whose every parameter (norm weights, biases, grep_a ...) is non-trivial."""
    torch.manual_seed(seed)
    model = WavLMBackbone(WavLMConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


# ------------------------------------------------------------------------------------------------ (a) parity
def hf_twin(model: WavLMBackbone):
    """The HF WavLMModel with the same architecture and weights, through the export's one mapping
    (fairseq_plugins.modules.hf_convert: every HF key filled, strictly)."""
    from fairseq_plugins.modules.backbones import Backbone
    from fairseq_plugins.modules.hf_convert import to_hf_model
    from fairseq_plugins.modules.wavlm import release_cfg_dict

    cfg = model.cfg
    backbone = Backbone("wavlm", model, {"kind": "wavlm", "cfg": release_cfg_dict(cfg)}, cfg.encoder_embed_dim,
                        cfg.encoder_layers, cfg.normalize)
    return to_hf_model(backbone)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # inside HF's attention
@pytest.mark.parametrize("layer_norm_first", [False, True], ids=["post_ln", "pre_ln"])
@pytest.mark.parametrize("extractor_mode", ["default", "layer_norm"])
def test_hidden_states_match_hf_transformers(extractor_mode, layer_norm_first):
    model = tiny_backbone(extractor_mode=extractor_mode, layer_norm_first=layer_norm_first)
    hf = hf_twin(model)
    torch.manual_seed(1)
    # 2 s = 99 frames > 80 (= num_buckets / 4): exercises the exact and the log-spaced buckets
    wav = torch.randn(2, 32000)
    valid = 20000
    padding_mask = torch.zeros(2, 32000, dtype=torch.bool)
    padding_mask[1, valid:] = True
    wav[1, valid:] = 0.0

    with torch.no_grad():
        for pm in (None, padding_mask):
            (x, ours), frame_pm = model.extract_features(wav, padding_mask=pm, ret_layer_results=True)
            out = hf(wav, attention_mask=None if pm is None else (~pm).long(), output_hidden_states=True)
            theirs = out.hidden_states
            assert len(ours) == len(theirs) == model.cfg.encoder_layers + 1
            # the final layer norm of a pre-LN model: HF last_hidden_state vs our x; layer results are pre-LN
            torch.testing.assert_close(x, out.last_hidden_state, atol=1e-5, rtol=1e-4)
            # padded batch: item 0 has no padding and must match exactly. For item 1 the two libraries
            # derive the frame mask differently (ours, like the authors' and fairseq HuBERT: a frame is
            # padding iff all samples of its S // T chunk are; HF: the conv output-length formula); for this
            # length both give the same mask, which is asserted first, and only the valid frames are
            # compared (the values at padded frames are unspecified in both).
            for i, (a, b) in enumerate(zip(ours, theirs)):
                torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-4, msg=f"hidden state {i}")
            if pm is not None:
                hf_valid = hf._get_feature_vector_attention_mask(x.size(1), (~pm).long())
                assert torch.equal(~frame_pm, hf_valid)
                n = int(hf_valid[1].sum())
                assert n < x.size(1)
                for i, (a, b) in enumerate(zip(ours, theirs)):
                    torch.testing.assert_close(a[1, :n], b[1, :n], atol=1e-5, rtol=1e-4,
                                               msg=f"hidden state {i}")


def test_padding_does_not_leak_into_valid_frames():
    """layer_norm mode has no sequence-level norm: a padded item equals the same audio run alone."""
    model = tiny_backbone(extractor_mode="layer_norm", layer_norm_first=True)
    torch.manual_seed(2)
    wav = torch.randn(2, 32000)
    padding_mask = torch.zeros_like(wav, dtype=torch.bool)
    # 20000 of 32000 samples: here the authors' frame mask keeps exactly the frames a 20000-sample input has
    # (for other lengths it can keep one more frame, whose receptive field reaches into the padding)
    padding_mask[1, 20000:] = True
    with torch.no_grad():
        (_, batch), frame_pm = model.extract_features(wav, padding_mask=padding_mask, ret_layer_results=True)
        (_, alone), _ = model.extract_features(wav[1:, :20000], ret_layer_results=True)
    n = alone[0].size(1)
    assert int((~frame_pm[1]).sum()) == n
    for a, b in zip(batch, alone):
        torch.testing.assert_close(a[1, :n], b[0], atol=1e-5, rtol=1e-4)


def test_normalize_waveform_ignores_padding():
    wav = torch.randn(2, 1000) * 3 + 1
    padding_mask = torch.zeros_like(wav, dtype=torch.bool)
    padding_mask[1, 600:] = True
    out = normalize_waveform(wav, padding_mask)
    torch.testing.assert_close(out[0], F.layer_norm(wav[0], (1000,)))
    torch.testing.assert_close(out[1, :600], F.layer_norm(wav[1, :600], (600,)))
    assert torch.all(out[1, 600:] == 0)


def test_output_layer_and_seq_len_multiple():
    model = tiny_backbone()
    wav = torch.randn(1, 16000)
    with torch.no_grad():
        (x1, results), _ = model.extract_features(wav, output_layer=1, ret_layer_results=True)
        (_, full), _ = model.extract_features(wav, ret_layer_results=True)
        model.encoder.required_seq_len_multiple = 8  # 49 frames -> padded to 56 inside, cut back
        (_, padded), _ = model.extract_features(wav, ret_layer_results=True)
    assert len(results) == 2
    torch.testing.assert_close(x1, full[1])
    for a, b in zip(full, padded):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------- (b) release format
def test_release_round_trip(tmp_path):
    model = tiny_backbone(extractor_mode="layer_norm", layer_norm_first=True, normalize=True)
    path = tmp_path / "wavlm_tiny.pt"
    save_wavlm_release(model, model.cfg, path)

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"cfg", "model"}
    assert type(raw["cfg"]) is dict and list(raw["cfg"]) == list(RELEASE_CFG_KEYS)
    assert raw["cfg"]["extractor_mode"] == "layer_norm" and raw["cfg"]["normalize"] is True
    assert raw["cfg"]["conv_feature_layers"] == CONV
    assert all(type(v) in (bool, int, float, str) for v in raw["cfg"].values())
    assert set(raw["model"]) == set(model.state_dict())
    assert "encoder.layers.0.self_attn.relative_attention_bias.weight" in raw["model"]
    assert "encoder.layers.1.self_attn.relative_attention_bias.weight" not in raw["model"]

    loaded, cfg = load_wavlm_release(path)
    assert not loaded.training and cfg.normalize and cfg.layer_norm_first
    wav = torch.randn(2, 8000)
    with torch.no_grad():
        (a, la), _ = model.extract_features(wav, ret_layer_results=True)
        (b, lb), _ = loaded.extract_features(wav, ret_layer_results=True)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(la, lb))


def test_release_key_errors_list_the_keys(tmp_path):
    model = tiny_backbone()
    path = tmp_path / "wavlm_tiny.pt"
    save_wavlm_release(model, model.cfg, path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)

    gone = "encoder.layers.1.self_attn.grep_a"
    missing = dict(ckpt, model={k: v for k, v in ckpt["model"].items() if k != gone})
    with pytest.raises(BackboneCheckpointError, match=rf"1 missing \['{gone}'\], 0 unexpected"):
        load_wavlm_release(missing)

    extra_key = "encoder.layers.1.self_attn.relative_attention_bias.weight"
    extra = dict(ckpt, model={**ckpt["model"], extra_key: torch.zeros(320, 4)})
    with pytest.raises(BackboneCheckpointError, match=rf"0 missing \[\], 1 unexpected \['{extra_key}'\]"):
        load_wavlm_release(extra)

    with pytest.raises(BackboneCheckpointError, match="a bare state_dict"):
        load_wavlm_release(ckpt["model"])
    with pytest.raises(ValueError, match="may only contain"):
        evil = "__import__('os').getcwd()"
        load_wavlm_release(dict(ckpt, cfg={**ckpt["cfg"], "conv_feature_layers": evil}))


def test_fairseq_checkpoints_are_recognised(tmp_path):
    from fairseq.data.dictionary import Dictionary

    fairseq_ckpt = {
        "args": None,
        "cfg": {"common": {}, "model": {"_name": "hubert"}, "task": {"_name": "hubert_pretraining"}},
        "model": tiny_backbone().state_dict(), "criterion": None, "optimizer_history": [],
        "task_state": {"dictionaries": [Dictionary()]}, "extra_state": {}, "last_optimizer_state": None,
    }
    with pytest.raises(BackboneCheckpointError, match="this looks like a fairseq checkpoint"):
        load_wavlm_release(fairseq_ckpt)
    path = tmp_path / "checkpoint_last.pt"
    torch.save(fairseq_ckpt, path)  # loads under the plugin's allow-list: recognised by its keys
    with pytest.raises(BackboneCheckpointError, match=rf"{path}.*this looks like a fairseq checkpoint"):
        load_wavlm_release(path)
    # an older checkpoint pickling an omegaconf object cannot even be unpickled safely: same advice
    torch.save(dict(fairseq_ckpt, cfg=OmegaConf.create(fairseq_ckpt["cfg"])), path)
    with pytest.raises(BackboneCheckpointError, match="this looks like a fairseq checkpoint"):
        load_wavlm_release(path)


# --------------------------------------------------------------------------------- (c) the fairseq model
def build_task_and_model(tmp_path, **model_overrides):
    from fairseq import tasks

    with open(os.path.join(tmp_path, "dict.km.txt"), "w") as f:
        f.writelines(f"{i} 1\n" for i in range(10))
    task_cfg = {"_name": "hubert_pretraining", "data": str(tmp_path), "labels": ["km"], "label_rate": 50.0,
                "sample_rate": 16000}
    model_cfg = OmegaConf.structured(WavLMPretrainConfig(**{**TINY, **model_overrides}))
    model_cfg._name = MODEL_NAME
    cfg = OmegaConf.create({"task": task_cfg, "model": model_cfg})
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model)


def test_registered_model_trains_with_hubert_criterion(tmp_path):
    from fairseq.criterions.hubert_criterion import HubertCriterion
    from fairseq.models import MODEL_REGISTRY

    assert MODEL_REGISTRY[MODEL_NAME] is WavLMModel
    task, model = build_task_and_model(tmp_path)
    assert type(model) is WavLMModel and model.feat2tar_ratio == 1.0
    torch.manual_seed(3)
    wav = torch.randn(2, 16000)
    padding_mask = torch.zeros_like(wav, dtype=torch.bool)
    padding_mask[1, 12000:] = True
    sample = {"id": torch.arange(2), "net_input": {"source": wav, "padding_mask": padding_mask},
              "target_list": [torch.randint(4, 14, (2, 49))]}
    criterion = HubertCriterion(task, pred_masked_weight=1.0, pred_nomask_weight=0.5, loss_weights=[10.0])
    model.train()
    loss, sample_size, log = criterion(model, sample)
    assert torch.isfinite(loss) and sample_size > 0 and "loss_features_pen" in log
    loss.backward()
    attn0 = model.encoder.layers[0].self_attn
    for p in (attn0.relative_attention_bias.weight, model.encoder.layers[1].self_attn.grep_a,
              model.label_embs_concat, model.feature_extractor.conv_layers[0][0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_export_and_init_from_release(tmp_path):
    _, model = build_task_and_model(tmp_path)
    model.eval()
    path = str(tmp_path / "exported.pt")
    model.export_release(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert not any(k.startswith(("final_proj", "label_embs_concat", "target_glu")) for k in raw["model"])

    backbone, _ = load_wavlm_release(path)
    wav = torch.randn(1, 12000)
    with torch.no_grad():
        (a, la), _ = model.extract_features(wav, ret_layer_results=True)
        (b, lb), _ = backbone.extract_features(wav, ret_layer_results=True)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(la, lb))

    _, restarted = build_task_and_model(tmp_path, init_from_release=path)
    for key, value in raw["model"].items():
        assert torch.equal(restarted.state_dict()[key], value), key
    with pytest.raises(BackboneCheckpointError, match=r"model.max_distance=800"):
        build_task_and_model(tmp_path, init_from_release=path, max_distance=400)
