"""Run independent pipeline stages at once: ``pipeline.jobs`` worker processes (`--jobs N`).

Small models use few cores well: on a 2-core box two one-thread trainings finish sooner
than the same two run one after the other with two threads each. Each worker is a spawned
process (no fork: the parent may hold OpenMP threads) that imports the stack once, sets
``torch.set_num_threads(cores // jobs)`` and then runs the stages it is sent, one at a time.
The parent starts a stage as soon as every stage in its ``after`` list has finished, in plan
order, and writes the markers; a stage that fails stops the run: the other workers are
terminated, and their stages keep ``done: false`` markers, so a rerun resumes them.

This module imports torch only inside the workers (``segsllm --help`` stays light).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from segsllm.errors import SegsllmError


def threads_per_job(jobs: int) -> int:
    """CPU threads each worker may use: this process's cores shared out, at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (the child's traceback added as a note), else a
    SegsllmError that names it: the parent re-raises what the stage raised."""
    note = "".join(traceback.format_exception(exc))
    if not isinstance(exc, SegsllmError):
        exc.add_note(f"in the pipeline worker process:\n{note}")
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return SegsllmError(f"{type(exc).__name__}: {exc}")


def _worker_main(conn: Any, threads: int) -> None:
    """A worker's loop: receive ``(run, cfg, resume)``, run it, send back the outcome."""
    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent went away
            return
        if task is None:
            return
        run, cfg, resume = task
        cpu_started = time.process_time()
        try:
            run(cfg, resume)
        except BaseException as exc:  # every failure, interrupts included, goes back to the parent
            conn.send(("error", _portable(exc)))
            continue
        conn.send(("done", time.process_time() - cpu_started))


@dataclass
class _Worker:
    process: Any
    conn: Any
    busy: Any = None  # (stage, started) while a stage runs


def run_stages_parallel(stages: list[Any], jobs: int, *, start: Callable[[Any], bool],
                        finish: Callable[[Any, bool, float, float], None]) -> None:
    """Run ``stages`` (in plan order, each with ``name``, ``after``, ``run``, ``cfg``) on up to
    ``jobs`` workers. ``start(stage)`` is called in this process just before a stage starts
    and returns its ``resume`` flag; ``finish(stage, resume, seconds, cpu_seconds)`` after it
    succeeded. A stage starts once no pending stage is in its ``after`` list. A stage that is
    the only one that can run (nothing else running or ready: data, tokenizer, the bench)
    runs in this process with every core, and its output stays on this process's console."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    pending = list(stages)
    names = {st.name for st in stages}
    finished: set[str] = set()
    ctx = mp.get_context("spawn")
    threads = threads_per_job(jobs)
    workers: list[_Worker] = []
    resumes: dict[str, bool] = {}

    def can_start(st: Any) -> bool:
        return all(a in finished or a not in names for a in st.after)

    def idle_worker() -> _Worker | None:
        w = next((x for x in workers if not x.busy), None)
        if w is None and len(workers) < jobs:  # started on first need: a chain of stages spawns none
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child_end, threads), daemon=True)
            proc.start()
            child_end.close()
            w = _Worker(proc, parent_end)
            workers.append(w)
        return w

    try:
        while pending or any(w.busy for w in workers):
            ready = [st for st in pending if can_start(st)]
            if len(ready) == 1 and not any(w.busy for w in workers):
                st = ready[0]
                pending.remove(st)
                resume = start(st)
                started, cpu_started = time.perf_counter(), time.process_time()
                st.run(st.cfg, resume)
                finished.add(st.name)
                finish(st, resume, time.perf_counter() - started, time.process_time() - cpu_started)
                continue
            for st in ready:
                w = idle_worker()
                if w is None:
                    break
                pending.remove(st)
                resumes[st.name] = start(st)
                w.conn.send((st.run, st.cfg, resumes[st.name]))
                w.busy = (st, time.perf_counter())
            busy = [w for w in workers if w.busy]
            if not busy:
                waiting = ", ".join(f"{st.name} (after {', '.join(st.after)})" for st in pending)
                raise SegsllmError(f"pipeline stages wait on stages that never finish: {waiting}")
            for conn in wait([w.conn for w in busy]):
                w = next(x for x in busy if x.conn is conn)
                stage, started = w.busy
                try:
                    status, payload = conn.recv()
                except EOFError:
                    w.process.join(5)
                    raise SegsllmError(f"stage {stage.name}: its worker process died "
                                       f"(exit code {w.process.exitcode}); rerun to resume it") from None
                if status == "error":
                    raise payload
                w.busy = None
                finished.add(stage.name)
                finish(stage, resumes[stage.name], time.perf_counter() - started, float(payload))
    finally:
        for w in workers:
            if w.busy is None and w.process.is_alive():
                with contextlib.suppress(OSError):
                    w.conn.send(None)
            else:
                w.process.terminate()  # a stage still running when another failed: it resumes next time
        for w in workers:
            w.process.join(10)
            if w.process.is_alive():
                w.process.kill()


__all__ = ["run_stages_parallel", "threads_per_job"]
