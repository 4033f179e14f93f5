"""The lab, apart from the library: scenarios, the simulator and its baseline
routers (``sim``), replays of logged evaluation tables (``replay``) and the
benchmark command (``bench``). Nothing in the library imports it."""

from __future__ import annotations
