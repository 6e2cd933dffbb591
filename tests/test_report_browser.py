"""The report and the leaderboard as a user sees them, in headless Chromium."""
import warnings

import pytest

from browser import chromium_page, screenshot_dir
from synthetic_results import make_results, write_store
from fairsqueeze.reports.data import load
from fairsqueeze.store import Store
from fairsqueeze.leaderboard.site import build_leaderboard
from fairsqueeze.reports.html import build_report


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    out = tmp_path_factory.mktemp("pages")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = make_results(tasks=(("digits: parity / planted", 2), ("faces: age / race", 5)))
    store = Store(f"sqlite:///{out}/stored.db")
    write_store(made, store)
    results = load(store, "synthetic")  # the pages read a real store, as the CLI does
    return build_report(results, "synthetic", out / "report"), build_leaderboard(results, out / "board"), out


def column_values(page, table: str, index: int) -> list[str]:
    return page.eval_on_selector_all(
        f"{table} tbody tr:not([hidden])", f"rows => rows.map(r => r.children[{index}].getAttribute('data-v'))")


def header_index(page, table: str, text: str) -> int:
    return page.eval_on_selector_all(f"{table} thead th", f"ths => ths.findIndex(t => t.textContent.trim() === {text!r})")


def test_report_in_the_browser(pages):
    report, _, out = pages
    with chromium_page() as page:
        page.goto(report.as_uri())
        assert page.locator("table.comparison").count() == 2
        for kind in ("pareto", "cost", "ablation"):
            images = page.locator(f"img.{kind}")
            assert images.count() >= 2
            assert images.first.evaluate("img => img.complete && img.naturalWidth > 100")
        table = "#" + page.locator("table.comparison").first.get_attribute("id")
        col = header_index(page, table, "accuracy")
        page.click(f"{table} thead th >> nth={col}")
        ascending = [float(v) for v in column_values(page, table, col)]
        assert ascending == sorted(ascending) and len(ascending) == 7
        page.click(f"{table} thead th >> nth={col}")
        assert [float(v) for v in column_values(page, table, col)] == sorted(ascending, reverse=True)

        page.fill(f"[data-filter-table='{table[1:]}']", "svd")
        visible = page.eval_on_selector_all(f"{table} tbody tr:not([hidden])", "rows => rows.map(r => r.textContent)")
        assert len(visible) == 2 and all("svd" in t for t in visible)

        assert not page.locator("body.show-detail-groups").count()
        page.check("input[data-toggle='detail-groups']")
        assert page.locator(f"{table} tbody tr:not([hidden]) td.detail-groups").first.is_visible()

        link = page.locator(f"{table} tbody tr:not([hidden]) td.lbl a").first
        target = link.get_attribute("href")
        link.click()
        assert page.evaluate("location.hash") == target
        assert page.locator(f"{target} details").evaluate("d => d.open")  # unfolded by the link
        assert page.locator(f"{target} table").first.is_visible()
        assert page.locator("#failed details").count() == 1 and not page.locator("#failed details").evaluate("d => d.open")
        page.goto(report.as_uri())
        page.screenshot(path=str(screenshot_dir(out) / "report.png"))
        assert page.errors == []


def test_leaderboard_in_the_browser(pages):
    _, board, out = pages
    with chromium_page() as page:
        page.goto(board.as_uri())
        rows = "#board-table tbody tr:not([hidden])"
        metrics = page.eval_on_selector_all(rows, "rs => rs.map(r => r.dataset.metric)")
        assert metrics and set(metrics) == {"equalized odds"}  # preset filter
        page.select_option("#board .controls select[data-filter-attr='tier']", "1.3–1.7")
        tiers = page.eval_on_selector_all(rows, "rs => rs.map(r => r.dataset.tier)")
        assert set(tiers) == {"1.3–1.7"} and len(tiers) == 3
        col = header_index(page, "#board-table", "mean rank")
        page.click(f"#board-table thead th >> nth={col}")
        ranks = [float(v) for v in column_values(page, "#board-table", col)]
        assert ranks == sorted(ranks)
        # two cells: no Friedman test or CD diagram, and the page says why
        assert page.locator("img.cd").count() == 0
        assert page.locator("#friedman-table", has_text="2 common (task, model) cell(s): a rank test needs ≥ 5").count() == 1
        assert page.locator("#verdicts-table tbody tr").count() >= 6
        assert page.locator("#twins-table tbody tr").count() >= 2
        page.click(f"{rows} >> nth=0 >> td >> nth={col} >> a")
        cell_anchor = page.evaluate("location.hash")
        run_link = page.locator(f"{cell_anchor} td a").first
        target = run_link.get_attribute("href")
        run_link.click()
        assert page.evaluate("location.hash") == target and page.locator(target).is_visible()
        page.goto(board.as_uri())
        page.screenshot(path=str(screenshot_dir(out) / "leaderboard.png"), full_page=True)
        assert page.errors == []


def test_tuning_section_in_the_browser(tuned_db, tmp_path):
    from fairsqueeze.cli import main

    db, name = tuned_db
    assert main(["report", name, "--db", db, "--out", str(tmp_path / "report")]) == 0
    with chromium_page() as page:
        page.goto((tmp_path / "report" / "index.html").as_uri())
        page.click("nav a[href='#tuning']")
        assert page.locator("#tuning h2").is_visible() and page.locator("#tuning table.budgets").is_visible()
        figure = page.locator("#tuning img.tuning-fronts")
        assert figure.count() == 1 and figure.is_visible()
        assert figure.evaluate("img => img.complete && img.naturalWidth > 800")
        assert page.locator("#tuning .note.unequal").is_visible()
        page.set_viewport_size({"width": 1200, "height": 1400})  # long sampler and policy lists wrap
        assert page.eval_on_selector("#tuning table.budgets", "t => t.getBoundingClientRect().right <= innerWidth")
        page.set_viewport_size({"width": 1500, "height": 1400})
        policies = page.eval_on_selector_all("#tuning table.selected tbody tr td.policy", "tds => tds.map(t => t.textContent)")
        assert sorted(set(policies)) == ["best_utility", "fairest_above(0.5)", "fairest_within(0.05)", "utopia"]
        page.locator("#tuning details.fronts summary").first.click()
        assert page.locator("#tuning table.front").first.is_visible()
        page.locator("#tuning").screenshot(path=str(screenshot_dir(tmp_path) / "tuning.png"))
        link = page.locator("#tuning table.selected tbody tr td.lbl a").first
        target = link.get_attribute("href")
        link.click()
        assert page.evaluate("location.hash") == target and page.locator(f"{target} details").evaluate("d => d.open")
        assert page.errors == []
