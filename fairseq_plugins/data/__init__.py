"""Manifest-driven datasets and seeded waveform augmentations (no registration happens here)."""
