"""The Gymnasium environment: API contract, determinism, phases, vectorised populations."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sdpo_env
from sdpo_env.env import PersonalizationEnv
from sdpo_env.errors import SdpoEnvError
from sdpo_env.spaces import UnicodeText

CASUAL_SHORT = "Hey, just water it when the soil's dry, super easy stuff. Think of it like a sponge."
PRO_LONG = ("Specifically, the mechanism is osmotic: therefore, it is recommended to calibrate watering to the "
            "substrate. " * 6)


def _roll(env: gym.Env, seed: int, n: int, action: str = CASUAL_SHORT) -> list[tuple]:
    obs, info = env.reset(seed=seed)
    stream = [(obs["messages"], info["phase"])]
    for _ in range(n):
        obs, reward, terminated, truncated, info = env.step(action)
        stream.append((obs["messages"], reward, info["follow_up"], info["follow_up_kind"], terminated, truncated))
    return stream


def test_check_env_passes() -> None:
    for env_id in ("sdpo_env/Personalization-v0", "sdpo_env/Flip-v0", "sdpo_env/Complementary-v0"):
        check_env(gym.make(env_id).unwrapped)


def test_registered_ids_make() -> None:
    assert sdpo_env.ENV_ID in gym.registry
    env = gym.make("sdpo_env/Personalization-v0", scenario="flip")
    obs, info = env.reset(seed=0)
    assert obs["messages"][-1]["role"] == "user" and obs["interaction"] == 0
    assert info["persona"] == "concise_casual_beginner"


def test_same_seed_same_stream_and_different_seed_differs() -> None:
    a = _roll(gym.make("sdpo_env/Flip-v0"), seed=3, n=40)
    b = _roll(gym.make("sdpo_env/Flip-v0"), seed=3, n=40)
    c = _roll(gym.make("sdpo_env/Flip-v0"), seed=4, n=40)
    assert a == b
    assert a != c


def test_flip_changes_preferences_at_250() -> None:
    env = gym.make("sdpo_env/Flip-v0")
    env.reset(seed=0)
    rewards, phases = [], []
    for _ in range(500):
        _, reward, _, truncated, info = env.step(CASUAL_SHORT)
        rewards.append(reward)
        phases.append(info["phase"])
    assert phases.index(1) == 250 and set(phases[:250]) == {0}
    assert np.mean(rewards[:250]) == 1.0  # casual, short, beginner: satisfies the first persona
    assert np.mean(rewards[250:]) == 0.0  # and none of the flipped preferences
    assert truncated


def test_reward_and_follow_up_kinds() -> None:
    env = PersonalizationEnv(persona="concise_casual_beginner", n_interactions=400)
    env.reset(seed=0)
    kinds = {"complaint": 0, "satisfied": 0, "new_question": 0, "unrelated": 0}
    for _ in range(200):
        _, reward, _, _, info = env.step(PRO_LONG)
        assert reward == 0.0 and info["satisfaction"] == {"concise": False, "casual": False, "beginner": False}
        kinds[info["follow_up_kind"]] += 1
        assert info["relevant"] == (info["follow_up_kind"] == "complaint")
        if info["relevant"]:
            assert 1 <= len(info["addressed"]) <= 2
    assert kinds["satisfied"] == kinds["new_question"] == 0
    assert 0.04 < kinds["unrelated"] / 200 < 0.2  # the persona's rate is 0.1
    for _ in range(100):
        _, reward, _, _, info = env.step(CASUAL_SHORT)
        assert reward == 1.0 and info["follow_up_kind"] != "complaint"


def test_noisy_user_sends_unrelated_half_the_time() -> None:
    env = gym.make("sdpo_env/Noisy-v0")
    env.reset(seed=0)
    kinds = [env.step(PRO_LONG)[4]["follow_up_kind"] for _ in range(250)]
    assert 0.4 < kinds.count("unrelated") / 250 < 0.6


def test_multi_turn_follow_up_is_the_next_turn() -> None:
    env = PersonalizationEnv("multiturn")
    obs, _ = env.reset(seed=1)
    obs2, _, _, _, info = env.step(PRO_LONG)
    if info["follow_up_kind"] == "complaint":
        assert obs2["messages"][:-2] == obs["messages"]
        assert obs2["messages"][-2:] == ({"role": "assistant", "content": PRO_LONG},
                                         {"role": "user", "content": info["follow_up"]})
    turns = []
    for _ in range(30):
        obs, *_ = env.step(PRO_LONG)
        turns.append(sum(m["role"] == "user" for m in obs["messages"]))
    assert max(turns) == 3 and min(turns) == 1


def test_any_unicode_action_is_accepted() -> None:
    env = gym.make("sdpo_env/Personalization-v0")
    env.reset(seed=0)
    for text in ["", "😀🎉 emojis", "你好世界", "Ünïcödé\n\t", "x" * 5000]:
        assert env.action_space.contains(text)
        obs, *_ = env.step(text)
        assert env.observation_space.contains(obs)
    assert not UnicodeText(5).contains("toolong")


def test_errors_are_clear() -> None:
    env = PersonalizationEnv(persona="no_emojis", n_interactions=1)
    with pytest.raises(SdpoEnvError, match=r"call reset\(\) before step\(\)"):
        env.step("hi")
    env.reset(seed=0)
    with pytest.raises(SdpoEnvError, match="the action is the assistant's answer as a string, got int"):
        env.step(3)  # type: ignore[arg-type]
    env.step("hi")
    with pytest.raises(SdpoEnvError, match=r"the episode ended after 1 interactions; call reset\(\)"):
        env.step("hi")


def test_make_vec_runs_a_population_of_different_personas() -> None:
    envs = gym.make_vec("sdpo_env/Personalization-v0", num_envs=4)
    obs, info = envs.reset(seed=0)
    assert len(set(info["persona"])) == 4
    for _ in range(5):
        obs, rewards, terminated, truncated, info = envs.step(tuple([CASUAL_SHORT] * 4))
    assert rewards.shape == (4,) and len(info["follow_up"]) == 4
    assert rewards[0] == 1.0 and rewards[1] == 0.0  # concise_casual_beginner vs detailed_professional_expert
    envs.close()


def test_make_vec_with_named_personas_and_sync_mode() -> None:
    envs = gym.make_vec("sdpo_env/Personalization-v0", num_envs=2, personas=["no_emojis", "likes_emojis"])
    _, info = envs.reset(seed=0)
    assert list(info["persona"]) == ["no_emojis", "likes_emojis"]
    same = gym.make_vec("sdpo_env/Flip-v0", num_envs=2, vectorization_mode="sync")
    _, info = same.reset(seed=0)
    assert list(info["persona"]) == ["concise_casual_beginner"] * 2


def test_render_ansi() -> None:
    env = PersonalizationEnv(persona="no_emojis", render_mode="ansi")
    env.reset(seed=0)
    env.step("Answer 😀")
    text = env.render()
    assert "[assistant] Answer 😀" in text


def test_state_snapshot_continues_the_stream_exactly() -> None:
    env = PersonalizationEnv("multiturn")
    env.reset(seed=5)
    for _ in range(7):
        env.step(PRO_LONG)
    state = env.get_state()
    expected = [env.step(PRO_LONG) for _ in range(10)]
    other = PersonalizationEnv("multiturn")
    other.reset(seed=999)
    other.set_state(state)
    assert [other.step(PRO_LONG) for _ in range(10)] == expected
