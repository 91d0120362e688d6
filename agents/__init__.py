"""Online learners behind one protocol (``agents/base.py``); importing this package registers the shipped ones."""

from agents.base import LEARNERS, OnlineLearner, Transition, make_learner, set_persona
from agents.icl_oracle import InContextOracle
from agents.none import NoLearning
from agents.sdpo import SDPOConfig, SDPOLearner

__all__ = ["LEARNERS", "InContextOracle", "NoLearning", "OnlineLearner", "SDPOConfig", "SDPOLearner", "Transition",
           "make_learner", "set_persona"]
