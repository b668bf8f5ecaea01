"""The report page as a reader sees it: headless Chromium (Playwright) at 1400 px wide.

Checks what a screenshot would show: nothing wider than the page or than its own box (tables,
figures), every figure loaded, shown whole and large enough to read, the main table first after
the warnings, sortable tables, no console error and no request to the network. Screenshots of
the page and of every figure are saved under ``$TMPDIR/modtransfer-report-screenshots``.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modtransfer.reports import build_report
from modtransfer.reports.analysis import Settings
from modtransfer.run.store import Store
from tests.test_figures import with_evaluations
from tests.test_reports import TASK_INFO, TASKS, make_row, report_run  # noqa: F401  (report_run: a fixture)

SCREENSHOT_DIR = Path(tempfile.gettempdir()) / "modtransfer-report-screenshots"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH, HEIGHT = 1400, 900
#: Sections that may come before the main table: the loud warnings at the top of the page.
WARNING_IDS = ("too-few-seeds", "not-learned")
#: A figure shown at less than this share of its pixel width has text too small to read (8 pt at 150 dpi).
MIN_SCALE = 0.5


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Playwright, shared by the pages of this module."""
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is absent (pip install playwright)")
    SCREENSHOT_DIR.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser: Any, run_dir: Path, name: str) -> tuple[Any, list[str]]:
    """``run_dir``'s report at 1400 x 900, screenshotted (first screen, whole page), and its errors."""
    errors: list[str] = []
    pg = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("request", lambda r: errors.append(f"request {r.url}") if r.url.startswith("http") else None)
    pg.goto((run_dir / "report" / "index.html").as_uri())
    pg.wait_for_load_state("load")
    pg.screenshot(path=str(SCREENSHOT_DIR / f"{name}_top.png"))
    pg.screenshot(path=str(SCREENSHOT_DIR / f"{name}_full.png"), full_page=True)
    return pg, errors


@pytest.fixture(scope="module")
def page(browser: Any, report_run: Path) -> Iterator[tuple[Any, list[str]]]:  # noqa: F811
    """The report of a study with variants (tests/test_reports.py's run) open in the browser."""
    pg, errors = _open(browser, report_run, "report")
    yield pg, errors
    pg.close()


@pytest.fixture(scope="module")
def sweep_page(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[str]]]:
    """The report of a baseline-only learning-rate x init sweep (no variant), with periodic evaluation."""
    run = tmp_path_factory.mktemp("sweep")
    store = Store(run / "results.sqlite")
    for lr, init, task, seed in itertools.product((1e-3, 1e-2), ("normal", "xavier_uniform"), TASKS, range(2)):
        mean = TASKS[task][2] * (1.0 + (0.05 if lr > 5e-3 else 0.0))
        store.record(with_evaluations(make_row("baseline", task, seed, mean + 0.01 * seed,
                                               hparams={"lr": lr, "init": init})))
    store.set_meta("tasks", TASK_INFO)
    build_report(run, wandb_mode="disabled", settings=Settings(n_boot=100))
    pg, errors = _open(browser, run, "sweep")
    yield pg, errors
    pg.close()


OVERFLOW = """() => {
  const out = [];
  const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                    (e.querySelector('table[id]') ? ' > table#' + e.querySelector('table[id]').id : '');
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth) { out.push(`page: ${root.scrollWidth} > ${root.clientWidth}`); }
  document.querySelectorAll('main, section, .scroll, table, figure').forEach(e => {
    if (e.scrollWidth > e.clientWidth + 1) { out.push(`${name(e)}: ${e.scrollWidth} > ${e.clientWidth}`); }
  });
  return out;
}"""

FIGURES = """() => Array.from(document.querySelectorAll('figure')).map(f => {
  const img = f.querySelector('img');
  const box = f.getBoundingClientRect(), r = img.getBoundingClientRect();
  const style = getComputedStyle(f);
  const inner = box.width - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)
                - parseFloat(style.borderLeftWidth) - parseFloat(style.borderRightWidth);
  const main = document.querySelector('main').getBoundingClientRect();
  return {file: img.dataset.file, complete: img.complete, natural: img.naturalWidth, shown: r.width,
          inner: inner, left: r.left, right: r.right, mainLeft: main.left, mainRight: main.right};
})"""


def test_report_page_in_headless_chromium(page: tuple[Any, list[str]], report_run: Path) -> None:  # noqa: F811
    pg, errors = page
    table = pg.locator("#verdict-table")
    assert table.is_visible() and table.locator("tbody tr").count() == 4
    images = pg.locator("img")
    assert images.count() == len(list((report_run / "report").glob("*.png")))
    for i in range(images.count()):
        img = images.nth(i)
        img.scroll_into_view_if_needed()
        assert img.is_visible() and img.evaluate("e => e.complete && e.naturalWidth > 0"), i
    head = pg.locator("#effects-table th").first
    column = "rows => rows.map(r => r.cells[0].textContent)"
    head.click()
    names = pg.locator("#effects-table tbody tr").evaluate_all(column)
    assert names == sorted(names) and len(set(names)) == 4
    head.click()
    assert pg.locator("#effects-table tbody tr").evaluate_all(column) == sorted(names, reverse=True)
    assert not errors, errors


PAGES = pytest.mark.parametrize("which", ["page", "sweep_page"])


@PAGES
def test_nothing_overflows_at_1400_px(which: str, request: pytest.FixtureRequest) -> None:
    """Neither the page nor any section, table box or figure is wider than the space it is given."""
    pg, errors = request.getfixturevalue(which)
    assert not errors, errors
    assert pg.evaluate("() => window.innerWidth") == WIDTH
    overflowing = pg.evaluate(OVERFLOW)
    assert not overflowing, "wider than their box at 1400 px: " + "; ".join(overflowing)


@PAGES
def test_every_figure_loads_fits_its_box_and_stays_readable(which: str, request: pytest.FixtureRequest) -> None:
    pg, _ = request.getfixturevalue(which)
    from PIL import Image, ImageStat

    figures = pg.evaluate(FIGURES)
    assert figures, "the report shows no figure"
    for k, f in enumerate(figures):
        assert f["complete"] and f["natural"] > 0, f"{f['file']} did not load"
        assert f["shown"] <= f["inner"] + 1, f"{f['file']} is wider than its figure box"
        assert f["mainLeft"] - 1 <= f["left"] and f["right"] <= f["mainRight"] + 1, f"{f['file']} leaves the page"
        assert f["shown"] >= MIN_SCALE * f["natural"], (
            f"{f['file']} is shown at {f['shown'] / f['natural']:.2f} of its width: its text is too small to read")
        shot = SCREENSHOT_DIR / f"{which}_figure_{k:02d}_{Path(f['file']).stem}.png"
        fig = pg.locator("figure").nth(k)
        fig.scroll_into_view_if_needed()
        fig.screenshot(path=str(shot))
        with Image.open(shot) as im:
            grey = im.convert("L")
            assert grey.width >= 0.95 * f["shown"], f"{f['file']}: the screenshot is cut"
            assert ImageStat.Stat(grey).stddev[0] > 20, f"{f['file']} renders blank"


def test_main_table_is_the_first_section_after_the_warnings(page: tuple[Any, list[str]]) -> None:
    pg, _ = page
    ids = pg.evaluate("() => Array.from(document.querySelectorAll('main > section')).map(s => s.id)")
    if "main-table" not in ids:
        # WIRING PENDING: the lead adds section#main-table in reports/content.py; until then this xfails
        pytest.xfail(f"no section#main-table yet (sections: {ids[:4]}...)")
    first = next(i for i in ids if i not in WARNING_IDS)
    assert first == "main-table", f"the first section after the warnings is #{first}, not #main-table"


def test_baseline_only_sweep_page_shows_learning_curves(sweep_page: tuple[Any, list[str]]) -> None:
    pg, _ = sweep_page
    text = pg.locator("main").inner_text()
    assert "No learning curves were recorded" not in text
    files = pg.evaluate("() => Array.from(document.querySelectorAll('img')).map(i => i.dataset.file)")
    assert {"curves_lm.png", "curves_mt.png"} <= set(files), files
