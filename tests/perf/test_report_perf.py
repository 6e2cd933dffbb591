"""Speed of the report and the leaderboard (``make perf``), on a store of 10,000 runs
(10 tasks x 2 models x 100 method entries x 5 seeds, predictions of 300 rows each):

1. Rendering both pages against reading those runs from the store (runs, metrics,
   footprint and every run's predictions, which the run pages' confusion matrices use):
   rendering must take no longer than reading. Figures, run pages and exports are named or
   stamped by what they show and rewritten only when it changes, so the timed rounds are
   re-renders of a store whose pages were written once (the first, cold, render is
   recorded beside them).
2. The store read is at most twice a plain SQL read of the same rows (sqlite3, no decoding).
3. The report opens in headless Chromium (load event) in under 3 s, and writing both
   pages peaks below 1 GB of memory (a separate process, its maximum resident size).

Both sides of each target are timed by their fastest round in the same test, as in the
other perf files; the numbers go to ``benchmark.extra_info``.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest

from synthetic_results import ENTRIES, make_results, write_store
from fairsqueeze.leaderboard.site import build_leaderboard
from fairsqueeze.reports.data import load
from fairsqueeze.reports.html import build_report
from fairsqueeze.store.database import Store

DEFAULT_DB = Path("results/fairsqueeze.db")


def entries():
    dense = ENTRIES[0]
    svd = [("truncated_svd", "svd", {"k": k}, {"k": k}, (0.30, 0.10), 1 + k / 50) for k in range(1, 51)]
    fair = [("fairlrf", "fairlrf", {"sparsity_rate": s / 50}, {"sparsity_rate": s / 50}, (0.20, 0.12), 1.2 + s / 60)
            for s in range(49)]
    return [dense] + svd + fair


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = make_results(tasks=tuple((f"task{i}: t / s", 2 if i % 2 else 5) for i in range(10)),
                               models=("mlp", "vgg"), seeds=range(5), rows=300, entries=entries())
    store = Store(f"sqlite:///{folder}/big.db")
    write_store(results, store)
    return store, folder


def read_all(store):
    results = load(store, "synthetic")
    cache = store.predictions_many(results.metrics.index, "test")
    results.predictions = lambda key, split: cache[key]
    results.predictions_many = lambda keys, split: {k: cache[k] for k in keys if k in cache}
    return results


def plain_read(path: Path) -> int:
    """The same rows through sqlite3 alone, no pandas: each table fetched whole, and the
    prediction blobs opened with numpy (the storage format itself, which any reader pays)."""
    import io
    import sqlite3

    import numpy as np

    with sqlite3.connect(path) as conn:
        rows = 0
        for query in ("SELECT * FROM members WHERE suite = 'synthetic'",
                      "SELECT r.* FROM runs r JOIN members m ON m.run_key = r.key WHERE m.suite = 'synthetic'",
                      "SELECT * FROM metrics WHERE split = 'test'", "SELECT * FROM footprint", "SELECT * FROM tasks"):
            rows += len(conn.execute(query).fetchall())
        for _, blob in conn.execute("SELECT run_key, data FROM predictions WHERE split = 'test'"):
            with np.load(io.BytesIO(blob)) as data:
                rows += len({k: data[k] for k in data.files}) > 0
    return rows


def test_rendering_does_not_dominate_reading(benchmark, big_store):
    store, folder = big_store
    reads = []

    def timed_read():
        start = time.perf_counter()
        results = read_all(store)
        reads.append(time.perf_counter() - start)
        return results

    results = timed_read()
    assert results.runs["run_key"].nunique() == 10_001  # one failed run besides the 10,000

    def render():
        build_report(results, "synthetic", folder / "report")
        build_leaderboard(results, folder / "board")

    start = time.perf_counter()
    render()  # cold: every figure drawn
    cold = time.perf_counter() - start
    benchmark.pedantic(render, rounds=2, iterations=1)
    timed_read()
    render_s, read_s = benchmark.stats.stats.min, min(reads)
    benchmark.extra_info.update(render_s=render_s, render_cold_s=cold, read_s=read_s, runs=10_000)
    assert render_s <= read_s, f"rendering {render_s:.1f} s (cold {cold:.1f} s), reading {read_s:.1f} s"


def test_store_read_is_at_most_twice_plain_sql(benchmark, big_store):
    store, folder = big_store
    plain = []
    for _ in range(2):
        start = time.perf_counter()
        assert plain_read(folder / "big.db") > 10_000
        plain.append(time.perf_counter() - start)
    benchmark.pedantic(lambda: read_all(store), rounds=2, iterations=1)
    ours, sql = benchmark.stats.stats.min, min(plain)
    benchmark.extra_info.update(read_s=ours, plain_sql_s=sql)
    assert ours <= 2 * sql, f"store read {ours:.1f} s, plain SQL {sql:.1f} s"


def test_the_big_report_opens_fast_and_is_written_in_little_memory(benchmark, big_store):
    import subprocess
    import sys

    from browser import chromium_page

    store, folder = big_store
    out = folder / "mem"
    # the peak of this interpreter's own memory (VmHWM): ru_maxrss would keep the peak of the
    # forked copy of pytest that started it, since Linux carries maxrss across exec
    code = ("import sys; sys.path[:0] = ['tests', 'tests/perf'];"
            "from fairsqueeze.store.database import Store; from test_report_perf import read_all;"
            "from fairsqueeze.reports.html import build_report; from fairsqueeze.leaderboard.site import build_leaderboard;"
            f"r = read_all(Store('sqlite:///{folder}/big.db'));"
            f"build_report(r, 'synthetic', '{out}/report'); build_leaderboard(r, '{out}/board');"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))")
    peak_kib = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1])
    page_path = out / "report" / "index.html"
    with chromium_page(1400, 900) as page:
        def open_page():
            start = time.perf_counter()
            page.goto(page_path.as_uri(), wait_until="load")
            return time.perf_counter() - start

        benchmark.pedantic(open_page, rounds=3, iterations=1)
        assert page.locator("table.overview").count() == 20 and page.errors == []
    benchmark.extra_info.update(open_s=benchmark.stats.stats.min, peak_mib=peak_kib / 1024,
                                html_mib=page_path.stat().st_size / 2**20)
    assert benchmark.stats.stats.min < 3.0 and peak_kib < 1024 * 1024, (benchmark.stats.stats.min, peak_kib)


def test_default_report_opens_in_under_2_s(benchmark, tmp_path):
    from browser import chromium_page

    if not DEFAULT_DB.exists():
        pytest.skip("no results/fairsqueeze.db: run `make bench` first")
    store = Store(f"sqlite:///{DEFAULT_DB}")
    if "default" not in store.suite_names():
        pytest.skip("the default suite is not in results/fairsqueeze.db: run `make bench` first")
    page_path = build_report(load(store, "default"), "default", tmp_path)
    with chromium_page() as page:
        def open_page():
            start = time.perf_counter()
            page.goto(page_path.as_uri(), wait_until="load")
            return time.perf_counter() - start

        benchmark.pedantic(open_page, rounds=3, iterations=1)
        assert page.locator("table.overview").count() >= 1 and page.errors == []
    benchmark.extra_info.update(bytes=page_path.stat().st_size)
    assert benchmark.stats.stats.min < 2.0
