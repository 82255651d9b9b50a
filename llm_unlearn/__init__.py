"""llm-unlearn: did machine unlearning really remove a data-poisoning attack from this model?

The Python API mirrors the CLI (heavy packages load on first use)::

    from llm_unlearn import ExperimentConfig, run_experiment
    report = run_experiment("recipes/tiny/llm_gaussian.yaml", output_dir="runs/gaussian")

Stages are importable one by one (``llm_unlearn.stages.{poison,train,unlearn,evaluate,report}``: a config dataclass
and ``main(config)``); ``METHODS`` and ``ATTACKS`` are the registries; ``gaussian_scores``/``gus_summary`` the audit.

A method from outside is one class in one file (``--plugins [my_module]`` or the ``llm_unlearn.plugins`` entry point
makes the CLI and every worker import it)::

    from llm_unlearn import UnlearnTrainer, register_method

    @register_method("half_gd", config=HalfGDConfig)
    class HalfGDTrainer(UnlearnTrainer):
        reads_forget = False
        def unlearn_loss(self, model, forget, retain):
            return self.method_cfg.scale * self.nll(model, retain)
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "ExperimentConfig": ("llm_unlearn.stages.run", "ExperimentConfig"),
    "run_experiment": ("llm_unlearn.stages.run", "run_experiment"),
    "run_experiments": ("llm_unlearn.stages.run", "run_experiments"),
    "PoisonConfig": ("llm_unlearn.stages.poison", "PoisonConfig"),
    "TrainConfig": ("llm_unlearn.stages.train", "TrainConfig"),
    "UnlearnConfig": ("llm_unlearn.stages.unlearn", "UnlearnConfig"),
    "EvalConfig": ("llm_unlearn.stages.evaluate", "EvalConfig"),
    "ReportConfig": ("llm_unlearn.stages.report", "ReportConfig"),
    "METHODS": ("llm_unlearn.methods", "METHODS"),
    "UnlearnTrainer": ("llm_unlearn.methods.base", "UnlearnTrainer"),
    "register_method": ("llm_unlearn.registry", "register_method"),
    "register_attack": ("llm_unlearn.registry", "register_attack"),
    "load_plugins": ("llm_unlearn.registry", "load_plugins"),
    "ATTACKS": ("llm_unlearn.attacks", "ATTACKS"),
    "gaussian_scores": ("llm_unlearn.metrics", "gaussian_scores"),
    "gus_summary": ("llm_unlearn.metrics", "gus_summary"),
    "ConfigError": ("llm_unlearn.configs", "ConfigError"),
    "build_config": ("llm_unlearn.configs", "build_config"),
    "save_tiny": ("llm_unlearn.embedded", "save_tiny"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'llm_unlearn' has no attribute {name!r}")
