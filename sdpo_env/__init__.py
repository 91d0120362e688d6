"""sdpo_env: a personalization simulation environment for language models that learn from their users.

Importing the package registers the Gymnasium environments:

>>> import gymnasium as gym, sdpo_env
>>> env = gym.make("sdpo_env/Personalization-v0", scenario="flip")
"""

from __future__ import annotations

import gymnasium as gym

from sdpo_env.errors import SdpoEnvError

__version__ = "0.1.0"
ENV_ID = "sdpo_env/Personalization-v0"

# One generic id plus one per shipped scenario, so `gym.make("sdpo_env/Flip-v0")` works without kwargs.
_IDS = {ENV_ID: {}, "sdpo_env/Single-v0": {"scenario": "single"}, "sdpo_env/Flip-v0": {"scenario": "flip"},
        "sdpo_env/Complementary-v0": {"scenario": "complementary"}, "sdpo_env/Noisy-v0": {"scenario": "noisy"}}
for _id, _kwargs in _IDS.items():
    if _id not in gym.registry:
        gym.register(_id, entry_point="sdpo_env.env:PersonalizationEnv",
                     vector_entry_point="sdpo_env.env:make_population", kwargs=_kwargs)

__all__ = ["ENV_ID", "SdpoEnvError", "__version__"]
