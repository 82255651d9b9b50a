"""The image track's poisoning attacks, one file each (config dataclass + attack class with its hooks), registered
with ``@register_attack(name, config=..., track="image")``; ``common.py`` holds what they share and documents the
hooks' arguments. ``image_track.track`` imports this package, so loading the track registers them.

- ``gaussian``: x + xi, xi ~ N(0, eps^2 I), labels unchanged; xi is regenerable from the poison's ``noise_seed``.
- ``badnets`` (Gu et al. 2017): a checkerboard patch in the bottom-right corner, label set to the target class.
- ``witches_brew`` (Geiping et al. 2021): clean-label gradient matching on a surrogate, l_inf <= eps.
- ``gradient_canceling`` (Lu, Kamath, Yu 2023): poisons whose gradient cancels the clean gradient at corrupted
  low-accuracy target parameters of a linear classifier.

``ATTACKS`` is the registry's table of the image track (name -> ``AttackSpec``).
"""

from __future__ import annotations

from llm_unlearn.registry import ATTACKS as _BY_TRACK

# Registration order is the order of the eval keys in eval_results.json (asr, poison_success, then gus_*).
from .badnets import BadNetsAttack, BadNetsConfig, stamp
from .common import Clean, ImageAttack, Poisoned
from .witches_brew import WitchesBrewAttack, WitchesBrewConfig, gradient_matching
from .gaussian import ImageGaussianAttack, ImageGaussianConfig, batch_pixel_noise, gus_scores, pixel_noise
from .gradient_canceling import GradientCancelingAttack, GradientCancelingConfig

ATTACKS = _BY_TRACK.setdefault("image", {})

__all__ = [
    "ATTACKS",
    "BadNetsAttack",
    "BadNetsConfig",
    "Clean",
    "GradientCancelingAttack",
    "GradientCancelingConfig",
    "ImageAttack",
    "ImageGaussianAttack",
    "ImageGaussianConfig",
    "Poisoned",
    "WitchesBrewAttack",
    "WitchesBrewConfig",
    "batch_pixel_noise",
    "gradient_matching",
    "gus_scores",
    "pixel_noise",
    "stamp",
]
