"""HuBERT targets: k-means clusters of MFCC features (iteration 1) or of one transformer layer of a trained
checkpoint (iteration 2), as fairseq's HuBERT recipe makes them.

fairseq's ``examples/hubert/simple_kmeans`` dumps 39-d MFCC (13 + deltas + delta-deltas), fits mini-batch
k-means, and writes one line of frame labels per manifest entry (``{split}.km``) plus ``dict.km.txt``; for the
second iteration it dumps the features of a middle layer of the first-iteration model instead (HuBERT-Base:
layer 6 of 12) and clusters those. This module does both in one command, at the encoder frame rate (50 Hz:
25 ms window, 20 ms hop) so the labels line up with a HuBERT conv front end (``label_rate: 50``). Frame ``i``
covers samples ``[320 i, 320 (i + 1))`` and an utterance of ``n`` samples has ``n // 320`` labels, the same
convention as the mini corpus's ``{split}.phn50``; the conv stack gives a frame or so fewer (its 400-sample
receptive field), so layer features are padded with their last frame to ``n // 320`` (fairseq's HuBERT crops
labels to the feature length anyway). Features are standardised with the fit split's per-dimension mean / std
before k-means, in both modes. When ``{split}.phn50`` exists (the mini corpus), the phone purity of the
clusters (the HuBERT paper's cluster quality measure: the share of frames whose cluster's most common phone
is their own) is logged and returned, a cheap way to compare layers before training on them.

    python -m manifests.hubert_labels --manifest-dir DIR --splits train valid --n-clusters 50
    python -m manifests.hubert_labels --manifest-dir DIR --splits train valid --n-clusters 50 \
        --checkpoint iter1/checkpoint_last.pt --layer 3 --out-dir labels_iter2
"""
import argparse
import logging
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from fairseq_plugins.compat import cli_logging
from fairseq_plugins.data.audio import read_audio
from fairseq_plugins.data.manifest_io import read_manifest_entries, write_dictionary, write_lines

logger = logging.getLogger(__name__)

HOP = 320
WIN = 400


def mfcc_features(wav: np.ndarray, sr: int = 16000) -> np.ndarray:
    """MFCC + deltas + delta-deltas, ``T x 39`` with ``T = len(wav) // 320`` (50 Hz)."""
    import librosa

    if wav.ndim != 1:
        raise ValueError(f"expected mono audio, got shape {wav.shape}")
    n_frames = len(wav) // HOP
    if n_frames < 1:
        raise ValueError(f"audio of {len(wav)} samples is shorter than one {HOP}-sample frame")
    mfcc = librosa.feature.mfcc(
        y=wav.astype(np.float32), sr=sr, n_mfcc=13, n_fft=512, win_length=WIN, hop_length=HOP, n_mels=40,
        center=True,
    )[:, :n_frames]
    width = min(9, n_frames if n_frames % 2 == 1 else n_frames - 1)
    if width >= 3:
        d1 = librosa.feature.delta(mfcc, width=width, order=1, mode="nearest")
        d2 = librosa.feature.delta(mfcc, width=width, order=2, mode="nearest")
    else:
        d1 = np.zeros_like(mfcc)
        d2 = np.zeros_like(mfcc)
    return np.concatenate([mfcc, d1, d2], axis=0).T.astype(np.float32)


class LayerFeatures:
    """``wav -> T x C`` features of transformer layer ``layer`` (1-based) of the checkpoint at ``checkpoint``,
    ``T = len(wav) // 320``, loaded with the plugin's one loader
    (:func:`fairseq_plugins.modules.backbones.load_backbone`, strict, eval mode, heads dropped).

    Raises :class:`~fairseq_plugins.modules.backbones.BackboneCheckpointError` (a ``ValueError``) or
    ``FileNotFoundError`` naming the file when it is not a loadable checkpoint, and ``ValueError`` naming the
    file and its layer count when ``layer`` is not one of its layers.
    """

    def __init__(self, checkpoint: str, layer: int):
        from fairseq_plugins.modules.backbones import load_backbone

        self.backbone = load_backbone(checkpoint)
        n = self.backbone.num_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= n:
            raise ValueError(f"--layer {layer!r}: {checkpoint} has {n} transformer layers; expected a layer "
                             f"index in 1..{n} (1-based; HuBERT's recipe takes a middle one, e.g. {max(1, n // 2)})")
        self.layer = layer

    def __call__(self, wav: np.ndarray, sr: int = 16000) -> np.ndarray:
        import torch

        from fairseq_plugins.data.audio import normalize_waveform
        from fairseq_plugins.modules.backbones import encoder_features

        n_frames = len(wav) // HOP
        if n_frames < 1:
            raise ValueError(f"audio of {len(wav)} samples is shorter than one {HOP}-sample frame")
        source = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
        if self.backbone.normalize:
            source = normalize_waveform(source)
        with torch.no_grad():
            x, _ = encoder_features(self.backbone.model, source, output_layer=self.layer)
        x = x[0].numpy()
        if len(x) < n_frames:  # the conv stack's receptive field drops a frame or so at the end
            x = np.concatenate([x, np.repeat(x[-1:], n_frames - len(x), axis=0)], axis=0)
        return x[:n_frames].astype(np.float32)


def _split_features(manifest_dir: str, split: str,
                    featurize: Callable[[np.ndarray, int], np.ndarray] = mfcc_features) -> List[np.ndarray]:
    manifest = os.path.join(manifest_dir, f"{split}.tsv")
    root, rows = read_manifest_entries(manifest)
    feats = []
    for rel, n, line in rows:  # the shared reader checks rate, channels, count and finiteness, naming the line
        wav = read_audio(os.path.join(root, rel), 16000, expected_samples=n, manifest=manifest, line=line)
        feats.append(featurize(wav, 16000))
    return feats


def phone_purity(manifest_dir: str, split: str, labels: Sequence[np.ndarray]) -> Optional[float]:
    """Share of frames whose cluster's most common ``{split}.phn50`` phone is their own (None without the
    file). Raises ``ValueError`` naming the file and line when its frame count differs from the labels'."""
    path = os.path.join(manifest_dir, f"{split}.phn50")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lines = f.read().splitlines()
    if len(lines) != len(labels):
        raise ValueError(f"{path}: {len(lines)} lines; expected {len(labels)} (one per {split}.tsv entry)")
    pairs: Dict[tuple, int] = {}
    for i, (line, lab) in enumerate(zip(lines, labels), 1):
        phones = line.split()
        if len(phones) != len(lab):
            raise ValueError(f"{path}:{i}: {len(phones)} frame phones; expected {len(lab)} (n // {HOP} frames)")
        for c, p in zip(lab.tolist(), phones):
            pairs[(c, p)] = pairs.get((c, p), 0) + 1
    best: Dict[int, int] = {}
    for (c, _), k in pairs.items():
        best[c] = max(best.get(c, 0), k)
    total = sum(len(lab) for lab in labels)
    return sum(best.values()) / max(1, total)


def make_kmeans_labels(
    manifest_dir: str,
    splits: Sequence[str] = ("train", "valid"),
    fit_split: str = "train",
    n_clusters: int = 50,
    label: str = "km",
    out_dir: str = "",
    seed: int = 0,
    max_fit_frames: int = 200_000,
    checkpoint: Optional[str] = None,
    layer: Optional[int] = None,
) -> Dict[str, float]:
    """Fit k-means on ``fit_split`` features and write ``{split}.{label}`` + ``dict.{label}.txt``.

    Features are MFCCs (iteration 1), or with ``checkpoint`` and ``layer`` the features of that transformer
    layer (1-based) of that checkpoint (iteration 2). Returns the number of labelled frames per split, plus
    ``purity/{split}`` (phone purity, see :func:`phone_purity`) for splits with a ``.phn50`` file.
    """
    from sklearn.cluster import MiniBatchKMeans

    if (checkpoint is None) != (layer is None):
        raise ValueError("checkpoint and layer go together: give both (iteration 2: k-means on that layer of "
                         "that checkpoint) or neither (iteration 1: MFCC k-means)")
    featurize = mfcc_features if checkpoint is None else LayerFeatures(checkpoint, layer)
    source = "MFCC" if checkpoint is None else f"layer {layer} of {checkpoint}"
    out_dir = out_dir or manifest_dir
    os.makedirs(out_dir, exist_ok=True)
    feats = {s: _split_features(manifest_dir, s, featurize) for s in splits}
    if fit_split not in feats:
        feats[fit_split] = _split_features(manifest_dir, fit_split, featurize)
    fit = np.concatenate(feats[fit_split], axis=0)
    mean, std = fit.mean(0), fit.std(0) + 1e-5
    rng = np.random.default_rng(seed)
    if len(fit) > max_fit_frames:
        fit = fit[rng.choice(len(fit), max_fit_frames, replace=False)]
    if len(fit) < n_clusters:
        raise ValueError(f"{fit_split}: only {len(fit)} frames to fit {n_clusters} clusters")
    km = MiniBatchKMeans(
        n_clusters=n_clusters, random_state=seed, batch_size=4096, n_init=3, max_iter=100, compute_labels=False
    )
    km.fit((fit - mean) / std)
    counts: Dict[str, float] = {}
    for split in splits:
        labels = [km.predict((f - mean) / std) for f in feats[split]]
        write_lines(os.path.join(out_dir, f"{split}.{label}"), [" ".join(map(str, lab)) for lab in labels])
        counts[split] = sum(len(f) for f in feats[split])
        purity = phone_purity(manifest_dir, split, labels)
        if purity is not None:
            counts[f"purity/{split}"] = purity
        logger.info("wrote %s/%s.%s (%d frames, k-means on %s%s)", out_dir, split, label, counts[split], source,
                    "" if purity is None else f", phone purity {purity:.3f}")
    write_dictionary(os.path.join(out_dir, f"dict.{label}.txt"), [str(i) for i in range(n_clusters)])
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest-dir", required=True, help="folder with {split}.tsv manifests")
    p.add_argument("--splits", nargs="+", default=["train", "valid"], help="splits to label")
    p.add_argument("--fit-split", default="train", help="split whose MFCCs fit the k-means")
    p.add_argument("--n-clusters", type=int, default=50, help="number of k-means clusters (HuBERT: 100)")
    p.add_argument("--label", default="km", help="label file extension, used as task.labels=[LABEL]")
    p.add_argument("--out-dir", default="", help="where to write labels (default: the manifest dir)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--checkpoint", default=None,
                   help="iteration 2: cluster the features of --layer of this HuBERT checkpoint (any file "
                        "fairseq_plugins.modules.backbones.load_backbone reads) instead of MFCCs")
    p.add_argument("--layer", type=int, default=None,
                   help="with --checkpoint: the transformer layer to cluster, 1-based (HuBERT-Base's recipe: 6 of "
                        "12; a middle layer)")
    args = p.parse_args(argv)
    cli_logging()
    if (args.checkpoint is None) != (args.layer is None):
        p.error("--checkpoint and --layer go together (iteration 2) or are both left out (iteration 1: MFCC)")
    try:
        make_kmeans_labels(args.manifest_dir, args.splits, args.fit_split, args.n_clusters, args.label,
                           args.out_dir, args.seed, checkpoint=args.checkpoint, layer=args.layer)
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
