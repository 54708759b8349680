"""mkdocs hooks for the condense-nb docs site: make the built site work offline.

plotly.js and MathJax are copied into `<site>/assets/` from the installed `plotly` and `jupyter-server-mathjax`
packages (nothing is fetched from a CDN, and nothing large is committed to the repository).
"""
import shutil
from pathlib import Path


def on_post_build(config, **kwargs):
    import plotly, jupyter_server_mathjax
    assets = Path(config["site_dir"])/"assets"
    assets.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(plotly.__file__).parent/"package_data"/"plotly.min.js", assets/"plotly.min.js")
    mathjax = Path(jupyter_server_mathjax.__file__).parent/"static"
    shutil.copytree(mathjax, assets/"mathjax", dirs_exist_ok=True)
    # jupyter-server-mathjax ships only the STIX-Web fonts; MathJax's default (TeX fonts) would 404. Same setting as
    # Jupyter's own pages; loaded as `config=...,local/condense` in mkdocs.yml. MathJax's blank probe font points at
    # url('about:blank'), which Chrome reports as a failed CORS font load on every page: local() asks for nothing.
    (assets/"mathjax"/"config"/"local").mkdir(parents=True, exist_ok=True)
    (assets/"mathjax"/"config"/"local"/"condense.js").write_text(
        'MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null,\n'
        '  styles: {"@font-face": {"font-family": "MathJax_Blank", src: "local(\'MathJax_Blank\')"}}}});\n'
        'MathJax.Ajax.loadComplete("[MathJax]/config/local/condense.js");\n')


def on_post_page(output, page, config, **kwargs):
    """Two rewrites of every built page.

    1. Pages with plotly figures load plotly.js in `<head>`: the stored figures call `Plotly.newPlot` inline, so the
       library must be there before the body runs; the other pages don't pay its 4.6 MB.
    2. Links between notebooks are written `NAME.ipynb` (so they work on GitHub and in JupyterLab); on the site the
       page is `NAME.html`. mkdocs rewrites links in Markdown pages itself, but not in notebooks rendered by nbconvert."""
    import re
    if 'class="plotly-graph-div"' in output:
        up = "../"*page.url.count("/")                                   # use_directory_urls: false, so NAME.html or DIR/NAME.html
        output = output.replace("</head>", f'<script src="{up}assets/plotly.min.js"></script></head>', 1)
    return re.sub(r'href="((?:\.\./)*[\w./-]*?)\.ipynb(#[^"]*)?"', lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', output)
