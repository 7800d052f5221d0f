"""Sphinx configuration: the API reference from docstrings, the guides from the README."""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
# Build from the source tree (the compiled framer is optional: the pure twin serves).
sys.path.insert(0, str(HERE.parent / "src"))

import qmpcore  # noqa: E402

project = "qmpcore"
author = "qmpcore contributors"
copyright = "qmpcore contributors"
release = qmpcore.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "notes"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

myst_heading_anchors = 3
suppress_warnings = ["myst.header", "myst.xref_missing"]

html_theme = "alabaster"
html_title = f"qmpcore {release}"
