"""The runner's evaluations: what one computes, and a worker process that computes them beside the interaction loop.

On a CPU the loop samples one answer at a time, and a token of the tiny model is mostly Python overhead on one core,
while an evaluation samples 64 held-out answers in a batch. A second process can take the evaluations: the loop sends
the learner's state after ``k`` interactions and goes on interacting while the worker samples, judges and returns the
rows, which the loop writes in order. The worker builds the same learner and evaluator from the same configuration
and loads that state, so its rows are the rows the loop would have computed (``tests/test_evaluation.py`` compares
the two files byte for byte). ``eval.background`` chooses: ``auto`` uses the worker on a CPU with at least two cores,
a judge that calls no LLM service (the cost meter and call cache belong to the loop's process), runs of at least
:data:`AUTO_MIN_INTERACTIONS` interactions (the worker takes a few seconds to start) and weights that take at most
:data:`AUTO_MAX_MEMORY_SHARE` of the machine's memory (the worker holds a second copy).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from agents import set_persona
from agents.base import OnlineLearner
from agents.icl_oracle import InContextOracle
from sdpo_env.config import LLM_BACKENDS, RunConfig
from sdpo_env.errors import SdpoEnvError
from sdpo_env.judges.evaluate import WinRateEvaluator
from sdpo_env.personas import Persona
from sdpo_env.scenarios import Phase, Scenario

# Shorter runs evaluate in the loop: the worker's start (imports, loading the model) would cost more than it saves.
AUTO_MIN_INTERACTIONS = 100
# The worker loads its own copy of the policy: ``auto`` leaves it off for weights above this share of the memory.
AUTO_MAX_MEMORY_SHARE = 0.125


def evaluation_seed(seed: int, k: int) -> int:
    """Seeds the policy's answers in the evaluation after ``k`` interactions of a run with ``seed``."""
    return seed * 100_003 + k


def phases_to_judge(scenario: Scenario, k: int, n: int) -> list[Phase]:
    """The phases whose preferences an evaluation after ``k`` of ``n`` interactions judges under: those the policy
    last learned from, and at a persona change also the new ones (at the run's end too, so that a branch that goes
    on from there has the evaluation an unbroken run has)."""
    phases = [scenario.phase_at(max(k - 1, 0))]
    if 0 < k <= n and scenario.phase_at(k).index != phases[0].index:
        phases.append(scenario.phase_at(k))
    return phases


class Evaluation:
    """The evaluation after ``k`` interactions: one metrics row per judged phase, with the in-context oracle's
    figures for the same persona when there is an oracle.

    Args:
        scenario: The run's scenario.
        n: The run's number of interactions.
        seed: The run's seed.
        learner: The learner whose answers are judged (its state is the one after ``k`` interactions).
        evaluator: Judges answers against the frozen base model's.
        oracle: The in-context oracle, or ``None``.
    """

    def __init__(self, scenario: Scenario, n: int, seed: int, learner: OnlineLearner, evaluator: WinRateEvaluator,
                 oracle: InContextOracle | None):
        self.scenario, self.n, self.seed = scenario, n, seed
        self.learner, self.evaluator, self.oracle = learner, evaluator, oracle
        self._oracle_metrics: dict[str, dict[str, float]] = {}

    def rows(self, k: int, summary: dict[str, float]) -> list[dict[str, Any]]:
        """The metrics rows after ``k`` interactions, each extended with ``summary`` (the loop's window means)."""
        rows = []
        for phase in phases_to_judge(self.scenario, k, self.n):
            set_persona(self.learner, phase.persona)
            metrics, _ = self.evaluator.evaluate(lambda c, s: self.learner.answer(c, seed=s), phase.persona,
                                                 seed=evaluation_seed(self.seed, k))
            if self.oracle is not None:
                metrics.update(self.oracle_metrics(phase.persona))
            rows.append({"interaction": k, "phase": phase.index, "persona": phase.persona.name, **metrics, **summary})
        return rows

    def oracle_metrics(self, persona: Persona) -> dict[str, float]:
        """The oracle never learns: with a fixed seed its score changes only with the persona, so compute it once."""
        oracle = self.oracle
        assert oracle is not None
        if persona.name not in self._oracle_metrics:
            oracle.set_persona(persona)
            with self.evaluator.policy.base_model():
                reference, _ = self.evaluator.evaluate(lambda c, s: oracle.answer(c, seed=s), persona,
                                                       seed=evaluation_seed(self.seed, 99_991), surprise=False)
            self._oracle_metrics[persona.name] = {f"oracle/{m}": reference[m]
                                                  for m in ("win_rate", "win_rate_excl_ties", "sat/all")}
        return self._oracle_metrics[persona.name]


def in_background(config: RunConfig, n: int, device: torch.device, weight_bytes: int) -> bool:
    """Whether the run's evaluations go to an :class:`EvaluationWorker` (``eval.background``; ``auto``: see the
    module's docstring). ``weight_bytes``: the policy's weights, of which the worker holds a second copy."""
    if config.eval.background != "auto":
        return config.eval.background == "always"
    memory = physical_memory()
    return (device.type == "cpu" and (os.cpu_count() or 1) >= 2 and config.judge.backend not in LLM_BACKENDS
            and n >= AUTO_MIN_INTERACTIONS and memory is not None and weight_bytes <= memory * AUTO_MAX_MEMORY_SHARE)


def physical_memory() -> int | None:
    """The machine's memory in bytes, where the system tells (Linux, macOS)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


@contextmanager
def evaluation_worker(build: Callable[[], Evaluation], *, enabled: bool) -> Iterator[EvaluationWorker | None]:
    """An :class:`EvaluationWorker` (``None`` unless ``enabled``) that takes one of the loop's torch threads.

    While a worker evaluates, each of the loop's idle OpenMP threads spins on a core the worker needs: on two cores,
    two threads in the loop made a token three times slower in the loop and 1.6x slower in the worker. With one
    thread each, both ran at full speed (the tiny model's arithmetic was the same with one thread as with two).
    """
    if not enabled:
        yield None
        return
    with EvaluationWorker(build, take_thread=True) as worker:
        yield worker


class WorkerStopped(SdpoEnvError):
    """The evaluation worker is gone (killed, out of memory) during an evaluation; ``job`` is that evaluation's
    request, which :func:`evaluate_job` can redo in the loop's process."""

    def __init__(self, message: str, job: bytes):
        super().__init__(message)
        self.job = job


@dataclass
class Done:
    """A finished evaluation: its rows, the evaluator's state after it, the worker's seconds."""

    rows: list[dict[str, Any]]
    evaluator: dict[str, Any]
    seconds: float


class EvaluationWorker:
    """A second process that runs one evaluation at a time, given the learner's state.

    Args:
        build: Builds the worker's :class:`Evaluation` (in the worker; a picklable module-level callable, e.g. a
            ``functools.partial``), from the same configuration as the loop's.
        take_thread: Takes one of this process's torch threads while the worker lives; it is given back when the
            worker is closed, discarded or found stopped (the loop then evaluates on all its threads).
    """

    def __init__(self, build: Callable[[], Evaluation], *, take_thread: bool = False):
        self._loop_threads = torch.get_num_threads()
        if take_thread:
            torch.set_num_threads(max(1, self._loop_threads - 1))
        context = multiprocessing.get_context("spawn")  # not fork: the loop's process has threads (torch, rich)
        self._connection, theirs = context.Pipe()
        self._process = context.Process(target=_serve, args=(build, theirs), name="sdpo_env-evaluation", daemon=True)
        # Ctrl-C in a terminal reaches the whole process group; it is the loop's to handle (a checkpoint, then it
        # stops the worker). Ignored when the worker starts, it stays ignored while Python starts there.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._process.start()
        except BaseException:
            self._give_back_thread()
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
        theirs.close()
        self.pending: int | None = None  # the interaction of the evaluation in progress
        self._job = b""  # its request, kept to redo it elsewhere if the worker stops

    def submit(self, k: int, learner_state: dict[str, Any], evaluator_state: dict[str, Any],
               summary: dict[str, float]) -> None:
        """Starts the evaluation after ``k`` interactions; the worker must be free (see :meth:`result`)."""
        assert self.pending is None, "one evaluation at a time"
        # a copy: the loop goes on training the tensors in ``learner_state``
        self._job = _saved({"k": k, "learner": learner_state, "evaluator": evaluator_state, "summary": summary})
        try:
            self._connection.send_bytes(self._job)
        except OSError:
            raise self._stopped(k) from None
        self.pending = k

    def ready(self) -> bool:
        """Whether the evaluation in progress has finished (so :meth:`result` returns at once)."""
        return self.pending is not None and self._connection.poll()

    def result(self) -> Done:
        """Waits for the evaluation in progress and returns it.

        Raises:
            SdpoEnvError: the evaluation failed in the worker (with its traceback).
            WorkerStopped: the worker is gone (its ``job`` can be redone with :func:`evaluate_job`).
        """
        assert self.pending is not None, "no evaluation in progress"
        k, self.pending = self.pending, None
        try:
            reply = pickle.loads(self._connection.recv_bytes())
        except (EOFError, OSError):  # OSError: killed with our request unread
            raise self._stopped(k) from None
        if "error" in reply:
            raise SdpoEnvError(f"the evaluation after {k} interactions failed in the evaluation worker:\n"
                               f"{reply['error']}")
        return Done(reply["rows"], reply["evaluator"], reply["seconds"])

    def discard(self) -> None:
        """Drops the evaluation in progress without waiting for it or reading it (the worker may be gone already).
        This stops the worker: it cannot take another evaluation."""
        self.pending = None
        self._process.kill()
        self._process.join()
        self._give_back_thread()

    def _give_back_thread(self) -> None:
        torch.set_num_threads(self._loop_threads)

    def _stopped(self, k: int) -> WorkerStopped:
        self._process.join(timeout=5)
        self._give_back_thread()
        return WorkerStopped(f"the evaluation worker stopped (exit code {self._process.exitcode}) during the "
                             f"evaluation after {k} interactions", self._job)

    def close(self) -> None:
        """Stops the worker (an evaluation in progress is dropped)."""
        try:
            self._connection.send_bytes(b"")
        except OSError:  # already gone
            pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._connection.close()
        self._give_back_thread()

    def __enter__(self) -> EvaluationWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _serve(build: Callable[[], Evaluation], connection: Any) -> None:
    """The worker's loop: one request (learner state, interaction, window summary) in, one reply out."""
    torch.set_num_threads(1)  # the loop keeps the other core(s)
    warnings.simplefilter("ignore")  # the loop's process has shown the same warnings while loading the same parts
    hf_logging.disable_progress_bar()  # the weights' loading bar would cut through the loop's progress line
    evaluation: Evaluation | None = None
    failed: str | None = None
    try:
        evaluation = build()
    except Exception:
        failed = "while starting:\n" + traceback.format_exc()
    while True:
        try:
            request = connection.recv_bytes()
        except (EOFError, OSError):  # the loop's process is gone
            return
        if not request:
            return
        reply = {"error": failed} if evaluation is None else _evaluate(evaluation, request)
        try:
            connection.send_bytes(pickle.dumps(reply))
        except OSError:
            return


def _evaluate(evaluation: Evaluation, request: bytes) -> dict[str, Any]:
    """The worker's reply to one request: the rows, or the error's traceback."""
    try:
        done = _rows_for(evaluation, request)
    except Exception:
        return {"error": traceback.format_exc()}
    return {"rows": done.rows, "evaluator": done.evaluator, "seconds": done.seconds}


def _rows_for(evaluation: Evaluation, request: bytes) -> Done:
    """Evaluates the learner state that ``request`` (a :meth:`EvaluationWorker.submit`) carries."""
    started = time.perf_counter()
    job = torch.load(io.BytesIO(request), weights_only=False)
    evaluation.learner.load_state_dict(job["learner"])
    evaluation.evaluator.load_state_dict(job["evaluator"])
    rows = evaluation.rows(job["k"], job["summary"])
    return Done(rows, evaluation.evaluator.state_dict(), time.perf_counter() - started)


def evaluate_job(evaluation: Evaluation, job: bytes) -> Done:
    """Runs in this process the evaluation a stopped worker was given (``WorkerStopped.job``); the learner goes back
    to its state before, so the run goes on as if the worker had returned the same rows (it would have)."""
    current = _saved(evaluation.learner.state_dict())
    try:
        return _rows_for(evaluation, job)
    finally:
        evaluation.learner.load_state_dict(torch.load(io.BytesIO(current), weights_only=False))


def _saved(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
