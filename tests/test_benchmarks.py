"""Every benchmark script imports and answers --help, so none can rot unnoticed (their runs are documented
commands, not tests)."""

import subprocess
import sys
from pathlib import Path

# benchmarks/processes.py is the tests' and benchmarks' helper module, not a script
BENCHMARKS = sorted(p for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py") if p.name != "processes.py")
SCRIPTS = sorted((Path(__file__).parents[1] / "scripts").glob("*.py"))


def test_every_benchmark_and_script_answers_help():
    """All at once (each in its own process: they are scripts, with benchmarks/ on their path)."""
    runs = {path.name: subprocess.Popen([sys.executable, str(path), "--help"], cwd=path.parent, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for path in BENCHMARKS + SCRIPTS}
    assert len(runs) >= 10
    for name, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0 and "usage" in out.lower(), f"{name}: {err[-2000:]}"
