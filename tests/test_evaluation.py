"""The evaluation worker: what fails in it is reported, and when ``eval.background=auto`` uses it.

That the worker's rows equal the loop's, and that runs with it resume exactly, is in ``tests/test_run.py``.
"""

from __future__ import annotations

import io
import multiprocessing
import sys
import time
from functools import partial

import pytest
import torch

from sdpo_env.config import RunConfig, load_run_config
from sdpo_env.errors import ConfigError, SdpoEnvError
from sdpo_env.evaluation import (
    AUTO_MIN_INTERACTIONS,
    Evaluation,
    EvaluationWorker,
    WorkerStopped,
    evaluation_worker,
    in_background,
    physical_memory,
)


def _broken_build(message: str) -> Evaluation:
    raise ValueError(message)


def test_a_worker_that_cannot_start_says_why() -> None:
    with EvaluationWorker(partial(_broken_build, "no such model folder: /nowhere")) as worker:
        worker.submit(25, {}, {}, {})
        with pytest.raises(SdpoEnvError) as caught:
            worker.result()
    text = str(caught.value)
    assert text.startswith("the evaluation after 25 interactions failed in the evaluation worker:\nwhile starting:")
    assert "ValueError: no such model folder: /nowhere" in text
    assert worker.pending is None


def test_a_worker_that_died_is_reported_with_its_exit_code() -> None:
    worker = EvaluationWorker(partial(_broken_build, "unused"))
    worker._process.kill()
    worker._process.join()
    with pytest.raises(WorkerStopped) as caught:
        worker.submit(50, {}, {}, {"sdpo/loss": 0.5})
    assert str(caught.value) == ("the evaluation worker stopped (exit code -9) during the evaluation after 50 "
                                 "interactions")
    job = torch.load(io.BytesIO(caught.value.job), weights_only=False)  # what the loop redoes in its own process
    assert job == {"k": 50, "learner": {}, "evaluator": {}, "summary": {"sdpo/loss": 0.5}}
    worker.close()


def test_the_worker_takes_one_of_the_loops_threads_until_it_stops_or_dies() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with evaluation_worker(partial(_broken_build, "unused"), enabled=True) as worker:
            assert worker is not None and torch.get_num_threads() == 2
        assert torch.get_num_threads() == 3
        with evaluation_worker(partial(_broken_build, "unused"), enabled=False) as worker:
            assert worker is None and torch.get_num_threads() == 3
        with evaluation_worker(_stalling_build, enabled=True) as worker:  # type: ignore[arg-type]
            assert worker is not None
            worker.submit(75, {}, {}, {})
            worker._process.kill()
            with pytest.raises(WorkerStopped):
                worker.result()
            assert torch.get_num_threads() == 3  # the loop evaluates from now on: on all its threads
        with evaluation_worker(_stalling_build, enabled=True) as worker:  # type: ignore[arg-type]
            assert worker is not None and torch.get_num_threads() == 2
            worker.submit(75, {}, {}, {})
            worker.discard()  # an interrupted run drops the evaluation and stops the worker
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_a_worker_that_cannot_be_started_gives_its_thread_back(monkeypatch) -> None:
    def refuse(self) -> None:
        raise OSError("no more processes")

    monkeypatch.setattr(multiprocessing.get_context("spawn").Process, "start", refuse)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with pytest.raises(OSError, match="no more processes"):
            with evaluation_worker(partial(_broken_build, "unused"), enabled=True):
                pass
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


class _Stalls:
    """Stands in for an Evaluation whose evaluation never ends."""

    def __init__(self) -> None:
        self.learner = self.evaluator = self

    def load_state_dict(self, state: dict) -> None:
        time.sleep(600)


def _stalling_build() -> _Stalls:
    return _Stalls()


def test_a_worker_that_dies_during_an_evaluation_is_reported() -> None:
    worker = EvaluationWorker(_stalling_build)  # type: ignore[arg-type]
    worker.submit(75, {}, {}, {})
    worker._process.kill()
    with pytest.raises(WorkerStopped, match=r"^the evaluation worker stopped \(exit code -9\) during the evaluation "
                                            r"after 75 interactions$") as caught:
        worker.result()
    assert torch.load(io.BytesIO(caught.value.job), weights_only=False)["k"] == 75
    worker.close()


def test_discarding_an_evaluation_stops_the_worker_at_once_even_if_it_is_gone() -> None:
    worker = EvaluationWorker(_stalling_build)  # type: ignore[arg-type]
    worker.submit(75, {}, {}, {})
    started = time.perf_counter()
    worker.discard()  # the evaluation would take 600 s
    assert worker.pending is None and not worker._process.is_alive() and time.perf_counter() - started < 60
    worker.discard()  # a second time, or on a dead worker: nothing to do, no error
    worker.close()


def _config(*args: str) -> RunConfig:
    return load_run_config(list(args))[0]


GIB = 2**30


@pytest.mark.parametrize(("args", "n", "device", "cores", "weights", "memory", "expected"), [
    ((), AUTO_MIN_INTERACTIONS, "cpu", 2, 7_000_000, 24 * GIB, True),  # the default run on this project's machines
    ((), AUTO_MIN_INTERACTIONS - 1, "cpu", 2, 7_000_000, 24 * GIB, False),  # too short to pay for the worker's start
    ((), 500, "cpu", 1, 7_000_000, 24 * GIB, False),  # one core: the worker would only take turns with the loop
    ((), 500, "cuda", 16, 7_000_000, 24 * GIB, False),
    ((), 500, "cpu", 2, 3 * GIB, 24 * GIB, True),
    ((), 500, "cpu", 2, 6 * GIB, 24 * GIB, False),  # a 1.5B model in float32: a second copy is too much
    ((), 500, "cpu", 2, 7_000_000, None, False),  # memory unknown
    (("judge.backend=openai", "judge.model=gpt-4o-mini"), 500, "cpu", 2, 7_000_000, 24 * GIB, False),
    (("eval.background=never",), 500, "cpu", 2, 7_000_000, 24 * GIB, False),
    (("eval.background=always",), 10, "cuda", 1, 6 * GIB, None, True),
])
def test_auto_uses_the_worker_for_long_cpu_runs_with_a_local_judge(monkeypatch, args, n, device, cores, weights,
                                                                    memory, expected) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    monkeypatch.setattr("sdpo_env.evaluation.physical_memory", lambda: memory)
    assert in_background(_config(*args), n, torch.device(device), weights) is expected


@pytest.mark.skipif(sys.platform == "win32", reason="no sysconf: auto keeps evaluations in the loop there")
def test_the_machines_memory_is_known_here() -> None:
    memory = physical_memory()
    assert memory is not None and memory > GIB


def test_always_refuses_a_judge_that_calls_an_llm() -> None:
    with pytest.raises(ConfigError) as caught:
        _config("eval.background=always", "judge.backend=anthropic", "judge.model=claude-haiku-4-5")
    assert [(p.key, p.message) for p in caught.value.problems] == [(
        "eval.background", "'always' needs a judge without LLM calls (judge.backend=anthropic keeps its cost meter and "
                           "call cache in the loop's process); use auto or never")]
