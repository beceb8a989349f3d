"""Sphinx configuration for the optax_invloss documentation.

Build from the repository root (see README.md)::

  pip install -e ".[docs]" && sphinx-build -W -n docs docs/_build/html

(``tests/test_docs.py`` builds the same way, and runs the pages' code).

The benchmark pages and the rendered notebooks are generated at build time from
the committed files under ``benchmarks/results/`` and ``notebooks/`` (see
``_ext/generated.py``): nothing measured is pasted into these sources.
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE / "_ext"))

import optax_invloss  # noqa: E402

project = "optax_invloss"
author = "The optax_invloss authors"
copyright = "2026, The optax_invloss authors"  # noqa: A001
release = optax_invloss.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "generated",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "README.md"]
templates_path = ["_templates"]

# API pages: one per public name, from the docstrings (Google style, as Optax's).
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # the docstrings' Args say what each argument is
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Broken references are errors (-n -W), except to other projects' objects: the
# build runs offline (no intersphinx inventories), so names in jax, optax, flax,
# equinox and the standard library cannot be resolved here.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jnp|lax|optax|flax|nnx|eqx|equinox|chex|numpy|np)(\..*)?"),
    (r"py:.*", r"(typing|collections|NamedTuple|Any|Callable|Sequence)(\..*)?"),
    (r"py:.*", r"(int|float|bool|str|tuple|dict|list|None|callable|optional)"),
    (r"py:.*", r"optax_invloss\._.*"),  # private helpers have no pages
]

# MyST: $...$ and $$...$$ math, ::: fences; notebooks are shown with the outputs
# committed from their full-length runs, not re-executed by the docs build.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"
# Colab cells hold IPython magics (%pip, !git), which the Python lexer rejects.
suppress_warnings = ["mystnb.unknown_mime_type", "misc.highlighting_failure"]

html_theme = "sphinx_book_theme"
html_title = "optax_invloss"
html_theme_options = {
    "repository_url": "https://github.com/optax-invloss/optax_invloss",
    "use_repository_button": True,
    "show_toc_level": 2,
}
