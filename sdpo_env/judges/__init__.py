"""Pairwise judges (``rules`` offline; LLM backends plug into the same protocol) and win-rate evaluation."""

from sdpo_env.judges.base import JUDGES, VERDICTS, Comparison, Judgement, PairwiseJudge
from sdpo_env.judges.rules import RuleJudge, is_valid

__all__ = ["JUDGES", "VERDICTS", "Comparison", "Judgement", "PairwiseJudge", "RuleJudge", "is_valid"]

from sdpo_env.judges import llm as _llm  # noqa: F401  registers openai, anthropic, hf
