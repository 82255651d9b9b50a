"""Heavy modules bound at module level but imported on first use.

``from llm_unlearn.lazy import torch`` gives a stand-in for ``torch`` that imports it the first time one of its
attributes is read (``torch.zeros``, ``torch.Tensor``) and then reads from the real module. Modules whose config
dataclasses are read to check a config (the image track's data, models and attacks) use it, so a config error does not
wait the 1-2 s torch takes to import (``tests/test_fast_config_errors.py`` checks that torch stays unimported), while
their functions read ``torch.``, ``F.`` and ``np.`` as usual. What must be a real class when the module is imported
(an ``nn.Module`` subclass, a decorator applied at import) cannot go through it. Annotations are strings in every
module here (``from __future__ import annotations``), so they never import anything.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["F", "LazyModule", "nn", "np", "torch"]


class LazyModule:
    """The module ``name``, imported when an attribute is first read."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str):
        name = object.__getattribute__(self, "_name")
        module = sys.modules.get(name) or importlib.import_module(name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {object.__getattribute__(self, '_name')!r}>"


torch = LazyModule("torch")
nn = LazyModule("torch.nn")
F = LazyModule("torch.nn.functional")
np = LazyModule("numpy")
