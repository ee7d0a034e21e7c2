"""Tools backed by the configured model, registered only when there is one."""

from __future__ import annotations

from dendrite.llm.client import ChatLLM
from dendrite.tools import Reliability, ToolRegistry

GENERATE_TOOL = "generate_text"


def register_llm_tools(registry: ToolRegistry, llm: ChatLLM) -> None:
    """Add ``generate_text``, which answers generative goals with the model."""

    async def generate_text(prompt: str, system: str | None = None) -> str:
        """Answer a request that needs writing or explaining rather than a tool.

        Args:
            prompt: what to write or answer
            system: optional instructions for the model
        """
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        return await llm.complete(messages, temperature=0.3)

    registry.register_function(
        generate_text,
        name=GENERATE_TOOL,
        reliability=Reliability.MEDIUM,
        tags=("llm", "generative"),
        replace=GENERATE_TOOL in registry,
    )
