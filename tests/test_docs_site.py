"""The docs site: `mkdocs build` renders the executed notebooks of nbs/ into a site that works offline.

The static checks need only mkdocs (a dev dependency). The browser check drives a system Chromium with Playwright
(`apt-get install chromium` on Debian/Ubuntu; Playwright's own browser download needs a network) and is skipped,
with the reason, where none is installed. Set CONDENSE_NB_SCREENSHOTS=folder to keep its screenshots.
"""
import functools, http.server, json, os, re, shutil, subprocess, sys, threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit, unquote

import pytest

pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[dev]')")
pytest.importorskip("mkdocs_jupyter", reason="mkdocs-jupyter is not installed (pip install -e '.[dev]')")

from condense_nb.notebooks import teaching_notebooks, output_status

ROOT = Path(__file__).resolve().parent.parent
PAGES = {p.stem: p for p in teaching_notebooks()}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The site built once for this module with the README's command (into a temporary folder)."
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--quiet", "-f", str(ROOT/"mkdocs.yml"), "-d", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"mkdocs build failed:\n{r.stderr[-4000:]}"
    return out


def test_every_notebook_is_a_page_of_the_nav():
    "mkdocs.yml's nav and the sidebar of the nbdev docs list every teaching notebook once."
    nav = re.findall(r":\s*(\S+\.ipynb)\s*$", (ROOT/"mkdocs.yml").read_text(), re.M)
    assert sorted(nav) == sorted(f"{s}.ipynb" for s in PAGES) and len(nav) == len(set(nav))
    side = re.findall(r"-\s*(\S+\.ipynb)\s*$", (ROOT/"nbs/sidebar.yml").read_text(), re.M)
    assert sorted(side) == sorted(nav)


def test_site_builds_offline_with_every_figure(site):
    for stem, nb in PAGES.items():
        html = (site/f"{stem}.html").read_text(encoding="utf-8")
        s = output_status(nb)
        assert html.count('src="data:image/png;base64,') >= s["images"], f"{stem}.html lacks figures stored in {nb.name}"
        assert html.count("Plotly.newPlot(") >= s["plotly"], f"{stem}.html lacks plotly figures stored in {nb.name}"
        remote = re.findall(r'<(?:script|img)[^>]*\ssrc="(https?:[^"]*)"|<link[^>]*\shref="(https?:[^"]*\.css[^"]*)"', html)
        assert not remote, f"{stem}.html loads {remote[:3]} from the network"
    assert (site/"assets/plotly.min.js").stat().st_size > 1e6 and (site/"assets/mathjax/MathJax.js").exists()


class _Links(HTMLParser):
    "The href/src attributes of real tags (not text that looks like one inside a code listing)."
    def __init__(self): super().__init__(); self.found = []
    def handle_starttag(self, tag, attrs): self.found += [v for k, v in attrs if k in ("href", "src") and v]


def test_internal_links_resolve(site):
    bad = []
    for page in site.rglob("*.html"):
        links = _Links(); links.feed(page.read_text(encoding="utf-8"))
        for href in links.found:
            u = urlsplit(href)
            if u.scheme or href.startswith(("#", "//", "data:", "mailto:", "javascript:")) or not u.path: continue
            path = unquote(u.path)
            target = (site/path.lstrip("/") if path.startswith("/") else page.parent/path).resolve()   # 404.html: root-absolute
            if target.is_dir(): target = target/"index.html"
            if not target.exists(): bad.append(f"{page.relative_to(site)} -> {href}")
    assert not bad, "broken links:\n" + "\n".join(sorted(set(bad))[:20])


def _chromium():
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(site))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (Debian/Ubuntu: apt-get install chromium)")
def test_pages_render_in_a_real_browser(served, tmp_path):
    "Home page and notebook pages in headless Chromium, with every non-local request refused (the site must work offline)."
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed").sync_playwright
    shots = Path(os.environ.get("CONDENSE_NB_SCREENSHOTS") or tmp_path); shots.mkdir(parents=True, exist_ok=True)
    checks = {"index": dict(maths=False, plotly=False), "20_gaussians": dict(maths=True, plotly=False),
              "40_raymarch": dict(maths=True, plotly=False), "07_viz": dict(maths=False, plotly=True),
              "21_lifting": dict(maths=True, plotly=True), "43_keypoints": dict(maths=False, plotly=True),
              "32_guidance": dict(maths=True, plotly=True)}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(),
                                    args=["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        remote = []
        ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(served)
                  else (remote.append(route.request.url), route.abort()))
        for stem, want in checks.items():
            page, errors = ctx.new_page(), []
            # console errors, and plotly.js's own warnings (Lib.warn: 'WARN: Invalid color specifier ...' when it cannot
            # draw what the figure asks for); the browser's performance hints are not errors
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" or m.text.startswith("WARN:") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            # a failed load logs only "Failed to load resource: ... 404" to the console: keep the address beside it
            page.on("response", lambda r: errors.append(f"HTTP {r.status} for {r.url}") if r.status >= 400 else None)
            page.goto(served + f"{stem}.html", wait_until="load")
            imgs = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.src.slice(0, 40)])")
            assert all(c and w > 0 for c, w, _ in imgs), f"{stem}: undecoded images {[i for i in imgs if not i[1]][:3]}"
            assert len(imgs) >= output_status(PAGES[stem])["images"], f"{stem}: {len(imgs)} images shown"
            if want["plotly"]:
                page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
                n = page.evaluate("document.querySelectorAll('.js-plotly-plot').length")
                assert n == output_status(PAGES[stem])["plotly"], f"{stem}: {n} plotly figures drawn"
            if want["maths"]:
                page.wait_for_function("() => document.querySelectorAll('.MathJax, .MathJax_CHTML, .MathJax_Display').length > 0",
                                       timeout=30_000)
                assert page.evaluate("document.querySelectorAll('.MathJax_Error, .merror').length") == 0, f"{stem}: a formula failed"
            page.screenshot(path=str(shots/f"{stem}.png"))                  # the top of the page, as a reader lands on it
            fig = page.locator(".js-plotly-plot" if want["plotly"] else ".jp-RenderedImage img").first
            if fig.count():                                                 # and its first figure, scrolled into view
                fig.scroll_into_view_if_needed(); fig.screenshot(path=str(shots/f"{stem}-figure.png"))
            assert not errors, f"{stem}: console errors {errors[:3]}"
            page.close()
        browser.close()
    assert not remote, f"the site asked the network for {sorted(set(remote))[:5]}"


def test_home_page_reading_order_matches_readme():
    "The docs home page (nbs/index.ipynb) and README list the same notebooks with the same descriptions and CPU times."
    row = r"^\| {0} \| (.*) \| (\d+ s) \|$"
    readme = {m[0]: m[1:] for m in re.findall(row.format(r"`(\d\d[a-z]?_\w+)`"), (ROOT/"README.md").read_text(), re.M)}
    index = json.loads((ROOT/"nbs"/"index.ipynb").read_text())
    home = {m[0]: m[2:] for m in re.findall(row.format(r"\[(\d\d[a-z]?_\w+)\]\((\1)\.ipynb\)"),
                                            "\n".join("".join(c["source"]) for c in index["cells"]), re.M)}
    assert len(readme) >= 20 and home == readme, sorted(set(home.items()) ^ set(readme.items()))[:4]
