"""Manifest reading/writing for the scripts of this package: re-exported from the plugin.

The one implementation lives in :mod:`fairseq_plugins.data.manifest_io` (the plugin's training tasks read
manifests at run time and must not import this scripts package); this module keeps the historical import
path ``manifests.manifest_io`` working for the scripts and for users.
"""
from fairseq_plugins.data.manifest_io import (  # noqa: F401
    ManifestError,
    read_lines,
    read_manifest,
    read_manifest_entries,
    words_to_letters,
    write_dictionary,
    write_lines,
    write_manifest,
)
