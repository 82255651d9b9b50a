"""Push one model of a ``llm-unlearn run`` to the Hugging Face Hub with a model card that says what was measured.

The folder is a model dir inside a run: ``RUN/seed_<s>/unlearn/<variant>`` (an unlearned adapter or model),
``RUN/seed_<s>/initial`` (trained on the poisoned set) or ``RUN/seed_<s>/retrain`` (the gold model). From its place
in the run we find the experiment (``RUN/experiment.yaml``), the poison manifest and the model's row of
``RUN/results.json`` (written by ``run``/``report``). The staged folder holds exactly what is uploaded:

- the weights as safetensors only (``adapter_model.safetensors`` + ``adapter_config.json``, or
  ``model*.safetensors`` + ``config.json``), ``generation_config.json``, the tokenizer files;
- ``results.json``: the run's config and environment and the rows of this seed's initial, gold and this model;
- ``README.md``: a model card (base model, datasets, attack, method, budget, seeds) whose ``model-index`` holds the
  measured metrics (clean accuracy, ASR, GUS z/p, gap closed), readable by ``ModelCard.load(...).data.eval_results``.

The token comes from ``HF_TOKEN`` or the ``hf auth login`` store through ``huggingface_hub`` itself: this module
only checks that one exists and never reads it into anything it prints or writes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .configs import ConfigError
from .files import read_json

# Files copied from a model dir (besides *.safetensors): configs and tokenizer files, never pickles.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Model-index entries: (metrics key, metric_type, human name). None values are left out.
CARD_METRICS = (
    ("clean_accuracy", "accuracy", "clean accuracy"),
    ("asr", "attack_success_rate", "attack success rate"),
    ("gus_mean", "gus_mean", "Gaussian Unlearning Score (mean I_z)"),
    ("gus_z", "gus_z", "GUS z-statistic"),
    ("gus_p", "gus_p", "GUS p-value (two-sided)"),
    ("gap_closed", "gap_closed", "gap closed vs retraining"),
    ("mia_auc", "mia_auc", "loss-MIA AUC"),
)


@dataclass
class ModelInfo:
    """Where a model dir sits in its run and what was measured on it."""

    folder: Path
    run_dir: Path
    seed: int
    variant: str  # "initial" | "retrain" | the unlearn variant id (e.g. npo_b0.1)
    kind: str  # "adapter" | "model"
    experiment: dict
    manifest: dict
    row: dict
    rows: list[dict]  # this seed's initial, retrain and this model
    results: dict  # the run's results.json


def _nested_variant(p: Path) -> str:
    """The model id of a nested budget's model ``unlearn/<run id>/at_budget_<f>``: the run's id with its budget
    replaced by f (ids are ``<method>_b<budget>`` plus the grid point's suffix)."""
    try:
        top, mine = read_json(p.parent / "unlearn_info.json"), read_json(p / "unlearn_info.json")
    except (OSError, ValueError) as e:
        raise ConfigError(f"folder: {str(p)!r} is a nested budget's model without a readable unlearn_info.json") from e
    prefix = f"{top['method']}_b{top['budget']:g}"
    if not p.parent.name.startswith(prefix):
        raise ConfigError(f"folder: {str(p)!r} is not inside an unlearning run of this toolkit's layout")
    return f"{mine['method']}_b{mine['budget']:g}" + p.parent.name[len(prefix) :]


def locate(folder: str | os.PathLike) -> ModelInfo:
    """Resolve a model dir inside a run, or raise a ConfigError that says what a valid folder looks like."""
    p = Path(folder).expanduser().resolve()
    if not p.is_dir():
        raise ConfigError(f"folder: {str(folder)!r} is not a directory")
    if (p / "experiment.yaml").is_file():
        choices = sorted(str(d.relative_to(p)) for d in p.glob("seed_*/*") if d.name in ("initial", "retrain"))
        choices += sorted(str(d.relative_to(p)) for d in p.glob("seed_*/unlearn/*") if d.is_dir())
        choices += sorted(str(d.relative_to(p)) for d in p.glob("seed_*/unlearn/*/at_budget_*") if d.is_dir())
        raise ConfigError(
            f"folder: {str(folder)!r} is a whole run; push one of its models, e.g. {choices[:6]} (relative to it)"
        )
    if p.parent.name == "unlearn" and p.parent.parent.name.startswith("seed_"):
        seed_dir, variant = p.parent.parent, p.name
    elif p.name.startswith("at_budget_") and p.parent.parent.name == "unlearn":
        seed_dir, variant = p.parent.parent.parent, _nested_variant(p)
    elif p.name in ("initial", "retrain") and p.parent.name.startswith("seed_"):
        seed_dir, variant = p.parent, p.name
    else:
        raise ConfigError(
            f"folder: {str(folder)!r} is not a model dir of a `llm-unlearn run` (expected RUN/seed_<s>/initial, "
            "RUN/seed_<s>/retrain or RUN/seed_<s>/unlearn/<variant>)"
        )
    run_dir = seed_dir.parent
    try:
        seed = int(seed_dir.name.removeprefix("seed_"))
    except ValueError as e:
        raise ConfigError(f"folder: {seed_dir.name!r} is not a seed_<int> dir") from e
    if not (run_dir / "experiment.yaml").is_file():
        raise ConfigError(f"folder: the run dir {str(run_dir)!r} holds no experiment.yaml")
    if not (p / ".complete").is_file():
        raise ConfigError(f"folder: {str(folder)!r} is not complete (its stage did not finish)")
    if (p / "adapter_config.json").is_file() and any(p.glob("adapter_model*.safetensors")):
        kind = "adapter"
    elif (p / "config.json").is_file() and any(p.glob("model*.safetensors")):
        kind = "model"
    else:
        raise ConfigError(f"folder: {str(folder)!r} holds no safetensors model or adapter (a diverged run saves none)")
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise ConfigError(
            f"folder: {str(run_dir)!r} has no results.json yet; run `llm-unlearn report --run_dir {run_dir}` first"
        )
    results = read_json(results_path)
    rows = [r for r in results.get("rows", []) if r.get("seed") == seed and not r.get("relearn_steps")]
    mine = [r for r in rows if _variant(r) == variant]
    if not mine:
        raise ConfigError(f"folder: results.json has no row for seed {seed}, model {variant!r}; rerun the report")
    keep = {"initial", "retrain", variant}
    return ModelInfo(
        folder=p,
        run_dir=run_dir,
        seed=seed,
        variant=variant,
        kind=kind,
        experiment=yaml.safe_load((run_dir / "experiment.yaml").read_text()) or {},
        manifest=read_json(seed_dir / "poison" / "manifest.json"),
        row=mine[0],
        rows=[r for r in rows if _variant(r) in keep],
        results=results,
    )


def _variant(row: dict) -> str:
    # Older results.json rows carry no "variant": the model id was <method>_b<budget>.
    if row.get("variant"):
        return row["variant"]
    return row["method"] if row.get("budget") is None else f"{row['method']}_b{row['budget']:g}"


def _hub_id(name) -> str | None:
    """``name`` if it looks like a Hub repo id (not ``embedded:...``, not a local path), else None."""
    if not isinstance(name, str) or not name or ":" in name or name.startswith((".", "/", "~")) or Path(name).exists():
        return None
    return name


def card_data(info: ModelInfo, repo_id: str, base_repo_id: str | None = None):
    """The card's YAML metadata (``huggingface_hub.ModelCardData``) with a ``model-index`` of the row's metrics."""
    from huggingface_hub import EvalResult, ModelCardData

    exp, man, m = info.experiment, info.manifest, info.row.get("metrics", {})
    poison = exp.get("poison", {})
    dataset_id = _hub_id(poison.get("dataset_name"))
    dataset_type = dataset_id or str(poison.get("dataset_name", "unknown")).replace(":", "-")
    results = []
    for key, metric_type, name in CARD_METRICS:
        value = m.get(key)
        if value is None or (isinstance(value, float) and value != value):  # None or NaN: not measured
            continue
        results.append(
            EvalResult(
                task_type="text-classification",
                task_name=f"sentiment under a {man['attack']} poisoning attack",
                dataset_type=dataset_type,
                dataset_name=f"{poison.get('dataset_name')} ({man['attack']} poisons, seed {info.seed})",
                dataset_split="test" if key in ("clean_accuracy", "asr") else "forget",
                metric_type=metric_type,
                metric_name=name,
                metric_value=float(value),
            )
        )
    base = base_repo_id if info.kind == "adapter" else None
    base = base or _hub_id(exp.get("model_name_or_path"))
    return ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=base,
        datasets=[dataset_id] if dataset_id else None,
        library_name="peft" if info.kind == "adapter" else "transformers",
        tags=["llm-unlearn", "machine-unlearning", "data-poisoning", man["attack"], info.row.get("method", "")],
        eval_results=results or None,
    )


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v + 0.0:.4g}" if isinstance(v, float) else str(v)  # + 0.0: no "-0"


def render_card(info: ModelInfo, repo_id: str, base_repo_id: str | None = None) -> str:
    """README.md: YAML metadata with the model-index, then what this model is and how it was measured."""
    from .attacks import attack_from_manifest

    data = card_data(info, repo_id, base_repo_id)
    exp, man, row = info.experiment, info.manifest, info.row
    poison, method = exp.get("poison", {}), row.get("method")
    args = row.get("metrics", {}).get("method_args")
    what = {
        "initial": "the **initial** model: fine-tuned on the poisoned training set",
        "retrain": "the **gold (retrained)** model: fine-tuned on the retain set only (the poisons removed)",
    }.get(info.variant, f"the initial model after **unlearning** with `{method}` at budget {row.get('budget')}")
    attack = attack_from_manifest(man, "llm").describe()  # the attack's own line, from what made the poisons
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"Produced by llm-unlearn, which reproduces *Machine Unlearning Fails to Remove Data "
        f"Poisoning Attacks* (Pawelczyk et al., ICLR 2025). This is {what}.",
        "",
        "| | |",
        "|---|---|",
        f"| pretrained model | `{exp.get('model_name_or_path')}` |",
        f"| dataset | `{poison.get('dataset_name')}` |",
        f"| attack | {man['attack']} on {poison.get('poison_fraction')} of the training set ({attack}) |",
        f"| method | {method}{' ' + json.dumps(args) if args else ''} |",
        f"| budget | {_fmt(row.get('budget'))} of the retraining compute "
        f"(spent: {_fmt(row.get('metrics', {}).get('compute_fraction'))}) |",
        f"| seed | {info.seed} (run seeds: {exp.get('seeds')}) |",
        f"| weights | {'LoRA adapter (peft)' if info.kind == 'adapter' else 'full model'}, safetensors |",
        "",
        "## Measured (this seed)",
        "",
        "| model | clean accuracy | ASR | GUS mean | GUS z | GUS p | gap closed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in info.rows:
        m = r.get("metrics", {})
        cells = [m.get(k) for k in ("clean_accuracy", "asr", "gus_mean", "gus_z", "gus_p", "gap_closed")]
        lines.append(f"| {_variant(r)} | " + " | ".join(_fmt(c) for c in cells) + " |")
    lines += [
        "",
        "Gap closed = (M(initial) - M(this)) / (M(initial) - M(gold)) on the attack's metric (GUS mean for the "
        "Gaussian attack, ASR for the backdoor): 1 = as good as retraining, 0 = no effect. GUS z far from 0 means "
        "the model still carries the Gaussian poisons. `results.json` holds every metric of these rows.",
    ]
    if info.kind == "adapter":
        lines += [
            "",
            "## Loading",
            "",
            "The adapter sits on the run's initial model"
            + (f" (`{data.base_model}`)." if data.base_model else " (push it too with `llm-unlearn push`).")
            + " `PeftModel.from_pretrained(initial_model, repo_id)` loads it.",
        ]
    from huggingface_hub import ModelCard

    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))


def stage(info: ModelInfo, dest: Path, repo_id: str, base_repo_id: str | None = None) -> list[str]:
    """Write the upload folder into ``dest`` (which must not exist); returns the file names."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for f in sorted(info.folder.iterdir()):
            if f.is_file() and (f.suffix == ".safetensors" or f.name in MODEL_FILES):
                shutil.copy2(f, tmp / f.name)
        if info.kind == "adapter":
            cfg = json.loads((tmp / "adapter_config.json").read_text())
            # The local path of the run's initial model means nothing on the Hub (and leaks the local layout).
            cfg["base_model_name_or_path"] = base_repo_id
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        results = {"config": info.results.get("config"), "environment": info.results.get("environment")}
        results["rows"] = info.rows
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "README.md").write_text(render_card(info, repo_id, base_repo_id))
        bad = [f.name for f in tmp.iterdir() if f.suffix in PICKLE_SUFFIXES]
        if bad:  # cannot happen with the filter above; a guard against future edits
            raise RuntimeError(f"refusing to upload pickle files {bad}")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(f.name for f in dest.iterdir())
