"""The README is the front door: its Python example runs, and its Quickstart matches CI."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README should show a Python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    callback = namespace["callback"]
    assert [r["name"] for r in callback.history] == ["mlp", "emb"]
    assert all(r["params"] < r["params_before"] for r in callback.history)
    assert "val AUC after swap" in capsys.readouterr().out


def test_quickstart_has_the_two_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    block = re.search(r"## Quickstart\n+```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    assert "make test" in (README.parent / ".ci" / "run").read_text()
