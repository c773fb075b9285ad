"""The README's two commands stay true: CI runs the test command verbatim, the main job's tool exists."""

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


def test_main_job_command_runs():
    main = readme_commands()[0]
    job = main.split("&&")[-1].strip().split()
    assert job[0] == "slimbert"
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", *job[1:]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "25,359,104" in done.stdout
