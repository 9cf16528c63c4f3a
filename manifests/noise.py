"""Procedural noise for the scripts of this package: re-exported from the plugin.

The one implementation lives in :mod:`fairseq_plugins.data.noise` (noise augmentation uses it at training
time, and the plugin must not import this scripts package); this module keeps ``manifests.noise`` working.
"""
from fairseq_plugins.data.noise import MAX_PEAK, NOISE_KINDS, TARGET_RMS, make_noise  # noqa: F401
