"""A test-only fairseq ``--user-dir``: the plugin, plus a trace of the training batches each rank collates.

With ``CSC_TRACE_DIR`` set, every training batch a ``MultiviewAudioDataset`` collates appends one line per item,
``batch<TAB>epoch<TAB>index<TAB>sha1 of its K conditions``, to ``$CSC_TRACE_DIR/rank{R}.tsv`` (R = the
process's torch.distributed rank; ``batch`` counts the collater calls of that process, from 0). The 2-process
gloo test of tests/csc/test_csc_train.py reads it to show that the ranks mixed different utterances and that
every mixture is the one its ``(seed, epoch, index, condition)`` key gives in any process.
"""
import hashlib
import itertools
import os

import torch.distributed as dist

import fairseq_plugins  # noqa: F401  (registers the plugin's tasks, models and criterions)
from fairseq_plugins.data.multiview_dataset import MultiviewAudioDataset

_collater = MultiviewAudioDataset.collater
_calls = itertools.count()


def mixture_digest(item) -> str:
    """sha1 over the bytes of an item's conditions (its ``views``)."""
    h = hashlib.sha1()
    for view in item["views"]:
        h.update(view.numpy().tobytes())
    return h.hexdigest()


def _traced_collater(self, samples):
    out = os.environ.get("CSC_TRACE_DIR")
    if out and self.fixed_epoch is None:  # training sets only (validation sets fix their epoch)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        batch = next(_calls)
        with open(os.path.join(out, f"rank{rank}.tsv"), "a") as f:
            for s in samples:
                f.write(f"{batch}\t{self.epoch}\t{s['id']}\t{mixture_digest(s)}\n")
    return _collater(self, samples)


MultiviewAudioDataset.collater = _traced_collater
