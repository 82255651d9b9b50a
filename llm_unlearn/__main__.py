"""``python -m llm_unlearn <command>`` (what ``accelerate launch -m llm_unlearn train ...`` runs)."""

import sys

from .cli import entry

sys.exit(entry())
