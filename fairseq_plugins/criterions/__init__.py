"""Registered components; each submodule registers itself on import."""
from fairseq_plugins.criterions import (  # noqa: F401
    slicer,
    soft_dtw,
)
