"""Image-track stages: each a config dataclass + ``main(config)`` writing one output dir (same contract as
``llm_unlearn.stages``: resolved ``config.yaml``, artifacts, then the ``.complete`` marker)."""
