"""The CI skip guard (tests/ci_skip_guard.py) run for real: a throwaway test directory whose conftest registers
the guard exactly as tests/conftest.py does, run by pytest in a subprocess with and without CI=true."""
import os
import subprocess
import sys
import textwrap

import pytest

GUARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ci_skip_guard.py")

CONFTEST = textwrap.dedent(f"""
    import importlib.util

    def pytest_configure(config):
        spec = importlib.util.spec_from_file_location("ci_skip_guard", {GUARD!r})
        guard = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(guard)
        guard.register(config)
""")

TESTS = {
    "gpu": """
        import pytest

        def test_ok():
            assert True

        @pytest.mark.skipif(True, reason="no GPU")
        def test_on_gpu():
            pass

        def test_gpu_inside():
            pytest.skip("no GPU: needs CUDA tensors")

        @pytest.mark.xfail(reason="expected", strict=True)
        def test_xfail():
            assert False
    """,
    "dependency": """
        import pytest

        def test_ok():
            assert True

        def test_needs_compiler():
            pytest.skip("no compiler")
    """,
    "import": """
        import pytest

        missing = pytest.importorskip("a_module_that_is_not_installed")

        def test_never_runs():
            pass
    """,
}


def run_pytest(tmp_path, kind, ci):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_case.py").write_text(textwrap.dedent(TESTS[kind]))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=300, env=env)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("ci", [True, False])
def test_gpu_skips_and_xfails_pass(tmp_path, ci):
    rc, out = run_pytest(tmp_path, "gpu", ci)
    assert rc == 0, out
    assert "FORBIDDEN SKIP" not in out


@pytest.mark.parametrize("kind,reason", [("dependency", "no compiler"),
                                         ("import", "could not import 'a_module_that_is_not_installed'")])
def test_other_skips_fail_under_ci_only(tmp_path, kind, reason):
    rc, out = run_pytest(tmp_path, kind, ci=True)
    assert rc == 1, out
    assert "skips are failures under CI" in out and "FORBIDDEN SKIP" in out and reason in out, out
    rc, out = run_pytest(tmp_path, kind, ci=False)
    assert "FORBIDDEN SKIP" not in out
    assert rc == (5 if kind == "import" else 0), out  # 5: pytest's own "no tests ran" (the only module skipped)
