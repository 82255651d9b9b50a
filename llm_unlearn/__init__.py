"""llm-unlearn: did machine unlearning really remove a data-poisoning attack from this model?

The Python API mirrors the CLI (heavy packages load on first use)::

    from llm_unlearn import ExperimentConfig, run_experiment
    report = run_experiment("recipes/tiny/llm_gaussian.yaml", output_dir="runs/gaussian")

Stages are importable one by one (``llm_unlearn.stages.{poison,train,unlearn,evaluate,report}``: a config dataclass
and ``main(config)``); ``METHODS`` and ``ATTACKS`` are the registries; ``gaussian_scores``/``gus_summary`` the audit,
and ``gaussian_unlearning_score`` the audit of a model held in memory.

Every method is also a TRL-shaped pair for a model held in memory (``METHODS[name].config_cls``/``trainer_cls``)::

    from llm_unlearn import NPOConfig, NPOTrainer

    args = NPOConfig(output_dir="out", beta=0.1, learning_rate=1e-4, per_device_train_batch_size=8, max_steps=10)
    trainer = NPOTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=retain,
                         processing_class=tokenizer)  # prompt/completion rows; peft_config=LoraConfig(...) for LoRA
    trainer.train()

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
    "gaussian_unlearning_score": ("llm_unlearn.attacks.gaussian", "gaussian_unlearning_score"),
    "UnlearnArguments": ("llm_unlearn.methods.arguments", "UnlearnArguments"),
    "GaussianCanaries": ("llm_unlearn.canaries", "GaussianCanaries"),
    "audit": ("llm_unlearn.auditing", "audit"),
    "AuditResult": ("llm_unlearn.auditing", "AuditResult"),
}
# TRL-shaped pairs, one per built-in method: ``NPOConfig`` (TrainingArguments + the method's knobs, derived from its
# knob dataclass; found in llm_unlearn.methods) and ``NPOTrainer``. A plugin's are ``METHODS[name].config_cls`` and
# ``METHODS[name].trainer_cls``.
_METHOD_MODULES = {
    "CFK": "cf_k",
    "EUK": "eu_k",
    "GA": "ga",
    "GD": "gd",
    "GradDiff": "graddiff",
    "NegGradPlus": "neggrad_plus",
    "NGD": "ngd",
    "NPO": "npo",
    "RMU": "rmu",
    "SCRUB": "scrub",
    "SimNPO": "simnpo",
    "SSD": "ssd",
}
for _stem, _module in _METHOD_MODULES.items():
    _LAZY[f"{_stem}Config"] = ("llm_unlearn.methods", f"{_stem}Config")
    _LAZY[f"{_stem}Trainer"] = (f"llm_unlearn.methods.{_module}", f"{_stem}Trainer")
del _stem, _module

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'llm_unlearn' has no attribute {name!r}")
