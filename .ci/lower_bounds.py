"""Print pip pins (``name==lower``) for the host packages of the ``all`` extra.

CI installs these to test the adapters on the oldest releases pyproject.toml
claims to support, so the claim and the test cannot drift apart.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

HOSTS = {"litellm", "langchain-core", "langchain"}

project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
pins = []
for req in project["optional-dependencies"]["all"]:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(,.*)?", req)
    if m and m.group(1).lower() in HOSTS:
        pins.append(f"{m.group(1)}=={m.group(2)}")
print(" ".join(pins))
