"""Registered components; each submodule registers itself on import."""
from fairseq_plugins.criterions import (  # noqa: F401
    csc,
    masked_reconstruction,
    mgf,
    simsiam,
    simsiam_recon,
    slicer,
    soft_dtw,
)
