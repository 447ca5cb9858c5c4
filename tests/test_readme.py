"""The README's example runs as written, in a fresh interpreter."""
import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_example_runs_as_written():
    with open(README) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks, "the README has no python example"
    out = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kind, method, size = out.stdout.split()[:3]
    assert (kind, size) == ("private-anon", "8000000") and method in ("copy", "native")


def test_readme_opens_with_the_two_commands():
    with open(README) as f:
        text = f.read()
    first = re.search(r"```sh\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert first == ["pip install . && pvmmap demo",
                     "pip install '.[test]' && python3 -m pytest -q"]
    ci = os.path.join(os.path.dirname(__file__), "..", ".ci", "run")
    if os.path.exists(ci):          # a checkout, not the sdist
        with open(ci) as f:
            assert "python3 -m pytest -q" in f.read()
