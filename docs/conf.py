"""Sphinx configuration: myst-nb pages, an API reference generated from the numpy docstrings (autosummary)."""

from __future__ import annotations

import os
from importlib.metadata import version as _version

# The tutorials' kernels inherit this: the inline backend puts every figure into the page (nox sets Agg for the other
# sessions, which would silently drop all tutorial figures).
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

project = "scst"
author = "scst developers"
copyright = "scst developers"  # noqa: A001
release = _version("scst")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}  # .rst: autosummary stubs
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# API reference: one page per function/class from the numpy docstrings.
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
typehints_defaults = "comma"
always_document_param_types = False

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
# Tutorials run at every build, on the real data (SCST_DATA_DIR, set by `nox -s docs`); one that fails fails the build.
nb_execution_mode = "force"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True

# No intersphinx: the build must pass -W offline (CI workers and the machines here have no network).
# Benchmark pages open with their H2 sections under a one-line H1-less header; that is intended.
suppress_warnings = ["myst.header"]

html_theme = "sphinx_book_theme"  # the scverse theme family
html_title = "scst"
html_theme_options = {"repository_url": "https://github.com/scst-dev/scst", "use_repository_button": True}


def _skip_torch_module_members(app, what, name, obj, skip, options):  # noqa: ARG001 - Sphinx's signature
    """Leave torch.nn.Module's own members out of the pages of scst's networks.

    Each ``scst.nn`` class page listed ~50 inherited torch methods (``add_module``, ``register_forward_hook``, ...)
    whose Google-style docstrings also made docutils report errors; a member the scst class overrides (``forward``,
    ``__init__``, ``extra_repr``, ...) stays.
    """
    import torch

    if name in vars(torch.nn.Module) and getattr(torch.nn.Module, name) is obj:
        return True
    if name == "training" or (callable(obj) and (getattr(obj, "__module__", None) or "").startswith("torch.")):
        return True  # the train/eval flag, and methods of a torch base class such as nn.TransformerEncoderLayer
    return None


def setup(app):  # noqa: D103
    app.connect("autodoc-skip-member", _skip_torch_module_members)
