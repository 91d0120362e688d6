"""Every ``python -m sdpo_env.<command>`` in the README and the pages under ``docs/`` (shell blocks and inline code)
parses and validates as written.

Each command's ``main`` runs on the README's arguments up to the point where its options are resolved and
checked; the function it would hand them to next (the one that loads a model, trains or samples) is replaced by one
that stops the command there. A renamed option, a removed learner or complaint direction, or a value out of range
in the README fails here with the command that has it. Commands that need what an earlier command wrote (a run
folder to resume, the user's own log file or learner) or that hold a placeholder are left out
(``EARLIER_OUTPUT``, ``PLACEHOLDERS``).
"""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the README first, then docs/

# Commands with an argument that names what an earlier command or the user makes, or with a placeholder, are not
# checked here (the README's example learner, my_learners, is checked in tests/test_bench.py).
EARLIER_OUTPUT = ("resume=", "branch=", "run=", "--adapter", "data=my_logs.jsonl")  # argument starts
PLACEHOLDERS = ("...", "path/to/", "my_learners:")  # anywhere in an argument


class Validated(BaseException):  # not an Exception: the commands' own error handling must not catch it
    """Raised where a command has resolved and checked its options, in place of the work that would come next."""


def stop(*_args: Any, **_kwargs: Any) -> None:
    raise Validated


def after(original: Callable[..., Any]) -> Callable[..., None]:
    """Runs ``original`` (which resolves and checks options), then stops the command."""
    def run_then_stop(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        raise Validated
    return run_then_stop


# command module -> [(attribute replaced, replacement factory)]: the first step after the options are checked.
STOPS: dict[str, list[tuple[str, Callable[[Callable[..., Any]], Callable[..., Any]]]]] = {
    "sdpo_env.run": [("prepare", after)],  # resolves the config, learner options and run folder
    "sdpo_env.bench": [("plan", after)],   # validates the grid and every run's options
    "sdpo_env.offline": [("data_stats", lambda _: stop)],
    "sdpo_env.reevaluate": [("reevaluate", lambda _: stop)],
    "sdpo_env.compare": [("compare", lambda _: stop)],
    "sdpo_env.heatmap": [("inspect", lambda _: stop)],
    "sdpo_env.tiny.build": [("build", lambda _: stop)],
    "sdpo_env.tiny.refine": [("refine", lambda _: stop)],  # after --focus and --repair are parsed
    "sdpo_env.tiny.soup": [("soup", lambda _: stop)],  # its folders are an earlier refine's: soup checks them
    # --model names a folder an earlier refine wrote: its check (model_folder_problem) is passed
    "sdpo_env.tiny.probe": [("model_folder_problem", lambda _: lambda _model: None), ("probe", lambda _: stop),
                            ("check_phrasings", lambda _: stop)],  # --persona: after the personas are loaded
    "sdpo_env.bench_step": [("random_model_folder", lambda _: stop), ("bench", lambda _: stop)],
    "sdpo_env.bench_sampling": [("random_model_folder", lambda _: stop), ("bench", lambda _: stop)],
    "sdpo_env.bench_selectivity": [("make_learner", after)],  # builds the SDPO learner from the options
    "sdpo_env.logs_sample": [("write", lambda _: stop)],
}


def readme_commands() -> list[str]:
    """The ``python -m sdpo_env...`` command lines of the README and of each page under ``docs/``: in ```bash blocks
    (continuation lines joined), then in inline code."""
    return [command for page in PAGES for command in page_commands(page.read_text(encoding="utf-8"))]


def page_commands(text: str) -> list[str]:
    """One page's ``python -m sdpo_env...`` command lines: in ```bash blocks, then in inline code."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line)  # a trailing comment
            start = line.find("python -m sdpo_env")
            if start >= 0 and not line.lstrip().startswith("#"):
                commands.append(line[start:].strip())
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [" ".join(span.split()) for span in re.findall(r"`(python -m sdpo_env\.\w[^`]*)`", prose)]
    return commands


def split(command: str) -> tuple[str, list[str]]:
    """``("sdpo_env.x", [args])`` for ``python -m sdpo_env.x args``."""
    words = shlex.split(command)
    return words[2], words[3:]


def checked(command: str) -> bool:
    return not any(word.startswith(EARLIER_OUTPUT) or any(p in word for p in PLACEHOLDERS)
                   for word in split(command)[1])


COMMANDS = list(dict.fromkeys(c for c in readme_commands() if checked(c)))  # each once, README first


def test_the_readme_commands_are_found() -> None:
    modules = {split(c)[0] for c in readme_commands()}
    assert {"sdpo_env.run", "sdpo_env.bench", "sdpo_env.tiny.refine"} <= modules
    assert modules <= set(STOPS), f"a README command with no stop point here: {sorted(modules - set(STOPS))}"
    assert len(COMMANDS) >= 50
    for page in PAGES[1:]:  # each page under docs/ holds commands, so a page the search missed would show here
        assert page_commands(page.read_text(encoding="utf-8")), f"no command found in {page.name}"
    assert [c for c in readme_commands() if not checked(c)]  # the README resumes runs: the skip list is in use


@pytest.mark.parametrize("command", COMMANDS)
def test_the_readme_command_is_valid(command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # relative run folders (out_dir=runs/...) land here
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):  # a user of the remote backends has these set
        monkeypatch.setenv(key, "sk-readme-check")
    name, args = split(command)
    # an absolute output folder (out=/tmp/bench-x) goes under tmp_path too: one left by an earlier run with other
    # settings would make the command refuse it, which says nothing about the README
    args = [re.sub(r"^(out|out_dir)=/", rf"\1={tmp_path}/", a) for a in args]
    module = importlib.import_module(name)
    for attribute, replacement in STOPS[name]:
        monkeypatch.setattr(module, attribute, replacement(getattr(module, attribute)))
    try:
        code = module.main(args)
    except SystemExit as exc:  # argparse: an unknown flag or a bad value
        pytest.fail(f"{command!r} exits with {exc.code} before its options are checked")
    except Validated:
        return
    pytest.fail(f"{command!r} returned {code!r} before its options were checked (see the error above)")


@pytest.mark.parametrize(("good", "bad"), [
    ("python -m sdpo_env.run scenario=flip agent.lr=1e-3",
     "python -m sdpo_env.run scenario=flip agent.learning_rate=1e-3"),
    ("python -m sdpo_env.bench scenario=flip agents=[sdpo,none] seeds=2",
     "python -m sdpo_env.bench scenario=flip agents=[sdpo,nobody] seeds=2"),
    ("python -m sdpo_env.tiny.refine --out /tmp/x --focus lists=false",
     "python -m sdpo_env.tiny.refine --out /tmp/x --focus lists=sometimes"),
    ("python -m sdpo_env.tiny.probe --per-complaint 8", "python -m sdpo_env.tiny.probe --per-complaints 8"),
    ("python -m sdpo_env.tiny.probe --persona fewer_lists", "python -m sdpo_env.tiny.probe --persona fewer_list"),
    ("python -m sdpo_env.tiny.soup /tmp/a /tmp/b --out /tmp/x --weights 3,1",
     "python -m sdpo_env.tiny.soup /tmp/a /tmp/b --out /tmp/x --weights 3,one"),
])
def test_a_wrong_option_in_a_command_fails_the_check(good: str, bad: str, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    test_the_readme_command_is_valid(good, monkeypatch, tmp_path)
    with pytest.raises(pytest.fail.Exception):
        test_the_readme_command_is_valid(bad, monkeypatch, tmp_path)
