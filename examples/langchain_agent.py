"""Tally in a LangChain v1 agent, offline: a decision for every model call.

An agent (``langchain.agents.create_agent``) answers order questions with two
tools: each run makes three model calls -- plan and call ``lookup_order``,
read it and call ``refund_policy``, then write the answer. Three simulated
chat models stand in for ChatOpenAI / ChatAnthropic (no API keys, no
network): gpt-4o-mini reads tool output well but plans badly; the other two
do both. ``TallyMiddleware`` routes each model call on its own envelope (the
first step is "reasoning", the steps after a tool result "summarisation"),
a scorer grades each answer, and Tally learns to give the cheap model the
easy steps only. A second agent shows ``ModelFallbackMiddleware`` inside
Tally while a provider is down: the calls still answer, and each attempt is
recorded against the model that made it.

Run:  python examples/langchain_agent.py
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import ModelFallbackMiddleware
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from tally_core import Tally
from tally_langchain import TallyMiddleware


@tool
def lookup_order(order_id: str) -> str:
    """Look up an order by id."""
    return f"order {order_id}: delivered 3 days ago, 49.00 EUR"


@tool
def refund_policy(days_since_delivery: int) -> str:
    """The refund rule for an order delivered this many days ago."""
    return "full refund within 14 days"


class SimulatedAgentModel(BaseChatModel):
    """Calls each bound tool in turn, then answers; right with probability ``skill[step]``."""

    model: str
    skill: dict[str, float]
    seed: int = 0
    down: bool = False
    _rng: random.Random

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self._rng = random.Random(self.seed)

    @property
    def _llm_type(self) -> str:
        return "simulated"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        if self.down:
            raise ConnectionError("provider unavailable")
        tools = kw.get("tools") or []
        done = sum(isinstance(m, ToolMessage) for m in messages)
        step = "summarisation" if done else "reasoning"
        good = self._rng.random() < self.skill[step]
        tin = count_tokens_approximately(messages)
        meta = {"model_name": self.model}
        if done < len(tools):
            args = {"order_id": "A17"} if done == 0 else {"days_since_delivery": 3}
            if not good:
                args = {}  # a bad plan: a call without its arguments
            msg = AIMessage("", tool_calls=[{"name": tools[done]["function"]["name"],
                                             "args": args, "id": f"c{done}", "type": "tool_call"}],
                            usage_metadata={"input_tokens": tin, "output_tokens": 12,
                                            "total_tokens": tin + 12}, response_metadata=meta)
        else:
            text = "Refund approved: 49.00 EUR." if good else "Please contact support."
            msg = AIMessage(text, usage_metadata={"input_tokens": tin, "output_tokens": 8,
                                                  "total_tokens": tin + 8}, response_metadata=meta)
        return ChatResult(generations=[ChatGeneration(message=msg)])


def step_envelope(state: dict[str, Any], runtime: Any) -> dict[str, Any]:
    """The envelope of each model call from the agent's state (never its text)."""
    after_tool = isinstance(state["messages"][-1], ToolMessage)
    return {"task_type": "summarisation" if after_tool else "reasoning", "quality_floor": 0.8}


def scorer(messages: Sequence[BaseMessage], answer: BaseMessage) -> float:
    """Grade each model call: in real life, schema checks, tests or a judge model."""
    if isinstance(answer, AIMessage) and answer.tool_calls:
        return 1.0 if all(c["args"] for c in answer.tool_calls) else 0.0
    return 1.0 if "approved" in str(answer.content) else 0.0


def models(seed: int) -> dict[str, SimulatedAgentModel]:
    return {
        "gpt-4o-mini": SimulatedAgentModel(
            model="gpt-4o-mini", skill={"reasoning": 0.55, "summarisation": 0.97}, seed=seed
        ),
        "claude-haiku-4-5": SimulatedAgentModel(
            model="claude-haiku-4-5", skill={"reasoning": 0.96, "summarisation": 0.97},
            seed=seed + 1,
        ),
        "gpt-4o": SimulatedAgentModel(
            model="gpt-4o", skill={"reasoning": 0.98, "summarisation": 0.98}, seed=seed + 2
        ),
    }


def main() -> None:
    tally = Tally(["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"], fallback="gpt-4o",
                  store=":memory:", seed=3)  # a directory (default ~/.tally) keeps the learning
    pool = models(seed=1)
    agent = create_agent(
        pool["gpt-4o"],
        [lookup_order, refund_policy],
        middleware=[TallyMiddleware(tally, pool, envelope=step_envelope, scorer=scorer)],
    )
    runs = 200
    for i in range(runs):
        agent.invoke({"messages": [HumanMessage(f"Can I get a refund for order A{i}?")]})
    tally.flush()
    rows = list(tally.ledger.rows())
    print(f"{runs} agent runs, {len(rows)} model calls, each routed and recorded once.")
    print("Where the last 50 runs' model calls went, per step:")
    for task in ("reasoning", "summarisation"):
        late = Counter(r["model"] for r in rows[-150:] if r["task_type"] == task)
        print(f"  {task:14} " + ", ".join(f"{m}: {n}" for m, n in late.most_common()))
    spent = sum(r["cost_usd"] for r in rows)
    gpt4o = tally.catalog["gpt-4o"]
    always = sum(gpt4o.estimate_cost_usd(r["input_tokens"], r["output_tokens"]) for r in rows)
    print(f"Spent ${spent:.5f} vs ${always:.5f} always on gpt-4o ({1 - spent / always:.0%} saved)")

    # A provider outage: ModelFallbackMiddleware inside TallyMiddleware moves a
    # failed call to gpt-4o; each attempt is recorded against its own model.
    pool["claude-haiku-4-5"].down = True
    before = len(rows)
    agent = create_agent(
        pool["gpt-4o"],
        [lookup_order, refund_policy],
        middleware=[TallyMiddleware(tally, pool, envelope=step_envelope, scorer=scorer),
                    ModelFallbackMiddleware(pool["gpt-4o"])],
    )
    answers = [agent.invoke({"messages": [HumanMessage("Refund for order B1?")]})["messages"][-1]
               for _ in range(10)]
    tally.flush()
    outage = list(tally.ledger.rows())[before:]
    failed = Counter(r["model"] for r in outage if not r["success"])
    print(f"During the outage: {len(answers)} runs answered; "
          f"failed attempts recorded: {dict(failed) or 'none'}; the last answer's decision: "
          f"{answers[-1].response_metadata['tally']['decision_id']} "
          f"served by {answers[-1].response_metadata['tally']['model']}")
    tally.close()


if __name__ == "__main__":
    main()
