"""Registered components; each submodule registers itself on import."""
from fairseq_plugins.models import hubert_ctc_compat  # noqa: F401
from fairseq_plugins.models import wavlm  # noqa: F401
