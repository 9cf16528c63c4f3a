"""The shipped text matches the repository: nothing cites a file that is not in it (a design note kept outside the
repository, a machine path), and the README's account of `make demo` has exactly the steps scripts/demo.sh
runs, numbered the same way."""
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", ".venv", "demo_out", "evidence_out", "build", "outputs", "multirun", "__pycache__",
             ".pytest_cache", ".ruff_cache"}
TEXT_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".sh", ".txt", ".toml", ".cfg", ".cpp", ".ini")
# spelled in pieces so that this file does not match itself
FORBIDDEN = ["METHODS" + ".md", "/work/" + "shared", "/work/" + "main"]


def shipped_text_files():
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith(TEXT_SUFFIXES) or name in ("Makefile", "run"):
                yield os.path.join(root, name)


def test_nothing_cites_files_outside_the_repository():
    hits = []
    for path in shipped_text_files():
        with open(path, errors="replace") as f:
            for i, line in enumerate(f, 1):
                if any(bad in line for bad in FORBIDDEN):
                    hits.append(f"{os.path.relpath(path, REPO)}:{i}: {line.strip()}")
    assert not hits, "references to files that are not in the repository:\n" + "\n".join(hits)


def test_readme_demo_steps_are_the_steps_of_demo_sh():
    with open(os.path.join(REPO, "scripts", "demo.sh")) as f:
        steps = re.findall(r'^\s*step "(\d+)/(\d+) ', f.read(), re.M)
    total = int(steps[0][1])
    assert [int(n) for n, _ in steps] == list(range(1, total + 1)) and {int(t) for _, t in steps} == {total}, steps
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    section = readme.split("## What `make demo` does", 1)[1].split("\n## ", 1)[0]
    numbered = [int(n) for n in re.findall(r"^(\d+)\. ", section, re.M)]
    assert numbered == list(range(1, total + 1)), (
        f"README lists demo steps {numbered}, scripts/demo.sh runs steps 1..{total}")
