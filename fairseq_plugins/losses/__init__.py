"""Pure torch losses (no fairseq import): import from the submodules, e.g.
``from fairseq_plugins.losses.soft_dtw import soft_dtw_divergence``. Nothing is re-exported here, so that a
function never shadows the module of the same name (``fairseq_plugins.losses.soft_dtw`` is the module)."""
