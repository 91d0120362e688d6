"""Online learners behind one protocol (``agents/base.py``); importing this package registers the shipped ones."""

from agents.base import LEARNERS, OnlineLearner, Transition, make_learner, set_persona
from agents.dpo_hindsight import DPOHindsight
from agents.icl_memory import ICLMemory
from agents.icl_oracle import InContextOracle
from agents.none import NoLearning
from agents.reinforce_oracle import ReinforceOracle
from agents.sdpo import SDPOConfig, SDPOLearner
from agents.sft_hindsight import SFTHindsight

__all__ = ["LEARNERS", "DPOHindsight", "ICLMemory", "InContextOracle", "NoLearning", "OnlineLearner",
           "ReinforceOracle", "SDPOConfig", "SDPOLearner", "SFTHindsight", "Transition", "make_learner",
           "set_persona"]
