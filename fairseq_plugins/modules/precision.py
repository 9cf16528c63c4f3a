"""Keeping chosen tensors of a module in their precision when fairseq casts the whole model.

fairseq's ``common.fp16`` / ``common.bf16`` training calls ``model.half()`` / ``model.to(torch.bfloat16)``, which
casts every parameter and buffer. Signal front ends (mel filterbanks, windows) and running statistics must stay
float32/float64: a bf16 filterbank cannot even be multiplied with the float32 spectrum. A model lists those
tensors and routes ``nn.Module._apply`` through :func:`apply_keeping`, which lets them follow device moves only.
"""
from typing import Callable, Iterable

import torch


def apply_keeping(apply: Callable, fn: Callable, kept: Iterable[torch.Tensor], recurse: bool = True):
    """Call ``apply(guarded_fn, recurse)`` (a module's ``super()._apply``) with ``fn`` changed so that the
    tensors in ``kept`` only move to the device ``fn`` would put them on and keep their dtype."""
    ids = {id(t) for t in kept}

    def guarded(t):
        if id(t) in ids:
            return t.to(device=fn(t.new_zeros(())).device)
        return fn(t)

    return apply(guarded, recurse)
