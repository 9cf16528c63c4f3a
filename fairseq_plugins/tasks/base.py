"""Shared base for the plugin's unlabelled audio tasks: no dictionaries and no length limit of their own."""
import sys
from typing import Tuple

from fairseq.tasks import FairseqTask


class UnlabelledAudioTask(FairseqTask):
    """A FairseqTask without source/target dictionaries whose datasets filter lengths themselves."""

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

    def max_positions(self) -> Tuple[int, int]:
        return (sys.maxsize, sys.maxsize)
