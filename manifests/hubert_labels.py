"""First-iteration HuBERT targets: k-means clusters of MFCC features, as fairseq's HuBERT recipe makes them.

fairseq's ``examples/hubert/simple_kmeans`` dumps 39-d MFCC (13 + deltas + delta-deltas), fits mini-batch
k-means, and writes one line of frame labels per manifest entry (``{split}.km``) plus ``dict.km.txt``. This
module does the same in one command, at the encoder frame rate (50 Hz: 25 ms window, 20 ms hop) so the labels
line up with a HuBERT conv front end (``label_rate: 50``). Frame ``i`` covers samples ``[320 i, 320 (i + 1))``
and an utterance of ``n`` samples has ``n // 320`` labels, the same convention as the mini corpus's
``{split}.phn50``.

    python -m manifests.hubert_labels --manifest-dir DIR --splits train valid --n-clusters 50
"""
import argparse
import logging
import os
from typing import Dict, List, Sequence

import numpy as np

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


def _split_features(manifest_dir: str, split: str) -> List[np.ndarray]:
    manifest = os.path.join(manifest_dir, f"{split}.tsv")
    root, rows = read_manifest_entries(manifest)
    feats = []
    for rel, n, line in rows:  # the shared reader checks rate, channels, count and finiteness, naming the line
        wav = read_audio(os.path.join(root, rel), 16000, expected_samples=n, manifest=manifest, line=line)
        feats.append(mfcc_features(wav, 16000))
    return feats


def make_kmeans_labels(
    manifest_dir: str,
    splits: Sequence[str] = ("train", "valid"),
    fit_split: str = "train",
    n_clusters: int = 50,
    label: str = "km",
    out_dir: str = "",
    seed: int = 0,
    max_fit_frames: int = 200_000,
) -> Dict[str, int]:
    """Fit k-means on ``fit_split`` MFCCs and write ``{split}.{label}`` + ``dict.{label}.txt``.

    Returns the number of labelled frames per split.
    """
    from sklearn.cluster import MiniBatchKMeans

    out_dir = out_dir or manifest_dir
    feats = {s: _split_features(manifest_dir, s) for s in splits}
    if fit_split not in feats:
        feats[fit_split] = _split_features(manifest_dir, fit_split)
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
    counts = {}
    for split in splits:
        lines = [" ".join(map(str, km.predict((f - mean) / std))) for f in feats[split]]
        write_lines(os.path.join(out_dir, f"{split}.{label}"), lines)
        counts[split] = sum(len(f) for f in feats[split])
        logger.info("wrote %s/%s.%s (%d frames)", out_dir, split, label, counts[split])
    write_dictionary(os.path.join(out_dir, f"dict.{label}.txt"), [str(i) for i in range(n_clusters)])
    return counts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest-dir", required=True, help="folder with {split}.tsv manifests")
    p.add_argument("--splits", nargs="+", default=["train", "valid"], help="splits to label")
    p.add_argument("--fit-split", default="train", help="split whose MFCCs fit the k-means")
    p.add_argument("--n-clusters", type=int, default=50, help="number of k-means clusters (HuBERT: 100)")
    p.add_argument("--label", default="km", help="label file extension, used as task.labels=[LABEL]")
    p.add_argument("--out-dir", default="", help="where to write labels (default: the manifest dir)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    make_kmeans_labels(args.manifest_dir, args.splits, args.fit_split, args.n_clusters, args.label,
                       args.out_dir, args.seed)


if __name__ == "__main__":
    main()
