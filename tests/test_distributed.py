"""Multi-process runs under ``accelerate launch`` with DeepSpeed ZeRO-3 on CPU (2 processes over gloo), as CI runs
them, compared step by step with single-process runs of the same stage.

Why the comparison is exact. Both runs see the same global batch in the same order: the single process takes batches
of 2b from one seeded permutation; each of the 2 ranks draws the *same* permutation (the sampler is seeded by the run's
seed, not by the rank) in batches of b and keeps every other one (accelerate's batch sharding: rank r takes batch
2k + r), so step k of the 2-rank run sees exactly the 2b examples of step k of the single run, split in two. Every
example has the same number of completion tokens
(label word + eos), so the mean of the two per-rank mean losses (what the gradient all-reduce averages) equals the mean
over all 2b examples. The learning rate is constant or follows the same step count (the step bound counts processes).
What remains is float summation order: the curves agree to ~1e-7, far inside the 1e-4 asserted here. Ranks that drew
the same retain batch, a budget spent once per rank (twice the steps), or a lost gradient shard would all break it.

The first DeepSpeed run in an environment JIT-compiles a communication op (~25 s), cached in TORCH_EXTENSIONS_DIR
(default here: ~/.cache/llm-unlearn/torch_extensions, so the checkout and later runs stay clean).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
CPU_CONFIG = ROOT / "recipes" / "accelerate_configs" / "cpu.yaml"
RTOL = 1e-4

UNLEARN = {
    "method": "neggrad_plus",
    "learning_rate": 1e-2,  # large enough that LoRA weights move visibly within a few steps
    "per_device_train_batch_size": 8,  # the single process; each of the 2 ranks gets half
    "budget": 1.0,
    "reference_compute_tokens": 5000.0,  # ~5 steps of 2 x 8 forget + 2 x 8 retain examples
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "progress": False,
    "seed": 3,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, args: list[str], timeout: int = 300, accelerate_config: str | None = None) -> None:
    """``accelerate launch --config_file cpu.yaml`` (2 processes, ZeRO-3, or ``accelerate_config``) in a subprocess;
    fails with its output."""
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "llm-unlearn" / "torch_extensions"))
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config or CPU_CONFIG)]
    cmd += ["--main_process_port", str(_free_port()), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    (tmp_path / "launch.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"accelerate launch failed:\n{(proc.stdout + proc.stderr)[-6000:]}"


def _write_config(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _curve(info: dict, key: str = "loss") -> list[float]:
    return [h[key] for h in info["log_history"] if key in h and "train_runtime" not in h]


def _assert_same_curves(dist: dict, single: dict) -> None:
    assert dist["num_processes"] == 2 and single["num_processes"] == 1
    assert dist["steps"] == single["steps"] >= 4
    for key in ("loss", "grad_norm"):
        a, b = _curve(dist, key), _curve(single, key)
        assert len(a) == len(b) == single["steps"]
        assert a == pytest.approx(b, rel=RTOL), key
    # The budget counts both ranks' tokens (each charged only its own half of every step).
    assert dist["compute_tokens"] == pytest.approx(single["compute_tokens"], rel=1e-12)


def _assert_same_tensors(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k].shape == b[k].shape and a[k].numel() > 0, k  # gathered, not ZeRO-3's empty placeholders
        assert (a[k].float() - b[k].float()).abs().max() <= atol, k


def test_accelerate_configs_parse_with_accelerate():
    """Every config loads with accelerate's own loader and says what its name promises."""
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {
        "cpu": ("DEEPSPEED", 3, "none"),
        "ddp": ("MULTI_GPU", None, None),
        "zero2": ("DEEPSPEED", 2, "none"),
        "zero3": ("DEEPSPEED", 3, "none"),
        "zero3_offload": ("DEEPSPEED", 3, "cpu"),
    }
    found = {p.stem for p in CPU_CONFIG.parent.glob("*.yaml")}
    assert found == set(expected)
    for name, (dist, stage, offload) in expected.items():
        cfg = load_config_from_file(str(CPU_CONFIG.parent / f"{name}.yaml"))
        assert str(cfg.distributed_type).endswith(dist), name
        assert cfg.use_cpu is False, name  # use_cpu / --cpu would switch DeepSpeed off
        assert cfg.mixed_precision == "no", name  # precision comes from the stage config's bf16
        if stage is not None:
            ds = cfg.deepspeed_config
            assert ds["zero_stage"] == stage and ds["offload_optimizer_device"] == offload, name
            assert "deepspeed_config_file" not in ds, name  # inline settings, no relative JSON path
            assert ds.get("zero3_save_16bit_model", False) is (stage == 3), name  # gather whole weights on save
    assert load_config_from_file(str(CPU_CONFIG)).num_processes == 2


def test_zero3_training_matches_single_process(tmp_path, tiny_dir, gaussian_dir):
    """`accelerate launch ... -m llm_unlearn train`: the Gaussian-poisoned initial model (noise added in embedding
    space on every rank's batches) trains like the single-process run; the gathered model loads back, same weights."""
    from safetensors.torch import load_file

    from llm_unlearn.stages.train import TrainConfig, main

    base = {
        "model_name_or_path": tiny_dir,
        "dataset_dir": gaussian_dir,
        "split": "train",
        "num_train_epochs": 1.0,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "warmup_ratio": 0.0,
        "group_by_length": False,  # length groups are formed per device batch, so they differ between 8 and 16
        "logging_steps": 1,
        "progress": False,
        "seed": 1,
        # 120 examples: drop the incomplete last batch in both runs (accelerate would pad the 2-rank one by repeating)
        "trainer_args": {"dataloader_drop_last": True},
    }
    single = main(TrainConfig(**base, output_dir=str(tmp_path / "single"), per_device_train_batch_size=16))
    config = _write_config(tmp_path / "train.yaml", {**base, "per_device_train_batch_size": 8})
    dist = tmp_path / "zero3"
    _launch(tmp_path, ["-m", "llm_unlearn", "train", "--config", config, "--output_dir", str(dist)])

    info = json.loads((dist / "training_info.json").read_text())
    _assert_same_curves(info, json.loads((single / "training_info.json").read_text()))
    assert info["noise_std"] > 0
    assert (dist / ".complete").is_file() and not (dist / "training_args.bin").exists()
    _assert_same_tensors(load_file(dist / "model.safetensors"), load_file(single / "model.safetensors"))
    from llm_unlearn.modeling import load_model

    load_model(str(dist))  # a plain from_pretrained of the gathered weights


def first_retain_batches(cfg, n: int = 3) -> list[list[int]]:
    """The retain-example indices of the first ``n`` batches of this process's training dataloader (the Trainer's own,
    built exactly as the unlearn stage builds it)."""
    from llm_unlearn.modeling import load_dataset_dir, load_model, load_tokenizer, tokenize_split
    from llm_unlearn.stages.unlearn import build_trainer

    dd, _ = load_dataset_dir(cfg.dataset_dir)
    tok = load_tokenizer(cfg.model_dir)
    forget, retain = (tokenize_split(dd[s], tok, cfg.max_length) for s in ("forget", "retain"))
    trainer = build_trainer(cfg, load_model(cfg.model_dir), tok, forget, retain, 1e9)
    return [b["retain"]["index"].tolist() for _, b in zip(range(n), trainer.get_train_dataloader())]


# Runs inside one `accelerate launch` (one start-up and DeepSpeed init instead of two): the LoRA run through the CLI
# entry point (`python -m llm_unlearn` calls exactly `cli.main`), then each rank's first retain batches, then the
# full-parameter run.
DRIVER = """
import json, os, sys
from pathlib import Path

sys.path.insert(0, "tests")
from test_distributed import first_retain_batches

from llm_unlearn import cli
from llm_unlearn.configs import build_config
from llm_unlearn.stages.unlearn import UnlearnConfig, main

lora_yaml, lora_out, npo_json, batches = sys.argv[1:]
if cli.main(["unlearn", "--config", lora_yaml, "--output_dir", lora_out]) != 0:
    sys.exit("the LoRA unlearn command failed")
cfg = build_config(UnlearnConfig, json.loads(Path(npo_json).read_text()))
Path(f"{batches}_rank{os.environ['RANK']}.json").write_text(json.dumps(first_retain_batches(cfg)))
main(cfg)
"""


@pytest.fixture(scope="module")
def zero3_unlearning(tmp_path_factory, trained_dirs, gaussian_dir):
    """Two unlearning runs under ZeRO-3 with 2 processes: LoRA NegGrad+ and full-parameter NPO (reference model)."""
    initial, _ = trained_dirs
    root = tmp_path_factory.mktemp("zero3_unlearn")
    lora = {**UNLEARN, "model_dir": initial, "dataset_dir": gaussian_dir, "use_peft": True}
    npo = {**lora, "method": "npo", "learning_rate": 1e-3, "use_peft": False}
    lora_yaml = _write_config(root / "lora.yaml", {**lora, "per_device_train_batch_size": 4})
    (root / "npo.json").write_text(
        json.dumps({**npo, "per_device_train_batch_size": 4, "output_dir": str(root / "npo")})
    )
    (root / "driver.py").write_text(DRIVER)
    args = [str(root / "driver.py"), lora_yaml, str(root / "lora"), str(root / "npo.json"), str(root / "batches")]
    _launch(root, args)
    return root, lora, npo


def test_zero3_lora_unlearning_matches_single_process(tmp_path, zero3_unlearning):
    """The `unlearn` command with a LoRA adapter under ZeRO-3: same loss curve, same budget spent, and the adapter
    saved under ZeRO-3 loads back onto the initial model with the single-process adapter's weights."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from llm_unlearn.modeling import load_model
    from llm_unlearn.stages.unlearn import UnlearnConfig, main

    root, lora, _ = zero3_unlearning
    dist = root / "lora"
    single = main(UnlearnConfig(**lora, output_dir=str(tmp_path / "single")))
    info = json.loads((dist / "unlearn_info.json").read_text())
    _assert_same_curves(info, json.loads((single / "unlearn_info.json").read_text()))
    assert info["use_peft"] and (dist / ".complete").is_file()
    a, b = load_file(dist / "adapter_model.safetensors"), load_file(single / "adapter_model.safetensors")
    _assert_same_tensors(a, b)
    assert any(float(t.abs().max()) > 0 for k, t in a.items() if "lora_B" in k)  # it did train
    PeftModel.from_pretrained(load_model(lora["model_dir"]), str(dist))


def test_zero3_full_parameter_reference_model(tmp_path, zero3_unlearning):
    """Full-parameter NPO under ZeRO-3: the frozen reference model is a separate load prepared by DeepSpeed (sharded
    like the trained one), not the LoRA-disabled model; curves and gathered weights equal the single-process run's."""
    from safetensors.torch import load_file

    from llm_unlearn.stages.unlearn import UnlearnConfig, main

    root, _, npo = zero3_unlearning
    single = main(UnlearnConfig(**npo, output_dir=str(tmp_path / "single")))
    info = json.loads((root / "npo" / "unlearn_info.json").read_text())
    _assert_same_curves(info, json.loads((single / "unlearn_info.json").read_text()))
    assert not info["use_peft"]
    _assert_same_tensors(load_file(root / "npo" / "model.safetensors"), load_file(single / "model.safetensors"))


def test_ranks_draw_disjoint_retain_batches(tmp_path, zero3_unlearning):
    """Each rank's retain batches (the Trainer's dataloader under `accelerate launch`) are disjoint from the other's,
    and together they are exactly the single process's batch of the same step: one seeded order, sharded by rank."""
    from llm_unlearn.stages.unlearn import UnlearnConfig

    root, _, npo = zero3_unlearning
    expected = first_retain_batches(UnlearnConfig(**npo, output_dir=str(tmp_path / "order")))
    ranks = [json.loads((root / f"batches_rank{r}.json").read_text()) for r in (0, 1)]
    assert len(expected) == 3
    for step, want in enumerate(expected):
        r0, r1 = ranks[0][step], ranks[1][step]
        assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)
        assert sorted(r0 + r1) == sorted(want)
