"""Test-wide setup; at the root so the packages' doctests get it too."""

from __future__ import annotations

import os

# LiteLLM must never try to download its price map in tests.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
