"""``python -m sdpo_env.run scenario=NAME [key=value ...]``: drive a simulated user through a scenario.

This is the foundation version of the runner: the environment, the scenario, the configuration and the run
folder are real, but the assistant is a fixed scripted policy (canned answers in several styles) until the
learners land. It shows the user's side: rewards per phase and the follow-ups the user sends.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sdpo_env.config import config_to_dict, load_run_config
from sdpo_env.env import PersonalizationEnv
from sdpo_env.errors import SdpoEnvError

# Answers spanning the style axes, so the scripted policy satisfies some users and annoys others.
SCRIPTED_ANSWERS = (
    "Hey! Super easy: just give it a go and see, it's basically like riding a bike. 😀",
    "Therefore, it is recommended to proceed systematically. Additionally, one should calibrate the approach to the "
    "specific constraints involved, since the optimal configuration depends on the threshold in practice.",
    "Great question! Here's the short version:\n- Start small.\n- Keep at it.\n- Check your progress.\n"
    "Hope this helps!",
    "In simple terms, think of it like learning to cook: start with one easy recipe and repeat it until it feels "
    "natural, then add another one.",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a scenario from command-line ``key=value`` arguments; returns the exit code."""
    console = Console()
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        console.print(__doc__)
        return 0
    try:
        config, scenario = load_run_config(args)
        env = PersonalizationEnv(scenario, n_interactions=config.n_interactions,
                                 simulator_kwargs={"max_complaints": config.simulator.max_complaints})
    except SdpoEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)  # plain print: rich would re-wrap the lines users copy
        return 2
    out_dir = Path(config.out_dir or f"runs/{datetime.now():%Y%m%d-%H%M%S}-{scenario.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    rng = np.random.default_rng(config.seed)
    obs, info = env.reset(seed=config.seed)
    rewards: dict[int, list[float]] = {}
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (out_dir / "interactions.jsonl").open("w") as log, Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{scenario.name}: scripted policy", total=env.n_interactions)
        for t in range(env.n_interactions):
            answer = SCRIPTED_ANSWERS[int(rng.integers(len(SCRIPTED_ANSWERS)))]
            obs_next, reward, _, truncated, info = env.step(answer)
            rewards.setdefault(info["phase"], []).append(reward)
            log.write(json.dumps({"interaction": t, "phase": info["phase"], "prompt": obs["messages"][-1]["content"],
                                  "response": answer, "follow_up": info["follow_up"],
                                  "follow_up_kind": info["follow_up_kind"], "reward": reward}) + "\n")
            obs = obs_next
            progress.update(task, advance=1, description=f"{scenario.name} phase {info['phase']}: scripted policy")
    table = Table(title=f"{scenario.name}: scripted policy (no learning yet)")
    for column in ("phase", "persona", "interactions", "mean reward"):
        table.add_column(column)
    for phase in scenario.phases:
        if phase.index in rewards:
            values = rewards[phase.index]
            table.add_row(str(phase.index), phase.persona.name, str(len(values)), f"{np.mean(values):.3f}")
    console.print(table)
    summary = {"scenario": scenario.name, "interactions": env.n_interactions, "seconds": time.perf_counter() - start,
               "mean_reward_per_phase": {str(k): float(np.mean(v)) for k, v in rewards.items()}}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"run folder: {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
