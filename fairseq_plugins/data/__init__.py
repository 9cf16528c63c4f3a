"""Data of the plugin (no registration happens here): the one checked audio reader and waveform normalisation
(``audio``), fairseq manifest reading/writing (``manifest_io``), procedural noise (``noise``), seeded
augmentations (``augment``, ``spec_augment``) and the manifest-driven datasets of the tasks."""
