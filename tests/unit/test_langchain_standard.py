"""LangChain's standard unit tests (langchain-tests) against ChatTally over fake children."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from tally_langchain import ChatTally  # noqa: E402
from tests.langchain_fakes import children, make_tally  # noqa: E402


class TestChatTallyUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatTally]:
        return ChatTally

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"tally": make_tally(), "models": children()}
