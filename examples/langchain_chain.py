"""Tally in a LangChain chain, offline: route, learn, and report.

Three simulated chat models stand in for ChatOpenAI / ChatAnthropic (no API
keys, no network). gpt-4o-mini is good at summaries but weak at debugging;
the other two are good at both. A scorer grades each answer, and ChatTally
learns, per task type, which is the cheapest model that is good enough.

Run:  python examples/langchain_chain.py
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate

from tally_core import Tally
from tally_langchain import ChatTally, collect_decisions


class SimulatedChatModel(BaseChatModel):
    """Answers well with probability ``skill[task]``; reports usage like a provider."""

    model: str
    skill: dict[str, float]
    seed: int = 0
    _rng: random.Random

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self._rng = random.Random(self.seed)

    @property
    def _llm_type(self) -> str:
        return "simulated"

    def _answer(self, messages: list[BaseMessage]) -> AIMessage:
        task = str(messages[0].content).split(":", 1)[0]  # the system prompt names the task
        good = self._rng.random() < self.skill.get(task, 0.5)
        text = "A correct, complete answer." if good else "A vague answer."
        tin = count_tokens_approximately(messages)
        return AIMessage(
            text,
            usage_metadata={"input_tokens": tin, "output_tokens": 6, "total_tokens": tin + 6},
            response_metadata={"model_name": self.model},
        )

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages))])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Iterator[ChatGenerationChunk]:
        msg = self._answer(messages)
        for word in str(msg.content).split(" "):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))
        # Usage on the last chunk, as providers do with stream usage on.
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", usage_metadata=msg.usage_metadata,
                                   response_metadata=msg.response_metadata)
        )


def scorer(messages: Sequence[BaseMessage], answer: BaseMessage) -> float:
    """Grade an answer: in real life, a JSON check, a test run or a judge model."""
    return 1.0 if "correct" in str(answer.content) else 0.0


def main() -> None:
    tally = Tally(
        ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"],
        fallback="gpt-4o",
        store=":memory:",  # a directory (default ~/.tally) keeps what was learned
        seed=3,
    )
    chat = ChatTally(
        tally=tally,
        models={
            "gpt-4o-mini": SimulatedChatModel(
                model="gpt-4o-mini", skill={"summarisation": 0.97, "code-debug": 0.55}, seed=1
            ),
            "claude-haiku-4-5": SimulatedChatModel(
                model="claude-haiku-4-5", skill={"summarisation": 0.97, "code-debug": 0.96}, seed=2
            ),
            "gpt-4o": SimulatedChatModel(
                model="gpt-4o", skill={"summarisation": 0.98, "code-debug": 0.97}, seed=3
            ),
        },
        envelope={"task_type": "summarisation", "quality_floor": 0.8},
        scorer=scorer,
    )
    prompt = ChatPromptTemplate.from_messages([("system", "{task}: be brief"), ("user", "{text}")])
    chain = prompt | chat | StrOutputParser()

    # The per-call envelope rides in the config's metadata.
    debug = {"metadata": {"tally": {"task_type": "code-debug", "quality_floor": 0.8}}}
    with collect_decisions() as decisions:
        for i in range(150):
            chain.invoke({"task": "summarisation", "text": f"document {i}"})
            "".join(chain.stream({"task": "code-debug", "text": f"traceback {i}"}, debug))
        chain.batch([{"task": "summarisation", "text": t} for t in ("a", "b")])
        asyncio.run(chain.ainvoke({"task": "summarisation", "text": "async"}))
    tally.flush()

    print("Where the last 50 calls of each task type went:")
    for task in ("summarisation", "code-debug"):
        counts = Counter(d.model for d in decisions if d.task_type == task)
        last = Counter([d.model for d in decisions if d.task_type == task][-50:])
        print(f"  {task:14} " + ", ".join(f"{m}: {last[m]}" for m in counts))
    print()
    print(decisions[-1].explain())
    print()
    rows = list(tally.ledger.rows())
    spent = sum(r["cost_usd"] for r in rows)
    gpt4o = tally.catalog["gpt-4o"]
    always = sum(gpt4o.estimate_cost_usd(r["input_tokens"], r["output_tokens"]) for r in rows)
    print(f"{len(rows)} calls recorded; spent ${spent:.5f} vs ${always:.5f} always on gpt-4o "
          f"({1 - spent / always:.0%} saved)")
    # Late feedback joins by decision id (here: a user's thumbs-down).
    tally.feedback(decisions[-1].decision_id, quality=0.0, slugs=["incomplete"])
    tally.close()


if __name__ == "__main__":
    main()
