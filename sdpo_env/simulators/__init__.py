"""User simulators: ``rules`` (offline, from the persona's phrasings); LLM backends plug into the same protocol."""

from sdpo_env.simulators.base import SIMULATORS, FollowUp, FollowUpRequest, UserSimulator
from sdpo_env.simulators.rules import RuleSimulator

__all__ = ["SIMULATORS", "FollowUp", "FollowUpRequest", "RuleSimulator", "UserSimulator"]

from sdpo_env.simulators import llm as _llm  # noqa: F401  registers openai, anthropic, hf
