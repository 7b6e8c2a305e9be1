"""uproot's regularization of class names, cached.

Opening a tree makes uproot read its metadata: every branch, its leaves and its list of
baskets, each an object whose class uproot looks up by name. Before each lookup it
regularizes the name (spaces around ``<``, ``>`` and ``::``, ROOT's type aliases) with
regular expressions, which is about a sixth of the time to open a tree; the conversion opens
each file's tree twice (the input checks, then coffea for every chunk), a NanoAOD tree with
over a thousand branches. The names are few and their regularization is a pure function of
the name, so it is cached, as uproot already caches the decoding of class names.
"""

from __future__ import annotations

import functools

import uproot.model


def cache_class_names() -> None:
    """Make uproot cache the regularization of class names in this process; idempotent."""
    regularize = uproot.model.classname_regularize
    if not hasattr(regularize, "cache_info"):
        uproot.model.classname_regularize = functools.lru_cache(maxsize=4096)(regularize)
