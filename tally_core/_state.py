"""Old home of ``tally_core.learning``, kept so modules that import it from here
(the stores) keep working; new code imports ``tally_core.learning``."""

from __future__ import annotations

from tally_core.learning import (
    EMPTY_VIEW,
    TASK_CELL,
    ArmView,
    LearnParams,
    Update,
    apply_updates,
    arm_view,
    new_task_state,
)

__all__ = [
    "EMPTY_VIEW",
    "TASK_CELL",
    "ArmView",
    "LearnParams",
    "Update",
    "apply_updates",
    "arm_view",
    "new_task_state",
]
