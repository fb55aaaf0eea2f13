"""The inspect page in a real browser: headless Chromium, driven over the DevTools protocol.

The page is built from the shapes benchmark (test split, scores of a stand-in model, bands mined
with a window, graded relevance), opened from disk, and what the DOM shows after the scripts ran
is compared with the data files: the query, its text and target rank, the top-N images with
their ranks and grades, the band and the false-negative marks, the band shading and the two
drops on the score curve. Then real key presses (``Input.dispatchKeyEvent``) step to the next
query, into the next data file and back; the list is searched and sorted; a narrow window must
not scroll sideways. Screenshots go to ``$QURE_SCREENSHOTS`` (default: a temporary folder).

``QURE_INSPECT_PAGE=/path/to/folder`` runs the same checks on an existing page instead (e.g.
``qure-demo/inspect``; the README's screenshot is made that way), and ``QURE_INSPECT_QUERY=<i>``
starts at query ``i`` (the first screenshot's). Without Chromium the tests
are skipped, saying so, unless ``QURE_REQUIRE_BROWSER=1`` (set by ``.ci/run`` once it has
installed Chromium), which makes a missing browser a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from browser import Browser, find_chromium
from inspect_data import pages

import qure
from qure.inspect import write_page

CHROMIUM = find_chromium()
WIDTH, HEIGHT = 1280, 800
READY = "document.body && ['ready', 'error'].includes(document.body.dataset.state)"


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        message = (
            "headless Chromium not found, so the browser test cannot run: install it "
            "(Debian: apt-get install chromium; .ci/run does) or set QURE_CHROMIUM to its path"
        )
        if os.environ.get("QURE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("QURE_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    given = os.environ.get("QURE_INSPECT_PAGE")
    if given:
        return Path(given).resolve()
    from qure.datasets.shapes import SAME_DESIGN, build_open_shapes_benchmark

    bench = build_open_shapes_benchmark(7, n_queries=(10, 10, 36))
    split = bench.test
    rng = np.random.default_rng(0)  # a stand-in model: graded relevance plus noise
    scores = (split.relevance + 0.3 * rng.standard_normal(split.relevance.shape)).astype(np.float32)
    negatives = qure.mine_negatives(scores, split.target, max_rank=100)
    out = tmp_path_factory.mktemp("inspect") / "inspect"
    write_page(
        out,
        scores=scores,
        targets=split.target,
        negatives=negatives,
        images=split.images,
        reference=split.reference,
        texts=split.texts,
        relevance=split.relevance,
        query_ids=[f"test-{i}" for i in range(len(split))],
        false_negative_grade=SAME_DESIGN,
        page_size=10,  # 4 data files: stepping from query 9 to 10 loads the next one
        title="qure inspect (browser test)",
        notes={"model": "relevance + noise", "split": "test"},
    )
    return out


@pytest.fixture(scope="module")
def data(site):
    return pages(site)


@pytest.fixture(scope="module")
def browser(chromium):
    with Browser(chromium, width=WIDTH, height=HEIGHT) as b:
        yield b


def open_page(browser: Browser, site: Path, fragment: str = "") -> None:
    """Loads the page afresh (a new hash alone would not reload it)."""
    browser.open("about:blank")
    browser.wait_for("location.href === 'about:blank'")
    browser.open((site / "index.html").as_uri() + fragment)
    browser.wait_for(READY)
    assert browser.evaluate("document.body.dataset.state") == "ready", browser.evaluate(
        "document.getElementById('detail').innerText"
    )


def shown_query(browser: Browser) -> int:
    return int(browser.wait_for("document.getElementById('detail').dataset.query"))


def wait_for_query(browser: Browser, q: int) -> None:
    browser.wait_for(f"document.getElementById('detail').dataset.query === '{q}'")


def wait_for_images(browser: Browser) -> None:
    """Every thumbnail in the viewport has loaded (and decoded to a real picture)."""
    browser.wait_for(
        "Array.from(document.images).filter(i => i.getBoundingClientRect().top < innerHeight)"
        ".every(i => i.complete)"
    )
    broken = browser.evaluate(
        "Array.from(document.images).filter(i => i.complete && i.naturalWidth === 0)"
        ".map(i => i.getAttribute('src'))"
    )
    assert not broken, f"thumbnails that did not load: {broken[:5]}"


DOM = """(() => {
  const d = document.getElementById('detail');
  const text = (sel) => { const n = d.querySelector(sel); return n ? n.textContent : null; };
  const cards = (sel) => Array.from(d.querySelectorAll(sel + ' > li')).map(li => ({
    g: Number(li.dataset.g), rank: Number(li.dataset.rank), classes: li.className.split(' '),
    grade: li.querySelector('.grade') ? li.querySelector('.grade').textContent : null,
    tags: Array.from(li.querySelectorAll('.tag')).map(t => t.textContent),
    alt: (li.querySelector('img') || li.querySelector('.noimg')).getAttribute(
      li.querySelector('img') ? 'alt' : 'aria-label'),
  }));
  const band = d.querySelector('svg .band-area');
  return {
    query: d.dataset.query, title: text('#query-title'), text: text('#query-text'),
    rank: text('#fact-rank'), bandRanks: text('#fact-band-ranks'), fn: text('#fact-fn'),
    top: cards('#top-cards'), band: cards('#band-cards'),
    bandArea: band ? [Number(band.dataset.start), Number(band.dataset.end)] : null,
    drops: Array.from(d.querySelectorAll('svg .drop')).map(g => Number(g.dataset.rank)),
    dropLabels: Array.from(d.querySelectorAll('svg .drop-label')).map(t => t.textContent),
    fnDots: Array.from(d.querySelectorAll('svg .fn-dot')).map(c => Number(c.dataset.rank)),
    targetDot: d.querySelectorAll('svg .target-dot').length,
    svgLabel: d.querySelector('svg.curve').getAttribute('aria-labelledby'),
    svgDesc: text('svg.curve desc'),
    pictures: Array.from(d.querySelectorAll('.pair img, .pair .noimg')).map(
      n => n.getAttribute('alt') || n.getAttribute('aria-label')),
  };
})()"""


def check_query(browser: Browser, summary: dict, record: dict) -> dict:
    """What the DOM shows of one query, against its record in the data files."""
    dom = browser.evaluate(DOM)
    q = record["q"]
    ids = summary["columns"].get("id")
    qid = ids[q] if ids else str(q)
    assert dom["query"] == str(q)
    assert dom["title"] == f"Query {qid}"
    if "text" in summary["columns"]:
        assert dom["text"] == summary["columns"]["text"][q]
    rank, target = record["rank"], record["target"]
    if rank >= 0:
        assert dom["rank"].split(" ")[0] == f"{rank:,}"
    # reference and target pictures, with alt texts naming them
    assert len(dom["pictures"]) == 2
    assert dom["pictures"][0].startswith(f"Reference image of query {qid}")
    assert dom["pictures"][1].startswith(f"Target image of query {qid}")

    # the top-N: every image in rank order, with its grade and its marks
    top = [g for g in record["top"] if g >= 0]
    assert [c["g"] for c in dom["top"]] == top
    assert [c["rank"] for c in dom["top"]] == list(range(len(top)))
    band = record.get("band")
    in_band = set(band["intop"]) if band else set()
    fn_grade = summary["fn_grade"]
    for j, card in enumerate(dom["top"]):
        assert card["alt"].startswith(f"Rank {j}: ")
        is_target = card["g"] == target
        assert ("target" in card["classes"]) == is_target
        assert ("band" in card["classes"]) == (j in in_band), (q, j)
        if record["grades"] is not None:
            grade = float(record["grades"][j])
            assert abs(float(card["grade"]) - grade) <= 0.005 + 1e-6  # shown with 2 decimals
            assert ("FN" in card["tags"]) == (not is_target and grade >= fn_grade), (q, j)
        if card["g"] == record["ref"]:
            assert "reference" in card["tags"]

    # the band: its shading and the two drops on the curve, and its members
    window = min(summary["window"], summary["gallery"])
    if band and "start" in band:
        start, end = band["start"], band["end"]
        assert dom["bandRanks"] == f"{start:,}–{end:,}"
        if start < window:
            assert dom["bandArea"] == [start, end]
        expected_drops = [r for r in (start, end + 1) if r - 0.5 <= window - 0.5]
        assert dom["drops"] == expected_drops
        assert len([t for t in dom["dropLabels"] if t.startswith("drop ")]) == len(expected_drops)
        assert f"spans ranks {start} to {end}" in dom["svgDesc"]
    else:
        assert dom["bandArea"] is None and dom["drops"] == []
    if band:
        assert [c["g"] for c in dom["band"]] == [x[0] for x in band["items"]]
        assert all("band" in c["classes"] for c in dom["band"])
    # false negatives on the curve, and the counts
    if "fn" in record:
        fn = record["fn"]
        assert sorted(dom["fnDots"]) == sorted(x[1] for x in fn["items"] if x[1] < window)
        assert dom["fn"].startswith(f"{fn['count']} in all, {fn['top']} in the top")
        if "above" in fn:
            assert f"{fn['above']} left above the band" in dom["fn"]
            assert f"{fn['band']} in the band" in dom["fn"]
    assert dom["targetDot"] == (1 if 0 <= rank < window else 0)
    assert dom["svgLabel"] == "curve-title curve-desc"
    return dom


def test_the_page_shows_the_query_and_steps_with_the_keyboard(browser, site, data, shots):
    summary, records = data
    first = int(os.environ.get("QURE_INSPECT_QUERY", "0"))  # the query of the first screenshot
    open_page(browser, site, f"#q={first}" if first else "")
    assert shown_query(browser) == first
    wait_for_images(browser)
    check_query(browser, summary, records[first])
    browser.screenshot(shots / f"inspect-{WIDTH}x{HEIGHT}.png")

    if first + 1 < len(records):  # the list starts in query order
        browser.press("ArrowRight", "ArrowRight", 39)  # next query
        wait_for_query(browser, first + 1)
        check_query(browser, summary, records[first + 1])
        assert browser.evaluate("location.hash") == f"#q={first + 1}"
        browser.press("k", "KeyK", 75)  # previous query
        wait_for_query(browser, first)
        browser.press("j", "KeyJ", 74)
        wait_for_query(browser, first + 1)
        wait_for_images(browser)
        browser.screenshot(shots / f"inspect-next-{WIDTH}x{HEIGHT}.png")
    size = summary["page_size"]
    if len(records) > size:  # across a data file: query page_size - 1 -> page_size
        open_page(browser, site, f"#q={size - 1}")
        assert shown_query(browser) == size - 1
        browser.press("ArrowRight", "ArrowRight", 39)
        wait_for_query(browser, size)
        check_query(browser, summary, records[size])
        assert browser.evaluate("document.querySelectorAll('script[src*=\"data/p\"]').length") == 0
    assert browser.console_errors() == []


def test_the_list_searches_sorts_and_follows_the_selection(browser, site, data):
    summary, records = data
    columns = summary["columns"]
    open_page(browser, site)
    rows = "Array.from(document.querySelectorAll('#rows tr')).map(tr => Number(tr.dataset.q))"
    assert browser.evaluate(rows) == list(range(min(50, summary["queries"])))
    assert browser.evaluate("document.querySelector('#rows tr[aria-current=true]').dataset.q") == (
        "0"
    )

    current = "Number(document.getElementById('detail').dataset.query)"

    def sort_by(key: str, descending: bool) -> list[int]:
        """Sorts the list in the page; returns the full order it should have."""
        browser.evaluate(
            "(() => { const s = document.getElementById('sort'); s.value = "
            f"'{key}'; s.dispatchEvent(new Event('change'));"
            "const d = document.getElementById('direction');"
            f"if (d.textContent.includes('desc') !== {str(descending).lower()}) d.click(); }})()"
        )
        values = columns[key]
        known = [q for q in range(len(values)) if values[q] >= 0]  # unknown (-1) last
        order = sorted(known, key=lambda q: (-values[q] if descending else values[q], q))
        return order + [q for q in range(len(values)) if values[q] < 0]

    def shown_is_the_page_of_the_current_query(order: list[int]) -> None:
        page = order.index(browser.evaluate(current)) // 50  # the list follows the selection
        assert browser.evaluate(rows) == order[50 * page : 50 * page + 50]

    # sort by target rank, worst first; the keyboard then walks the list in that order
    order = sort_by("rank", descending=True)
    shown_is_the_page_of_the_current_query(order)
    open_page(browser, site, f"#q={order[0]}")
    order = sort_by("rank", descending=True)
    shown_is_the_page_of_the_current_query(order)
    browser.press("ArrowRight", "ArrowRight", 39)
    wait_for_query(browser, order[1])
    browser.press("ArrowRight", "ArrowRight", 39)
    wait_for_query(browser, order[2])
    if summary["bands"]:  # band size, largest first
        shown_is_the_page_of_the_current_query(sort_by("band_size", descending=True))
    if summary["relevance"] and summary["bands"]:  # false negatives left in the band, fewest first
        shown_is_the_page_of_the_current_query(sort_by("fn_band", descending=False))

    # search by text: only matching queries are listed
    if "text" in columns:
        needle = columns["text"][min(3, len(records) - 1)]
        browser.evaluate(
            "(() => { const s = document.getElementById('search'); s.value = "
            f"{needle!r}; s.dispatchEvent(new Event('input')); }})()"
        )
        browser.wait_for(
            f"document.querySelectorAll('#rows tr').length > 0 && {rows}.every(q => "
            f"{columns['text']!r}[q].toLowerCase().includes({needle.lower()!r}))"
        )
        matches = [q for q, t in enumerate(columns["text"]) if needle.lower() in t.lower()]
        assert sorted(browser.evaluate(rows)) == sorted(matches)[:50]
        assert "match" in browser.evaluate("document.getElementById('count').textContent")
    assert browser.console_errors() == []


def test_a_narrow_window_does_not_scroll_sideways(browser, site, shots):
    browser.resize(400, 800)
    try:
        open_page(browser, site)
        wait_for_images(browser)
        assert browser.evaluate("document.documentElement.scrollWidth <= innerWidth + 1")
        # the query view sits below the list, full width
        assert browser.evaluate(
            "document.getElementById('detail').getBoundingClientRect().width > 360"
        )
        browser.screenshot(shots / "inspect-narrow-400x800.png")
    finally:
        browser.resize(WIDTH, HEIGHT)
