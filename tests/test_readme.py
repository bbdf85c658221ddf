"""Every Python snippet in the README runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_readme_snippet_runs(snippet, capsys):
    # Each snippet carries its own asserts (the poisoned text never comes back); it must also
    # print what it promises.
    exec(compile(snippet, str(README), "exec"), {})
    assert capsys.readouterr().out.strip()


def test_readme_names_the_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in text and "make demo" in text and "make test" in ci
