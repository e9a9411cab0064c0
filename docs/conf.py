"""Sphinx configuration of the ftdyn documentation (``sphinx-build -W -b html docs OUT``)."""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

from ftdyn import __version__  # after the path above

project = "ftdyn"
author = "the ftdyn developers"
copyright = "the ftdyn developers, MIT license"
release = __version__
version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "ftdyn_pages",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_generated"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# The public functions document their options as prose and generated lists rather than
# numpydoc sections; validate nothing and list no class members, so the build stays quiet.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
autodoc_default_options = {"members": False}
autodoc_typehints = "none"

html_theme = "pydata_sphinx_theme"
html_title = f"ftdyn {__version__}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
