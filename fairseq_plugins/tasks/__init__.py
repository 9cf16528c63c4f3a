"""Registered components; each submodule registers itself on import."""
from fairseq_plugins.tasks import (
    laser_finetune,  # noqa: F401
    multiview_audio_pretraining,  # noqa: F401
    slicer_pretraining,  # noqa: F401
)
