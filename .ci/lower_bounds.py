"""Print pip pins (``name==lower``) for the host packages of the ``all`` extra.

CI installs these to test the adapters on the oldest releases pyproject.toml
claims to support, so the claim and the test cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

HOSTS = {"litellm", "langchain-core", "langchain"}

# The `all = [...]` line of [project.optional-dependencies] (no TOML parser: Python 3.10 has none).
line = re.search(r"^all\s*=\s*\[(.*)\]\s*$", Path("pyproject.toml").read_text(), re.M)
if line is None:
    raise SystemExit("pyproject.toml: no one-line `all = [...]` extra")
pins = []
for req in re.findall(r'"([^"]+)"', line.group(1)):
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(,.*)?", req)
    if m and m.group(1).lower() in HOSTS:
        pins.append(f"{m.group(1)}=={m.group(2)}")
print(" ".join(pins))
