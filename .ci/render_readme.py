"""Render README.md from nbs/index.ipynb (nbdev_readme needs quarto, which does not install here).
Cells whose source starts with `#| hide` are left out; a line `{{include PATH}}` is replaced by that file
(so result tables come from the tools that made them). `--check` exits 1 if README.md is stale."""
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]


def render() -> str:
    nb = nbformat.read(ROOT/'nbs'/'index.ipynb', as_version=4)
    nb.cells = [c for c in nb.cells if not c.source.lstrip().startswith('#| hide')]
    body, _ = MarkdownExporter().from_notebook_node(nb)
    body = re.sub(r'^\{\{include (\S+)\}\}$', lambda m: (ROOT/m.group(1)).read_text().strip(), body, flags=re.M)
    return body.strip() + '\n'


if __name__ == '__main__':
    text, readme = render(), ROOT/'README.md'
    if '--check' in sys.argv:
        sys.exit(0 if readme.exists() and readme.read_text() == text else 1)
    readme.write_text(text)
