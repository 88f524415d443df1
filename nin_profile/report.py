"""Profile → the files of an output folder (names → contents); writing them is files.py's job.

Charts are rendered by matplotlib, which spends a few tenths of a second on each (most of it
laying out text): more than the whole analysis of a model. Where there is more than one core a
`ChartPool` renders them in worker processes; a static run starts them before the analysis, so
that their import of matplotlib runs beside it.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

from nin_profile.files import PROFILE_JSON, to_json
from nin_profile.render.csv import layers_csv
from nin_profile.render.markdown import render_report
from nin_profile.render.names import chart_plan
from nin_profile.results import Profile

DPI = 100
MAX_CHART_WORKERS = 8  # a report of the six default models has 11 charts

ChartDone = Callable[[int, int], None]
"""Told (charts done, charts in all) as each chart is rendered."""
ChartRenderer = Callable[[Profile, ChartDone | None], dict[str, bytes] | None]


def chart_png(profile: Profile, file: str) -> bytes:
    """One chart of the report as PNG bytes (matplotlib is imported only here)."""
    from nin_profile.render.charts import chart

    buffer = io.BytesIO()
    chart(profile, file).savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def chart_files(profile: Profile) -> list[str]:
    """The report's chart files, in the order it shows them."""
    return [spec.file for spec in chart_plan(profile)]


def chart_pngs(
    profile: Profile, on_chart: ChartDone | None = None, done: Mapping[str, bytes] | None = None
) -> dict[str, bytes]:
    """Every chart of the report as PNG bytes, rendered one after another in this process
    (those in `done` taken as they are)."""
    files = chart_files(profile)
    pngs = dict(done or {})
    for file in files:
        if file not in pngs:
            pngs[file] = chart_png(profile, file)
            if on_chart:
                on_chart(len(pngs), len(files))
    return {file: pngs[file] for file in files}


def report_files(
    profile: Profile, pngs: Mapping[str, bytes] | None = None
) -> dict[str, str | bytes]:
    """profile.json, layers.csv, report.md and, given `pngs` (see `chart_pngs`), the charts it
    links; without them the report links no chart."""
    files: dict[str, str | bytes] = {
        PROFILE_JSON: to_json(profile.to_dict()),
        "layers.csv": layers_csv(profile),
        "report.md": render_report(profile, charts=pngs is not None),
    }
    if pngs is not None:
        files.update({file: pngs[file] for file in chart_files(profile)})
    return files


def _slowest_first(profile: Profile) -> list[str]:
    """Chart files, those with most text to lay out first (a layer chart has a row per layer),
    so that no worker starts a long chart when the others are about to finish."""
    rows = {m.name: len(m.layers) for m in profile.models}
    plan = sorted(chart_plan(profile), key=lambda spec: -rows.get(spec.model or "", 0))
    return [spec.file for spec in plan]


def _start_worker() -> None:
    """Import matplotlib now; leave Ctrl-C to the main process, which stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import nin_profile.render.charts  # noqa: F401


@contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """SIGINT blocked while workers start: they inherit the mask until `_start_worker` ignores
    it, and a Ctrl-C pressed meanwhile reaches this process when the block ends. Where signals
    cannot be masked (not the main thread, no pthread_sigmask) this does nothing."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_sigmask"
    ):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _ready() -> None:
    """A task that makes the pool start one more worker now."""


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ChartPool:
    """Worker processes (spawned: nothing of torch's state is copied) that import matplotlib as
    soon as they start and then render charts in parallel. Use as a context manager."""

    def __init__(self, workers: int) -> None:
        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
        )
        try:
            with _ctrl_c_held():
                for _ in range(workers):  # started now, not at the first chart
                    self._executor.submit(_ready)
        except BaseException:
            self._executor.shutdown(wait=False, cancel_futures=True)
            raise

    def __enter__(self) -> ChartPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def render(self, profile: Profile, on_chart: ChartDone | None = None) -> dict[str, bytes]:
        """Every chart of the report as PNG bytes, as `chart_pngs` makes them."""
        files = chart_files(profile)
        pngs: dict[str, bytes] = {}
        try:
            futures: dict[Future[bytes], str] = {
                self._executor.submit(chart_png, profile, file): file
                for file in _slowest_first(profile)
            }
            for future in as_completed(futures):
                pngs[futures[future]] = future.result()
                if on_chart:
                    on_chart(len(pngs), len(files))
        except BrokenProcessPool:  # a worker died (killed, out of memory): the rest here
            return chart_pngs(profile, on_chart, done=pngs)
        return {file: pngs[file] for file in files}


def _no_charts(profile: Profile, on_chart: ChartDone | None) -> None:
    return None


@contextmanager
def chart_renderer(charts: bool = True) -> Iterator[ChartRenderer]:
    """`chart_pngs`, or the `render` of a ChartPool with a worker per core where there are more;
    without `charts`, a renderer that makes none (and starts no process)."""
    workers = min(usable_cores(), MAX_CHART_WORKERS)
    if not charts or workers < 2:
        yield chart_pngs if charts else _no_charts
        return
    try:
        pool = ChartPool(workers)
    except (OSError, ImportError):  # no process could start (limits; no sem_open)
        yield chart_pngs
        return
    with pool:
        yield pool.render
