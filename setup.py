"""Build script. By default the package is pure Python (its metadata is in pyproject.toml).

With AUDIOHOOK_COMPILE=1 the modules every audio frame passes through (pyproject.toml,
[tool.audiohook-gateway] compiled-modules) are also compiled with mypyc into C extensions, from
the same type-checked source. That needs mypy and a C compiler with the Python headers at build
time, and nothing more at run time; an installation without them runs the same modules as
Python. `make compiled` builds it; README "Compiled build" says how tests cover both builds.
"""

from __future__ import annotations

import os
import tomllib

from setuptools import setup


def _extensions() -> list[object]:
    if os.environ.get("AUDIOHOOK_COMPILE") != "1":
        return []
    from mypyc.build import mypycify  # build time only

    with open("pyproject.toml", "rb") as file:
        modules = tomllib.load(file)["tool"]["audiohook-gateway"]["compiled-modules"]
    return list(mypycify(modules, opt_level="3", group_name="audiohook_gateway"))


setup(ext_modules=_extensions())
