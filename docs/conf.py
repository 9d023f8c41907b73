"""Sphinx configuration of optaxtra's documentation site.

Build it (warnings are errors, every cross-reference checked) with

  python -m sphinx -W --keep-going -n -b html docs docs/_build/html

The API pages are generated from each public module's ``__all__`` by the
``optaxtra_docs`` extension in ``_ext/``, which also fails the build when a
public name has no rendered entry (``check_api.py`` runs the same check on a
finished build). The notebooks are rendered with the outputs stored in them:
they are copied from ``../notebooks`` at the start of every build and never
executed here.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(ROOT))

import optaxtra  # noqa: E402

project = "optaxtra"
author = "optaxtra developers"
copyright = "optaxtra developers"
release = optaxtra.__version__
version = release

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx-mathjax-offline",  # MathJax served from the site: math renders offline
  "sphinx_copybutton",
  "myst_nb",
  "optaxtra_docs",
]

exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
templates_path: list[str] = []
# Every cross-reference must resolve. Names of other projects (optax.*, jax.*,
# Python's) are linked by optaxtra_docs to a search of those projects' docs, as
# intersphinx would need the network at build time; anything else unresolved,
# an optaxtra name above all, is an error.
nitpicky = True

# --- autodoc and napoleon (Google-style docstrings) --------------------------
autodoc_member_order = "bysource"
# Signatures without annotations: the aliases of the annotations expand into
# unions of eight types (``ArrayLike``) that hide the arguments, and every
# "Args:" entry says in words what the argument takes.
autodoc_typehints = "none"
autodoc_preserve_defaults = True
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
python_use_unqualified_type_names = True
python_maximum_signature_line_length = 88  # longer: one parameter a line
add_module_names = False

# --- MyST and notebooks -------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the stored outputs are shown, nothing is run
nb_merge_streams = True

# --- HTML -------------------------------------------------------------------
html_theme = "furo"
html_title = f"optaxtra {release}"
html_static_path = ["_static"]
html_css_files = ["optaxtra.css"]
html_show_sourcelink = False
html_theme_options = {
  "source_repository": "",
  "navigation_with_keys": True,
}
copybutton_prompt_text = r">>> |\.\.\. "
copybutton_prompt_is_regexp = True


def _copy_notebooks() -> None:
  """``../notebooks/*.ipynb`` -> ``notebooks/`` (ignored by git), afresh."""
  out = HERE / "notebooks"
  if out.exists():
    shutil.rmtree(out)
  out.mkdir()
  for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
    shutil.copy2(nb, out / nb.name)


_copy_notebooks()
