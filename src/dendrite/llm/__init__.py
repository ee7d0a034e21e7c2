"""LLM providers: any OpenAI-compatible chat server, configured or not at all.

With nothing configured Dendrite stays offline and says so where a model
would have been needed; it never pretends a model answered.
"""

from dendrite.llm.client import (
    ChatLLM,
    LLMConfig,
    LLMError,
    LLMFormatError,
    LLMTier,
    LLMUsage,
    llm_tier,
    llm_usage,
)

__all__ = [
    "ChatLLM",
    "LLMConfig",
    "LLMError",
    "LLMFormatError",
    "LLMTier",
    "LLMUsage",
    "llm_tier",
    "llm_usage",
]
