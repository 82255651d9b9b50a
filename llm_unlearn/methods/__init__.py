"""The built-in unlearning methods: one small file per method (config dataclass, pure loss, trainer class registered
with ``@register_method`` where it is defined). Importing this package registers them all.

Adding a method = one file with ``@register_method(name, config=...)`` on its trainer: inside this package, plus an
import line below; outside it, a plugin module (``--plugins [my_module]`` or the ``llm_unlearn.plugins`` entry
point). The tests parametrize over ``METHODS``, so a new built-in is tested on both tracks automatically.
"""

from __future__ import annotations

from ..registry import METHODS, MethodSpec, get_method, methods  # noqa: F401 (the public API)
from . import cf_k, eu_k, ga, gd, graddiff, neggrad_plus, ngd, npo, rmu, scrub, simnpo, ssd  # noqa: F401 (register)


def uses_adapter(method: str, use_peft: bool) -> bool:
    """Whether an unlearning run of ``method`` trains (and saves) a LoRA adapter."""
    return use_peft and get_method(method).supports_peft


def build_method_config(name: str, args: dict | None):
    """The method's config dataclass from ``method_args``, strictly (unknown keys are errors, with did-you-mean)."""
    from ..configs import build_config

    spec = get_method(name)
    try:
        return build_config(spec.config_cls, args or {})
    except ValueError as e:
        raise type(e)(f"method {name!r}: {e}") from e
