"""Build time of a ``qure inspect`` page for many queries (the issue's 20,000 x top-50 case).

    python benches/bench_inspect.py                      # 20,000 queries, gallery 10,000
    python benches/bench_inspect.py --queries 100000 --out /tmp/inspect-100k
    python benches/bench_inspect.py --open               # also time the page in headless Chromium

Random unit features (``--dim``) with each query planted near its target and near ``--answers``
further gallery images (graded 1.0, and as many again graded 0.8), so target ranks, bands and
false negatives look like a trained model's. Bands are mined with ``--max-rank`` (the trainer's
default window). Images are ``--image-size`` pixel RGB arrays, one thumbnail written per image
shown. Times: mining (not part of the page) and :func:`qure.inspect.write_page` (scoring in
blocks, ranking, per-query data, data files, thumbnails). With ``--open``, the page is opened in
headless Chromium (``tests/browser.py``): the time until the first query is shown, and the time
to search, sort and step to the next query, each measured in the page.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def inputs(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    gallery = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    targets = rng.integers(0, args.gallery, args.queries)
    answers = rng.integers(0, args.gallery, (args.queries, 2 * args.answers))
    queries = gallery[targets] + 0.8 * gallery[answers].mean(axis=1)
    queries += 0.35 * rng.standard_normal(queries.shape, dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    relevance = [
        {**{int(g): 0.8 for g in row[args.answers :]}, **{int(g): 1.0 for g in row[: args.answers]}}
        for row in answers
    ]
    for grades, t in zip(relevance, targets):
        grades[int(t)] = 1.0
    side = args.image_size
    blocks = rng.integers(0, 256, (args.gallery, 4, 4, 3), dtype=np.uint8)  # 4 x 4 colour tiles
    images = np.repeat(np.repeat(blocks, side // 4, axis=1), side // 4, axis=2)
    words = ["make", "the", "circle", "red", "add", "a", "square", "remove", "bigger", "blue"]
    texts = [" ".join(rng.choice(words, 6)) for _ in range(args.queries)]
    reference = rng.integers(0, args.gallery, args.queries)
    return dict(
        queries=queries,
        gallery=gallery,
        targets=targets,
        relevance=relevance,
        images=images,
        texts=texts,
        reference=reference,
    )


def open_in_browser(index: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from browser import Browser, find_chromium

    chromium = find_chromium()
    if chromium is None:
        return {"browser": "chromium not found"}
    timings = {}
    with Browser(chromium, width=1280, height=800) as browser:
        started = time.perf_counter()
        browser.open(index.as_uri())
        browser.wait_for("document.body && document.body.dataset.state === 'ready'", 120)
        timings["first_query_s"] = time.perf_counter() - started

        def in_page(script: str) -> float:  # milliseconds, measured by the page's clock
            return browser.evaluate(
                "(async () => { const t = performance.now(); " + script + "; "
                "await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0))); "
                "return performance.now() - t; })()"
            )

        # typing waits 150 ms before searching (a debounce), included here
        timings["search_ms"] = in_page(
            "const s = document.getElementById('search'); s.value = 'red square';"
            "s.dispatchEvent(new Event('input'));"
            "const c = document.getElementById('count');"
            "while (!c.textContent.includes('match')) await new Promise(r => setTimeout(r, 5))"
        )
        timings["sort_ms"] = in_page(
            "const o = document.getElementById('sort'); o.value = 'rank';"
            "o.dispatchEvent(new Event('change'))"
        )
        browser.evaluate("document.getElementById('detail').dataset.query = ''")
        started = time.perf_counter()
        browser.press("ArrowRight", "ArrowRight", 39)
        browser.wait_for("document.getElementById('detail').dataset.query !== ''", 60)
        timings["next_query_s"] = time.perf_counter() - started
        timings["errors"] = browser.console_errors()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--answers", type=int, default=4, help="valid answers per query")
    parser.add_argument("--top", type=int, default=50)
    parser.add_argument("--curve", type=int, default=300)
    parser.add_argument("--max-rank", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    parser.add_argument("--open", action="store_true", help="time the page in headless Chromium")
    args = parser.parse_args()

    import qure
    from qure.inspect import write_page

    data = inputs(args)
    started = time.perf_counter()
    negatives = qure.mine_from_features(
        data["queries"], data["gallery"], data["targets"], max_rank=args.max_rank
    )
    mined = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "inspect")
        page = write_page(
            out,
            queries=data["queries"],
            gallery=data["gallery"],
            targets=data["targets"],
            negatives=negatives,
            images=data["images"],
            reference=data["reference"],
            texts=data["texts"],
            relevance=data["relevance"],
            false_negative_grade=0.8,
            top=args.top,
            curve=args.curve,
            notes={"data": "synthetic (benches/bench_inspect.py)"},
        )
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        result = {
            "queries": args.queries,
            "gallery": args.gallery,
            "top": args.top,
            "curve": args.curve,
            "threads": qure.get_num_threads(),
            "mining_s": round(mined, 2),
            "write_page_s": round(page.seconds, 2),
            "pages": page.pages,
            "thumbnails": page.thumbnails,
            "megabytes": round(size / 1e6, 1),
            "summary_megabytes": round((out / "data" / "summary.js").stat().st_size / 1e6, 2),
        }
        if args.open:
            result.update(open_in_browser(page.index))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
