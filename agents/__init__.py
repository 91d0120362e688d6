"""Online learners behind one protocol (``agents/base.py``); importing this package registers the shipped ones."""

from agents.base import LEARNERS, OnlineLearner, Transition, make_learner
from agents.sdpo import SDPOConfig, SDPOLearner

__all__ = ["LEARNERS", "OnlineLearner", "SDPOConfig", "SDPOLearner", "Transition", "make_learner"]
