"""What an attack is: one class in one file, beside its config dataclass, registered for a track::

    @dataclass
    class FlipConfig:
        target_label: str = field(default="positive", metadata={"help": "the label the poisons get"})

        def validate(self) -> None:
            ...  # raise ConfigError on a bad value

    @register_attack("flip", config=FlipConfig, track="llm")
    class FlipAttack(Attack):
        \"\"\"Label flipping: the poisons keep their text and get target_label.\"\"\"
        metric = "clean_accuracy"

        def poison(self, train, test, rng, cfg):
            ...

A recipe names it as ``poison: {attack: flip, attack_args: {target_label: negative}}``: ``attack_args`` is built
into the config dataclass strictly (unknown keys rejected with did-you-mean, then ``validate()``) before any stage
starts (:func:`build_attack`). The stages call the hooks below and never branch on an attack's name:

(a) ``poison``: the poison stage's work; the ``info`` it returns lands in ``manifest.json`` beside ``attack``,
    ``metric`` and ``attack_args``.
(b) ``craft_poisons`` / ``start_training`` / ``training_embeddings``: what a poisoned example does at training time
    (the LLM Gaussian attack noises its prompt embeddings on every visit; gradient canceling crafts perturbations
    against a surrogate of the victim's recipe, then adds them on every visit). Default: nothing.
(c) ``evaluate``: the attack's metrics at evaluation; ``metric`` names the eval key gap closed is computed on.
(d) ``describe``: one line for the report header and the model card.

The hooks' data arguments are the track's: the LLM track's are documented here; the image track's on
``image_track.attacks.common.ImageAttack``. Training and evaluation run in other processes than the poison stage:
they rebuild the attack from the manifest (:func:`attack_from_manifest`), so ``self.args`` there is what the
poisons were made with.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Attack:
    """Base class of every attack (both tracks). ``self.args`` is the attack's own config (its ``attack_args``)."""

    # Set by ``register_attack``.
    attack_name: ClassVar[str]
    attack_config_cls: ClassVar[type]

    # (c) The eval key the poison effect is measured by (gap closed is computed on it; the manifest records it).
    metric: ClassVar[str] = ""
    # (c) The eval keys ``evaluate`` fills. Every eval_results.json of a track holds the keys of all its attacks
    # (null where another attack ran), so results of different attacks line up in tables and results.json.
    eval_keys: ClassVar[tuple[str, ...]] = ()
    # The report's table columns (None: clean accuracy, the metric, gap closed, MIA AUC, compute).
    report_columns: ClassVar[tuple[str, ...] | None] = None
    # True when ``evaluate`` records the Gaussian audit per poison (``gus_poison``/``gus_fresh``): the report adds
    # the per-seed Stouffer table and the histogram plot.
    gus_audit: ClassVar[bool] = False
    # The fewest poisons the attack can work with (the Gaussian test needs two to estimate a mean and a spread).
    min_poisons: ClassVar[int] = 1

    def __init__(self, args: Any):
        self.args = args

    @property
    def name(self) -> str:
        return type(self).attack_name

    # --- checks before any work ---------------------------------------------------------------------------------

    def check(self, cfg) -> None:
        """Checks of the attack against the rest of the config (``cfg``: the poison section / stage config of the
        track, or the image track's whole poison stage config), e.g. a target label that must be one of the data's
        labels. Raise ``ConfigError``. Default: none."""

    # --- (a) poison the data --------------------------------------------------------------------------------------

    def poison(self, *args, **kwargs):
        """(a) LLM track: ``poison(train, test, rng, cfg) -> (rows, extra_splits, info)``.

        ``train``/``test`` are the clean rows (dicts with ``text`` and ``label``), ``rng`` the stage's
        ``random.Random(seed)``, ``cfg`` the ``PoisonConfig`` (data source, ``poison_fraction``, ``label_names``).
        Return every training row with ``is_poison``, ``orig_label`` and ``noise_seed`` (-1 where unused) added, the
        extra evaluation splits by name (rows of the same form as ``test``), and the attack's facts for the manifest.
        A ``ValueError`` is reported as a config error naming its message."""
        raise NotImplementedError(f"{type(self).__name__} does not implement poison()")

    # --- (b) training time ------------------------------------------------------------------------------------------

    def craft_poisons(self, *, tokenizer, dataset, cfg, out) -> dict:
        """(b) LLM track: called once by the train stage before the initial model trains (split ``train``), for an
        attack whose poisons depend on the victim's model and training recipe: gradient canceling crafts its
        perturbations here, against a surrogate trained with ``cfg`` (the ``TrainConfig``: model, recipe, seed) on
        ``dataset`` (the poison stage's DatasetDict) tokenised by ``tokenizer``, and stores them in ``out`` (the
        initial model's dir). Returns entries for ``training_info.json``. Default: nothing."""
        return {}

    def start_training(self, model, manifest: dict, split: str) -> dict:
        """(b) LLM track: called once before the train stage trains ``model`` on ``split`` (``train``: the poisoned
        set; ``retain``: the gold run). Returns entries for ``training_info.json``. Default: none."""
        return {}

    def training_embeddings(self, model, inputs: dict, columns: dict):
        """(b) LLM track: called on every training batch. ``inputs`` is the collated batch (``input_ids``, ...),
        ``columns`` the poison columns taken out of it (``noise_seed``, ``prompt_len``, ``index``). Returns the input
        embeddings to train on instead of the token ids, or None (default) to train on the tokens as they are."""
        return None

    # --- (c) evaluation ---------------------------------------------------------------------------------------------

    # LLM track: the extra splits (written by ``poison``) the evaluation generates completions on.
    generate_on: ClassVar[tuple[str, ...]] = ()

    def evaluate(self, **inputs) -> tuple[dict, dict]:
        """(c) The attack's metrics and per-sample records, merged into ``eval_results.json``/``per_sample.json``.

        LLM track inputs: ``model``, ``tokenizer``, ``dd`` (the poison stage's DatasetDict), ``manifest``,
        ``predictions`` (completions by split: ``test`` and every ``generate_on`` split), ``cfg`` (the
        ``EvalConfig``). Default: nothing (an attack whose metric the evaluation always computes, e.g. accuracy)."""
        return {}, {}

    # --- (d) report -----------------------------------------------------------------------------------------------

    def describe(self) -> str:
        """(d) One line on how the poisons were made, for the report header and the model card."""
        return self.name


def build_attack(name: str, args: dict | None, track: str = "llm") -> Attack:
    """The attack ``name`` of ``track`` with its ``attack_args`` built strictly into its config dataclass and
    validated: unknown keys (with did-you-mean), wrong types and failed ``validate()`` raise ``ConfigError``."""
    from ..configs import ConfigError, load_config, validate_config
    from ..registry import get_attack

    spec = get_attack(name, track)
    if args is not None and not isinstance(args, dict):
        raise ConfigError(f"attack_args: expected a mapping of the {name} attack's keys, got {args!r}")
    config = load_config(spec.config_cls, args or {}, prefix="attack_args.")
    try:
        validate_config(config)
    except ConfigError as e:
        raise ConfigError(f"attack_args of the {name} attack: {e}") from e
    return spec.attack_cls(config)


def attack_from_manifest(manifest: dict, track: str = "llm") -> Attack:
    """The attack that made a poison stage's output, as it was configured (``attack`` and ``attack_args`` of its
    ``manifest.json``)."""
    return build_attack(manifest["attack"], manifest.get("attack_args") or {}, track)


def eval_keys(track: str = "llm") -> list[str]:
    """Every eval key the attacks of ``track`` fill, in registration order (each evaluation writes them all)."""
    from ..registry import attacks

    keys: dict[str, None] = {}
    for spec in attacks(track).values():
        keys.update(dict.fromkeys(spec.attack_cls.eval_keys))
    return list(keys)
