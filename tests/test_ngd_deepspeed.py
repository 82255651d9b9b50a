"""NGD under DeepSpeed ZeRO-2 and ZeRO-3 (2 CPU processes through `accelerate launch`): the noise is applied after the
engine's own step, to the fp32 master partition each rank owns and to the model's copy, so a 2-rank run ends with the
weights of the single-process run (which adds exactly -lr * sigma * z per step: tests/test_method_updates.py).

Before, the noise was added to ``.grad`` in ``on_pre_optimizer_step``; under accelerate's DeepSpeed wrapper the engine
has already stepped by then (and ZeRO-3 parameters have no ``.grad``), so NGD ran as plain GD: these runs then match
the single-process GD run instead. The sigma here is large (lr * sigma = 1e-2 per step, as large as Adam's own first
steps) so the two are far apart.
"""

from __future__ import annotations

import json

import pytest
import yaml
from test_distributed import CPU_CONFIG, _assert_same_tensors, _launch, _write_config

NGD = {
    "method": "ngd",
    "method_args": {"sigma": 1.0},
    "learning_rate": 1e-2,
    "per_device_train_batch_size": 8,  # the single process; each of the 2 ranks gets half
    "budget": 1.0,
    "reference_compute_tokens": 3000.0,  # ~3 steps of 16 retain examples
    "lr_scheduler_type": "linear",  # the noise follows the step's learning rate, which falls over the budget
    "use_peft": False,
    "logging_steps": 1,
    "progress": False,
    "seed": 5,
}


def _accelerate_config(tmp_path, stage: int, processes: int) -> str:
    cfg = yaml.safe_load(CPU_CONFIG.read_text())
    cfg["deepspeed_config"]["zero_stage"] = stage
    cfg["deepspeed_config"]["zero3_save_16bit_model"] = stage == 3
    cfg["num_processes"] = processes
    return _write_config(tmp_path / f"zero{stage}_{processes}.yaml", cfg)


# One process under ZeRO-3: a small parameter's whole copy is then the same memory as its partition, where a second
# subtraction once applied the last step's noise twice (caught by scripts/gpu_checks.sh's dry run).
@pytest.mark.parametrize(("stage", "processes"), [(2, 2), (3, 2), (3, 1)], ids=["zero2", "zero3", "zero3-1proc"])
def test_ngd_noise_under_deepspeed_matches_single_process(tmp_path, tiny_dir, gaussian_dir, stage, processes):
    from safetensors.torch import load_file

    from llm_unlearn.stages.unlearn import UnlearnConfig, main

    base = {**NGD, "model_dir": tiny_dir, "dataset_dir": gaussian_dir}
    single = main(UnlearnConfig(**base, output_dir=str(tmp_path / "single")))
    gd = main(UnlearnConfig(**{**base, "method": "gd", "method_args": {}}, output_dir=str(tmp_path / "gd")))
    config = _write_config(tmp_path / "ngd.yaml", {**base, "per_device_train_batch_size": 8 // processes})
    dist = tmp_path / f"zero{stage}"
    accel = _accelerate_config(tmp_path, stage, processes)
    _launch(
        tmp_path,
        ["-m", "llm_unlearn", "unlearn", "--config", config, "--output_dir", str(dist)],
        accelerate_config=accel,
    )
    info = json.loads((dist / "unlearn_info.json").read_text())
    assert info["num_processes"] == processes and info["steps"] >= 2
    assert info["steps"] == json.loads((single / "unlearn_info.json").read_text())["steps"]
    got, want = load_file(dist / "model.safetensors"), load_file(single / "model.safetensors")
    _assert_same_tensors(got, want)
    plain = load_file(gd / "model.safetensors")
    # GD's weights are far from NGD's: the noise (about lr * sigma = 1e-2 per entry and step) was really added.
    gap = max(float((got[k].float() - plain[k].float()).abs().max()) for k in got)
    assert gap > 1e-2
