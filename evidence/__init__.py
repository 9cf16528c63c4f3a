"""The evidence harness (``python -m evidence``, ``make evidence``): see :mod:`evidence.harness`."""
