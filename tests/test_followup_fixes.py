"""Regression tests: CF-k/EU-k/RMU keep the frozen blocks' BatchNorm statistics fixed, SSD's budget counts every
process, and HF generation is greedy whatever the checkpoint's generation_config says."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch


def _image_trainer(tmp_path, method: str, budget: float, method_args=None, arch: str = "resnet18"):
    """A method's trainer on a tiny classifier saved to disk and random 8x8 images, built as the image unlearn stage
    builds it: 8 forget and 32 retain examples, batches of 4."""
    from image_track.data import Split
    from image_track.models import ModelConfig, build_model, save_model
    from image_track.task import TASK, ImageUnlearnConfig

    model = build_model(ModelConfig(arch=arch, width=4, hidden=8), [3, 8, 8], 3, [0.5] * 3, [0.25] * 3, seed=0)
    save_model(model, tmp_path / "initial")
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g), torch.arange(n))

    cfg = ImageUnlearnConfig(
        model_dir=str(tmp_path / "initial"),
        output_dir=str(tmp_path / method),
        method=method,
        method_args=method_args or {},
        learning_rate=0.05,
        per_device_train_batch_size=4,
    )
    model = TASK.prepare_model(cfg)
    return TASK.build_trainer(cfg, model, split(8), split(32), budget), model


@pytest.mark.parametrize(
    ("method", "method_args", "trained"),
    [("cf_k", {"k": 2}, {4, 5}), ("eu_k", {"k": 2}, {4, 5}), ("rmu", {"layer_id": -2, "trainable_layers": [-2]}, {4})],
)
def test_frozen_blocks_keep_their_batchnorm_statistics(tmp_path, method, method_args, trained):
    trainer, model = _image_trainer(tmp_path, method, budget=1e9, method_args=method_args)
    trainer.args.max_steps = 4
    blocks = model.blocks  # resnet18: stem, four stages (BatchNorm everywhere), head
    before = [{n: b.clone() for n, b in block.named_buffers()} for block in blocks]
    trainer.train()
    assert trainer.state.global_step == 4
    for i, block in enumerate(blocks):
        moved = [n for n, b in block.named_buffers() if not torch.equal(b, before[i][n])]
        if i in trained:  # running_mean/var and num_batches_tracked of every BatchNorm (the head has none)
            assert len(moved) == len(before[i]), f"trained block {i}: only {moved} of {sorted(before[i])} moved"
        else:
            assert not moved, f"frozen block {i}: buffers moved: {moved}"
    assert any(before[i] for i in trained)  # there are BatchNorm statistics to watch in the trained part
    assert model.blocks[0].training is False  # the stem stays in eval mode however often the Trainer calls train()


def test_ssd_budget_is_the_spend_summed_over_processes(tmp_path, monkeypatch):
    from llm_unlearn.methods import ssd

    # Each Fisher batch charges 4 forget + 4 retain examples: a budget of 48 is 6 batches on one process, 3 when a
    # second process spends as much (simulated: the collective sum doubles this rank's spend).
    trainer, _ = _image_trainer(tmp_path, "ssd", budget=48.0, arch="mlp")
    assert trainer.train().metrics["ssd_fisher_batches"] == 6
    seen = []

    def two_ranks_sum(accelerator, value):
        seen.append(value)
        return 2.0 * value

    monkeypatch.setattr(ssd, "all_ranks_sum", two_ranks_sum, raising=False)
    trainer, _ = _image_trainer(tmp_path / "two", "ssd", budget=48.0, arch="mlp")
    assert trainer.train().metrics["ssd_fisher_batches"] == 3
    assert trainer.compute_tokens == 24.0 and seen == [0.0, 8.0, 16.0, 24.0]  # this rank's own spend, every batch


@pytest.fixture(scope="module")
def tiny_lm():
    from llm_unlearn.embedded import TinyModelConfig, build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer(vocab_size=400, corpus_reviews=300)
    shape = TinyModelConfig(
        vocab_size=400, hidden_size=64, num_attention_heads=1, num_hidden_layers=1, intermediate_size=128
    )
    return tok, build_tiny_model(tok, shape, seed=0).eval()


def _argmax_loop(model, prompt: list[int], n: int, stops: list[int]) -> list[int]:
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            out.append(nxt)
            if nxt in stops:
                break
    return out


def test_hf_generation_ignores_the_checkpoints_sampling_config(tiny_lm):
    import transformers

    from llm_unlearn.generation import stop_token_ids
    from llm_unlearn.generation.hf import generate_ids

    tok, model = tiny_lm
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 9, (8,), generator=g).tolist()
    prompts = [[tok.bos_token_id] + torch.randint(5, len(tok), (n,), generator=g).tolist() for n in lengths]
    plain = generate_ids(model, tok, prompts, max_new_tokens=6, batch_size=4)
    stops = stop_token_ids(tok, model.generation_config.eos_token_id)
    assert plain == [_argmax_loop(model, p, 6, stops) for p in prompts]

    # What a Hub checkpoint ships: sampling on, a high temperature, a repetition penalty, a suppressed token (the
    # first greedy answer of prompt 0). None of it may reach the evaluation.
    hot = copy.deepcopy(model)
    hot_config = hot.generation_config
    hot_config.do_sample, hot_config.temperature, hot_config.repetition_penalty = True, 5.0, 2.0
    hot_config.suppress_tokens = [plain[0][0]]
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    lib_logger = transformers.utils.logging.get_logger("transformers")
    lib_logger.addHandler(handler)
    transformers.utils.logging.warning_once.cache_clear()  # a warning already given once would be silent here
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hot_out = [generate_ids(hot, tok, prompts, max_new_tokens=6, batch_size=4) for _ in range(2)]
    finally:
        lib_logger.removeHandler(handler)
    assert hot_out == [plain, plain]
    assert hot.generation_config is hot_config and hot_config.temperature == 5.0  # the model's own config is kept
    messages = [r.getMessage() for r in records if r.levelno >= logging.WARNING] + [str(w.message) for w in caught]
    flags = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "sampl")
    assert not [m for m in messages if any(f in m for f in flags)], messages
