"""``--jobs N``: independent runs, and the trials of different studies, computed in N
processes of this machine.

The processes compute (each with its own :class:`~fairsqueeze.engine.execute.Computer`, given the
tasks this process planned, keeping each dense reference it loads) and send each result back;
only the calling process writes the store, so SQLite works as well as PostgreSQL. On a CPU
the processes are forked: they start at once, with the planned tasks and every registered
plugin already in memory. With CUDA they are spawned (a CUDA context does not survive a fork).

A job process never outlives the calling process, however that one ends (a SIGKILL included):
the kernel kills it when its parent dies (Linux's parent-death signal). A job process that is
lost (killed, out of memory) breaks the pool: a fresh pool computes its runs once more, with the
same seeds, before they are reported failed.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import multiprocessing
import os
import signal
import traceback
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterator

import torch

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.core.registry import registered_modules
from fairsqueeze.engine.execute import Computed, Computer
from fairsqueeze.spec.entries import RunSpec
from fairsqueeze.datasets.base import TaskData

log = logging.getLogger("fairsqueeze")
_computer: list[Computer] = []  # the one Computer of a job process


def cores() -> int:
    """The number of cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_jobs() -> int:
    """``$FAIRSQUEEZE_JOBS`` when set (a positive integer, else a one-line error), else the
    number of cores this process may use."""
    text = os.environ.get("FAIRSQUEEZE_JOBS", "").strip()
    if not text:
        return cores()
    if not (text.isdigit() and int(text) > 0):
        raise ConfigError(f"FAIRSQUEEZE_JOBS={os.environ['FAIRSQUEEZE_JOBS']!r}: expected a positive number of"
                          " processes")
    return int(text)


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere a no-op),
    and end now if the parent died before the request was made (this process was re-parented)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def compute_threads(device: torch.device) -> int:
    """PyTorch's intra-op threads of a process that computes runs. One on a CPU: a reduction
    split over another number of threads adds in another order, and the stored metrics must not
    depend on --jobs; the cores are used by processes instead. On a GPU, PyTorch's default."""
    return 1 if device.type == "cpu" else torch.get_num_threads()


def _start(parent: int, data_root: str, device: str, threads: int, log_level: int, tasks: dict,
           plugins: list[str]) -> None:
    from fairsqueeze.core.progress import set_quiet

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is the calling process's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked process inherits the caller's handler
    torch.set_num_threads(threads)
    logging.basicConfig(level=log_level, format="%(levelname)s: %(message)s")
    set_quiet(True)
    for module in plugins:  # a spawned process starts empty: the caller's plugins register again
        importlib.import_module(module)
    _computer.clear()  # a forked process inherits the caller's (empty) list
    _computer.append(Computer(torch.device(device), Path(data_root), tasks))


def _compute(spec: RunSpec, info: dict | None) -> Computed:
    return _computer[0].run(spec, info)


def trial_in_process(spec: RunSpec, params: dict, seed: int):
    """One trial of a study computed in a job process: (result, None, dense row) or (None,
    (line, traceback), dense row); the calling process tells the study."""
    from fairsqueeze.engine.execute import execute_trial

    computer = _computer[0]
    try:
        reference, dense_row = computer.reference(spec)
    except Exception as exc:
        return None, (f"dense reference failed: {type(exc).__name__}: {exc}", traceback.format_exc()), None
    try:
        result = execute_trial(spec.method.name, params, seed, computer.task(spec), reference, computer.device,
                               spec.method.tune, spec.method.protect)
    except Exception as exc:
        return None, (f"{type(exc).__name__}: {exc}", traceback.format_exc()), dense_row
    return result, None, dense_row


@contextlib.contextmanager
def process_pool(jobs: int, data_root: Path, device: torch.device,
                 tasks: dict[str, TaskData] | None = None) -> Iterator[ProcessPoolExecutor]:
    """``jobs`` processes, each with its own Computer; work still queued is cancelled
    when the block ends early (an interrupt)."""
    start = (os.getpid(), str(data_root), str(device), compute_threads(device), logging.getLogger().level,
             dict(tasks or {}), registered_modules())
    context = multiprocessing.get_context("fork" if device.type == "cpu" else "spawn")
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_start, initargs=start)
    try:
        yield pool
    except BaseException:  # an interrupt or an error here: stop the computations, do not wait for them
        # SIGKILL, not SIGTERM: a process forked a moment ago still has this process's SIGTERM
        # handler until its initializer runs, and would print that handler's traceback. A job
        # process holds nothing to save: only this process writes the store.
        for process in list((pool._processes or {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def interleaved(specs: list[RunSpec]) -> list[RunSpec]:
    """Runs in turn from each dense reference: processes that start together train different
    references instead of waiting for the same one."""
    groups: dict[str, list[RunSpec]] = defaultdict(list)
    for spec in specs:
        groups[spec.dense_key].append(spec)
    queues = list(groups.values())
    out = []
    while queues:
        out += [q.pop(0) for q in queues]
        queues = [q for q in queues if q]
    return out


def compute_in_processes(specs: list[RunSpec], jobs: int, data_root: Path, device: torch.device,
                         info: dict[str, dict] | None = None,
                         tasks: dict[str, TaskData] | None = None) -> Iterator[tuple[RunSpec, Computed]]:
    """Yield (spec, computed) for every spec as the ``jobs`` processes finish them. Leaving the
    loop early (an interrupt) cancels what has not started. When a job process is lost, the
    runs the broken pool still held go to a fresh pool; a run lost twice is reported failed."""
    todo, lost = interleaved(specs), set()
    while todo:
        broken = []
        with process_pool(min(jobs, len(todo)), data_root, device, tasks) as pool:
            futures = {pool.submit(_compute, spec, (info or {}).get(spec.key)): spec for spec in todo}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    spec = futures[future]
                    try:
                        computed = future.result()
                    except BrokenProcessPool:
                        if spec.key not in lost:
                            broken.append(spec)
                            continue
                        computed = Computed(spec.key, error="its job process was lost twice (killed, or out of"
                                                            " memory); the run was computed in a fresh process once")
                    yield spec, computed
        if broken:
            log.warning("a job process was lost; %d run(s) it held are computed again in fresh processes", len(broken))
        lost |= {spec.key for spec in broken}
        todo = broken
