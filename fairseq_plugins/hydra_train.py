"""``fairseq-plugins-train``: ``fairseq-hydra-train`` with this plugin as ``common.user_dir`` (it cannot be forgotten).

Forgetting ``common.user_dir`` with plain ``fairseq-hydra-train`` ends in fairseq's "Could not infer task type"
followed by forty task names. This command takes exactly the arguments of ``fairseq-hydra-train`` and adds
``common.user_dir=<this package's folder>`` when it is not given (a different user dir given explicitly is kept,
with a warning: it must import this plugin itself). Installed by ``setup.py`` as the console script
``fairseq-plugins-train``; ``python -m fairseq_plugins.hydra_train ...`` is the same command::

    fairseq-plugins-train --config-dir examples/slicer/config --config-name slicer_tiny \\
        task.data=/abs/manifest checkpoint.save_dir=/abs/exp/ckpt hydra.run.dir=/abs/exp
"""
import logging
import os
import sys
from typing import List, Optional

logger = logging.getLogger(__name__)

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))


def with_user_dir(args: List[str]) -> List[str]:
    """``args`` plus ``common.user_dir=PLUGIN_DIR`` unless some ``common.user_dir`` override is present."""
    given = [a for a in args if a.lstrip("+").split("=", 1)[0] == "common.user_dir"]
    if not given:
        return [*args, f"common.user_dir={PLUGIN_DIR}"]
    value = given[-1].split("=", 1)[1] if "=" in given[-1] else ""
    if os.path.abspath(value) != PLUGIN_DIR:
        logger.warning("keeping %s (this plugin is %s)", given[-1], PLUGIN_DIR)
    return list(args)


def main(argv: Optional[List[str]] = None) -> None:
    args = with_user_dir(list(sys.argv[1:] if argv is None else argv))
    sys.argv = [sys.argv[0], *args]
    from fairseq_cli.hydra_train import cli_main

    cli_main()


if __name__ == "__main__":
    main()
