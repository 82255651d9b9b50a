"""The image track's poisoning attacks, one file each (config dataclass + attack class with its hooks), registered
with ``@register_attack(name, config=..., track="image")``; ``common.py`` holds what they share and documents the
hooks' arguments. Importing this package registers them (``image_track.track`` and ``image_track.task`` do), also
to check a config's ``attack_args``: an attack file reads torch through ``llm_unlearn.lazy``, so that a config error
shows before torch loads (``tests/test_fast_config_errors.py``).
``ATTACKS`` is the registry's table of the image track (name -> ``AttackSpec``).
"""

from __future__ import annotations

from llm_unlearn.registry import ATTACKS as _BY_TRACK

# Registration order is the order of the eval keys in eval_results.json (asr, poison_success, then gus_*).
from .badnets import stamp
from .common import Clean, ImageAttack, Poisoned
from .witches_brew import gradient_matching
from .gaussian import batch_pixel_noise, gus_scores, pixel_noise
from . import gradient_canceling  # noqa: F401

ATTACKS = _BY_TRACK.setdefault("image", {})
__all__ = ["ATTACKS", "Clean", "ImageAttack", "Poisoned", "batch_pixel_noise", "gradient_matching", "gus_scores"]
__all__ += ["pixel_noise", "stamp"]
