"""Sphinx configuration of the impexec documentation (MyST Markdown, furo theme).

Build with warnings as errors, as CI does::

    python -m sphinx -W -n --keep-going -b html docs docs/_build/html

Cross-references to docs.python.org (intersphinx) need the internet, which CI and many
build machines lack; set ``IMPEXEC_DOCS_INTERSPHINX=1`` to turn them on.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # document the tree, even when not installed

import impexec  # noqa: E402

project = "impexec"
author = "the impexec developers"
copyright = "the impexec developers"  # noqa: A001 - the name Sphinx reads
release = impexec.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
if os.environ.get("IMPEXEC_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {"python": ("https://docs.python.org/3", None)}

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "requirements.txt", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
myst_heading_anchors = 3

# API reference: public names only, in source order, signatures without module noise.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = True
add_module_names = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# -n (nitpicky) checks every cross-reference. Without intersphinx, references into the
# standard library and third-party packages cannot resolve; they are listed here, by
# pattern, so that a broken reference to impexec itself still fails the build.
nitpick_ignore_regex = [
    ("py:.*", r"_?(concurrent\.futures|collections\.abc|typing|pathlib|os|pickle|abc|enum|subprocess|threading|hmac|asyncio)(\..*)?"),
    ("py:.*", r"(Future|Executor|Iterator|Iterable|Callable|Sequence|Mapping|Any|Path)"),
    ("py:.*", r"(BrokenExecutor|PicklingError|Exception|BaseException|RuntimeError|TimeoutError)"),
    ("py:.*", r"(bool|bytes|dict|float|int|list|str|tuple|object|None|type)"),
    ("py:.*", r"(zmq|cloudpickle|dill|tqdm|pyabc)(\..*)?"),
    ("py:.*", r"impexec\.launchers\.base\.LauncherHost"),
    ("py:class", r"T"),  # the TypeVar of progress()
    ("py:class", r"impexec\.(\w+\.)*_\w+(\..*)?"),  # private bases and aliases in signatures
]

html_theme = "furo"
html_title = f"impexec {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
pygments_style = "friendly"
pygments_dark_style = "monokai"


def _check_api_coverage(app, env):  # type: ignore[no-untyped-def]
    """Fail the build (a warning under -W) when a public name lacks an API entry."""
    text = (HERE / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. auto\w+:: (?:impexec\.)?(\w+)", text, re.M))
    documented |= set(re.findall(r"^```\{auto\w+\} (?:impexec\.)?(\w+)", text, re.M))
    missing = [name for name in impexec.__all__ if name != "__version__" and name not in documented]
    if missing:
        from sphinx.util import logging as sphinx_logging

        sphinx_logging.getLogger(__name__).warning(
            "docs/api.md does not document these public names of impexec.__all__: %s",
            ", ".join(missing),
        )


def _public_bases(app, name, obj, options, bases):  # type: ignore[no-untyped-def]
    """ClusterExecutor and Context share map() through a private base class: the reference
    shows the standard Executor that base derives from (what users can rely on)."""
    from concurrent.futures import Executor

    from impexec._mapping import MappingExecutor

    bases[:] = [Executor if b is MappingExecutor else b for b in bases]


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("env-updated", _check_api_coverage)
    app.connect("autodoc-process-bases", _public_bases)
