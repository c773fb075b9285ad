"""The README's two commands stay true: CI runs the test command verbatim, the main job's tool exists."""

import pytest
import re
import subprocess
import sys

from conftest import REPO


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2, commands
    test_command = commands[1]
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


@pytest.mark.e2e
def test_main_job_command_runs(tmp_path, shared_data, minilm_path):
    """The README's main job, for real: the quickstart recipe end to end (about 3 minutes on 2 cores)."""
    main = readme_commands()[0]
    job = main.split("&&")[-1].strip().split()
    assert job[:3] == ["slimbert", "run", "recipes/quickstart.yaml"]
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", *job[1:], "--out", str(tmp_path / "qs")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "qs" / "student" / "model.safetensors").is_file()
