"""fairseq_plugins: a fairseq ``--user-dir`` plugin for self-supervised speech/audio representation learning.

Pass ``common.user_dir=/abs/path/to/fairseq_plugins`` to ``fairseq-hydra-train`` (or ``--user-dir`` to the
argparse CLIs), or call ``fairseq.utils.import_user_module(Namespace(user_dir=...))`` before loading a
checkpoint made with the plugin. Importing the package applies the workarounds of :mod:`fairseq_plugins.compat`
and registers every task, model and criterion (fairseq imports a user dir's ``tasks/`` and ``models/`` itself
but not ``criterions/``, so all three are imported here).
"""
from fairseq_plugins import compat

compat.install_safe_globals()
compat.install_checkpoint_guards()

from fairseq_plugins import criterions, models, tasks  # noqa: E402,F401  (registers everything)

__version__ = "0.1.0"
