"""The README's Python example runs as written, on the embedded model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.embedded

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    hive, losses = namespace["hive"], namespace["losses"]
    assert set(losses) == {"support-bot", "billing-bot"} and all(v > 0 for v in losses.values())
    assert hive.agents == ["support-bot", "billing-bot"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "torch.Size([1, 49152])"
