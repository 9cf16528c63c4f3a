"""Registered components; each submodule registers itself on import."""
from fairseq_plugins.models import (
    csc,  # noqa: F401
    hubert_ctc_compat,  # noqa: F401
    laser_finetune,  # noqa: F401
    mgf,  # noqa: F401
    simsiam_recon,  # noqa: F401
    slicer,  # noqa: F401
    wavlm,  # noqa: F401
)
