"""Provenance: which etcd-seed, Python and libraries run now; the bytes a build writes depend on them.

Only the standard library is imported here: the fast path reads it too.
"""

from __future__ import annotations

import sys
from importlib import metadata

from . import __version__

# The libraries whose versions shape the bytes written: certificates, templates, ISOs, YAML.
LIBRARIES = ("cryptography", "jinja2", "pycdlib", "pyyaml", "libpass")


def installed() -> dict[str, str]:
    """etcd-seed's, Python's (major.minor) and each library's version in this process; "none" for a missing one."""
    versions = {"etcd-seed": __version__, "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "none"
    return versions
