"""The command-line tools' one logging set-up (fairseq_plugins.compat.cli_logging).

Importing fairseq leaves the root logger at DEBUG with a handler, so a plain ``logging.basicConfig`` in a CLI does
nothing and numba's JIT logs hundreds of lines of bytecode (it did in ``make demo``'s k-means step)."""
import logging
import os
import re

import fairseq  # noqa: F401  (what every CLI imports first, directly or through the plugin)

from fairseq_plugins.compat import CLI_LOG_FORMAT, cli_logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cli_logging_replaces_fairseqs_debug_root_and_quiets_numba():
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("numba").level)
    try:
        root.setLevel(logging.DEBUG)  # as importing fairseq leaves it
        root.addHandler(logging.StreamHandler())  # as importing fairseq leaves it: a plain handler, default format
        cli_logging()
        assert root.level == logging.INFO
        plain = [h for h in root.handlers if type(h) is logging.StreamHandler]
        assert len(plain) == 1 and plain[0].formatter._fmt == CLI_LOG_FORMAT
        assert not logging.getLogger("numba.core.byteflow").isEnabledFor(logging.INFO)
        cli_logging(logging.WARNING)
        assert root.level == logging.WARNING
        cli_logging(logging.WARNING, verbose=True)
        assert root.level == logging.DEBUG
        assert len([h for h in root.handlers if type(h) is logging.StreamHandler]) == 1  # replaced, not added
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("numba").setLevel(saved[2])


def test_no_cli_configures_logging_on_its_own():
    """Every CLI of the package and the manifest tools goes through cli_logging (one home)."""
    offenders = []
    for top in ("fairseq_plugins", "manifests", "evidence"):
        for d, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                path = os.path.join(d, f)
                if f.endswith(".py") and path != os.path.join(REPO, "fairseq_plugins", "compat.py"):
                    with open(path) as fh:
                        if re.search(r"logging\.basicConfig\(", fh.read()):
                            offenders.append(os.path.relpath(path, REPO))
    assert offenders == []


def test_every_command_line_tool_sets_up_logging():
    """Every module with a __main__ block calls cli_logging (fairseq_plugins.hydra_train hands over to
    fairseq-hydra-train, which configures its own); pool_seeds' plot logged matplotlib at DEBUG before."""
    missing = []
    for top in ("fairseq_plugins", "manifests", "evidence"):
        for d, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                path = os.path.join(d, f)
                if not f.endswith(".py") or path.endswith(os.path.join("fairseq_plugins", "hydra_train.py")):
                    continue
                with open(path) as fh:
                    text = fh.read()
                if '__name__ == "__main__"' in text and "cli_logging(" not in text:
                    missing.append(os.path.relpath(path, REPO))
    assert missing == []
