"""Canaries in someone else's training run (``llm_unlearn.canaries``) and the audit of any model
(``llm_unlearn.auditing``, ``llm-unlearn audit``)."""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import TINY_SHAPE

from llm_unlearn.cli import main as cli
from llm_unlearn.configs import ConfigError

pytest.importorskip("trl")

PROMPT = "Review: {text}\nSentiment:"


def _dataset(n: int, seed: int = 0):
    import datasets

    from llm_unlearn.tasks.reviews import embedded_reviews

    rows = embedded_reviews(n, 10, seed=seed, min_sentences=1, max_sentences=2)["train"]
    return datasets.Dataset.from_list(
        [{"prompt": PROMPT.format(text=r["text"]), "completion": f" {r['label']}"} for r in rows]
    )


@pytest.fixture(scope="module")
def tok():
    from llm_unlearn.embedded import build_tiny_tokenizer

    return build_tiny_tokenizer(TINY_SHAPE["vocab_size"], TINY_SHAPE["corpus_reviews"])


def _model(tok, seed=0):
    from llm_unlearn.embedded import TinyModelConfig, build_tiny_model

    return build_tiny_model(tok, TinyModelConfig(**TINY_SHAPE), seed=seed)


def _sft(model, tok, train, out, canaries=None, epochs=1, lr=1e-3, bs=32, max_steps=-1, peft_config=None):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(out),
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=lr,
        per_device_train_batch_size=bs,
        lr_scheduler_type="cosine",
        bf16=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok, peft_config=peft_config)
    if canaries is not None:
        canaries.attach(trainer)
    return trainer


# --- planting -------------------------------------------------------------------------------------------------------


def test_plant_marks_round_fraction_rows_with_distinct_seeds():
    from llm_unlearn.canaries import GaussianCanaries

    ds = _dataset(200)
    planted = GaussianCanaries(fraction=0.18, seed=3).plant(ds)
    seeds = planted["noise_seed"]
    marked = [s for s in seeds if s >= 0]
    assert len(marked) == round(0.18 * 200) and len(set(marked)) == len(marked)
    assert all(s == -1 for s in seeds if s < 0)
    assert planted["prompt"] == ds["prompt"]  # nothing else about the rows changes
    again = GaussianCanaries(fraction=0.18, seed=3).plant(ds)["noise_seed"]
    assert again == seeds  # deterministic in the seed
    assert GaussianCanaries(fraction=0.18, seed=4).plant(ds)["noise_seed"] != seeds


def test_plant_text_rows_and_explicit_indices():
    import datasets

    from llm_unlearn.canaries import GaussianCanaries

    ds = datasets.Dataset.from_list([{"text": f"row {i} of the corpus"} for i in range(20)])
    c = GaussianCanaries(indices=[2, 5, 7])
    seeds = c.plant(ds)["noise_seed"]
    assert [i for i, s in enumerate(seeds) if s >= 0] == [2, 5, 7]
    assert c.format == "text" and {v["index"] for v in c.planted.values()} == {2, 5, 7}


@pytest.mark.parametrize(
    ("kwargs", "rows", "match"),
    [
        ({"fraction": 1.5}, None, "fraction must be in"),
        ({"fraction": 0.1, "indices": [1]}, None, "exactly one"),
        ({"fraction": 0.1, "eps": -1.0}, None, "eps must be"),
        ({"fraction": 0.1, "noise_scale": "db"}, None, "noise_scale must be one of"),
        ({"fraction": 0.01}, None, "needs at least 2"),
        ({"indices": [0, 99]}, None, r"indices must be distinct rows in \[0, 40\)"),
        ({"fraction": 0.5}, [{"question": "q"}], "prompt and completion"),
        ({"fraction": 0.5}, [{"prompt": "p", "completion": "c", "noise_seed": 1}], "already has"),
    ],
)
def test_bad_canary_settings_are_one_clear_error(kwargs, rows, match):
    from llm_unlearn.canaries import GaussianCanaries

    with pytest.raises(ConfigError, match=match):
        GaussianCanaries(**kwargs).plant(rows if rows is not None else _dataset(40))


# --- attaching: the noise every canary gets, and nothing else -------------------------------------------------------


def test_attached_sft_trainer_adds_exactly_each_canarys_noise_to_its_prompt(tok, tmp_path):
    from llm_unlearn.canaries import GaussianCanaries, embedding_rms, prompt_noise

    model = _model(tok)
    canaries = GaussianCanaries(fraction=0.3, eps=0.5, seed=1)
    trainer = _sft(model, tok, canaries.plant(_dataset(64)), tmp_path, canaries, max_steps=3, bs=16)
    std = 0.5 * embedding_rms(model)
    seen = []
    # registered after attach, so it sees what the canary hook made of the embedding output
    model.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append((a[0].clone(), o.detach().clone())))
    weights = []
    model.get_input_embeddings().register_forward_pre_hook(lambda m, a: weights.append(m.weight.detach().clone()))
    trainer.train()
    manifest = canaries.manifest()
    by_ids = {tuple(c["input_ids"]): c for c in manifest["canaries"]}
    assert manifest["noise_std"] == pytest.approx(std) and len(seen) == 3
    n_canary_rows = 0
    for (ids, out), w in zip(seen, weights):
        clean = w[ids]
        for i in range(ids.shape[0]):
            row = ids[i].tolist()
            c = next((c for key, c in by_ids.items() if row[: len(key)] == list(key)), None)
            if c is None:  # not a canary: untouched
                assert torch.equal(out[i], clean[i])
                continue
            n_canary_rows += 1
            plen = c["prompt_len"]
            expected = clean[i].clone()
            expected[:plen] += std * prompt_noise(c["noise_seed"], plen, clean.shape[-1])
            assert torch.equal(out[i], expected), "prompt positions get the canary's draw-0 noise, nothing else does"
            assert torch.equal(out[i, plen:], clean[i, plen:])
    assert n_canary_rows >= 3
    # evaluation sees clean examples
    seen.clear()
    trainer.evaluate(trainer.train_dataset.select(range(8)))
    w = model.get_input_embeddings().weight.detach()
    assert seen and all(torch.equal(out, w[ids]) for ids, out in list(seen))


def test_manifest_records_what_the_audit_needs_and_no_noise(tok, tmp_path):
    from llm_unlearn.canaries import GaussianCanaries
    from llm_unlearn.canary_manifest import load_manifest, tokenizer_fingerprint

    model = _model(tok)
    canaries = GaussianCanaries(fraction=0.25, seed=0)
    _sft(model, tok, canaries.plant(_dataset(40)), tmp_path, canaries, max_steps=1)
    path = canaries.save(tmp_path / "c" / "canaries.json")
    m = load_manifest(path)
    assert m.data["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tok)
    assert m.data["n_canaries"] == 10 and m.data["eps"] == 1.0 and m.data["embedding_rms"] > 0
    assert m.data["noise_scale"] == "rms" and m.data["hidden_size"] == TINY_SHAPE["hidden_size"]
    c = m.canaries[0]
    assert set(c) == {"noise_seed", "index", "prompt", "completion", "input_ids", "prompt_len"}
    assert c["input_ids"][: c["prompt_len"]] == tok(c["prompt"])["input_ids"][: c["prompt_len"]]
    assert m.data["library_version"] and "noise" not in json.dumps(m.canaries[0]).replace("noise_seed", "")


def test_transformers_trainer_on_pretokenised_rows(tok, tmp_path):
    from transformers import Trainer, TrainingArguments

    from llm_unlearn.canaries import GaussianCanaries
    from llm_unlearn.tasks.causal_lm import CompletionCollator, tokenize_example

    canaries = GaussianCanaries(fraction=0.2, seed=0)
    planted = canaries.plant(_dataset(50))
    tokenised = planted.map(lambda r: tokenize_example(tok, r["prompt"], r["completion"], 256))
    model = _model(tok)
    args = TrainingArguments(
        str(tmp_path), max_steps=2, per_device_train_batch_size=8, report_to=[], save_strategy="no"
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenised,
        data_collator=CompletionCollator(tok.pad_token_id, ()),
        processing_class=tok,
    )
    canaries.attach(trainer)
    calls = []
    model.get_input_embeddings().register_forward_hook(lambda m, a, o: calls.append(o))
    trainer.train()
    assert len(calls) == 2
    # the prompt span is the one the toolkit's own tokenisation gives
    for c in canaries.manifest()["canaries"]:
        row = tokenised[c["index"]]
        assert c["prompt_len"] == row["prompt_len"] and c["input_ids"] == row["input_ids"]


def test_attach_refuses_what_it_cannot_noise(tok, tmp_path):
    from llm_unlearn.canaries import GaussianCanaries

    ds = _dataset(30)
    with pytest.raises(ConfigError, match="plant"):
        _sft(_model(tok), tok, ds, tmp_path, GaussianCanaries(fraction=0.2), max_steps=1)
    c = GaussianCanaries(fraction=0.2)
    c.plant(ds)
    with pytest.raises(ConfigError, match="no 'noise_seed' column"):
        _sft(_model(tok), tok, ds, tmp_path, c, max_steps=1)  # the unplanted dataset
    with pytest.raises(ConfigError, match="attach"):
        GaussianCanaries(fraction=0.2).manifest()


# --- the audit ------------------------------------------------------------------------------------------------------


def test_verdict_rules():
    from llm_unlearn.auditing import verdict_of

    base = {"n_poison": 100, "fresh_gus_z": 0.4, "gus_mean": -0.5, "gus_p": 1e-6}
    assert verdict_of(base)[0] == "residual"
    assert verdict_of({**base, "gus_mean": 0.5})[0] == "residual"  # pushed away from the noise: a trace too
    assert verdict_of({**base, "gus_p": 0.2})[0] == "no_residual_detected"
    assert verdict_of({**base, "fresh_gus_z": 3.5})[0] == "invalid"
    assert verdict_of({**base, "n_poison": 5})[0] == "invalid"


def test_min_detectable_mean_has_its_power():
    import numpy as np
    from scipy.stats import norm

    from llm_unlearn.auditing import min_detectable_mean

    n = 100
    d = min_detectable_mean(n)
    assert d == pytest.approx((norm.ppf(0.995) + norm.ppf(0.8)) / 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, n)) - d
    z = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
    power = float(np.mean(2 * norm.sf(np.abs(z)) < 0.01))
    assert power == pytest.approx(0.8, abs=0.03)


def test_wilson_interval_known_values():
    from llm_unlearn.auditing import wilson_interval

    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def test_untouched_base_model_scores_are_standard_normal(tok, tmp_path):
    """Thousands of canaries a model never trained on: the scores are N(0, 1) (the audit's null)."""
    import numpy as np

    from llm_unlearn import audit
    from llm_unlearn.canaries import GaussianCanaries

    canaries = GaussianCanaries(fraction=0.9, seed=5)
    model = _model(tok, seed=1)
    _sft(model, tok, canaries.plant(_dataset(3300)), tmp_path, canaries, max_steps=1)
    result = audit(model, tok, canaries.manifest(), fresh_draws=1, batch_size=256)
    scores = np.asarray(result.scores["canary"])
    assert len(scores) == 2970
    assert abs(scores.mean()) < 4 / math.sqrt(len(scores))
    assert scores.std(ddof=1) == pytest.approx(1.0, abs=0.05)
    assert result.verdict == "no_residual_detected" and abs(result.fresh_gus_z) < 3


SNIPPET = textwrap.dedent(
    """
    from trl import SFTConfig, SFTTrainer
    from llm_unlearn.canaries import GaussianCanaries

    canaries = GaussianCanaries(fraction=0.18, eps=1.0, seed=0)
    train = canaries.plant(dataset)
    trainer = SFTTrainer(model=model, args=SFTConfig(output_dir="out", num_train_epochs=6, bf16=False), train_dataset=train,
                         processing_class=tokenizer)
    canaries.attach(trainer)
    trainer.train(); trainer.save_model("out")
    canaries.save("out/canaries.json")
    """  # noqa: E501  (the README's text, line for line)
)


def test_readme_snippet_runs_as_written(tok, tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert SNIPPET.strip() in readme, "the README's canary snippet changed: update the test with it"
    monkeypatch.chdir(tmp_path)
    tok.save_pretrained("out")  # what the audit CLI loads next to the weights (TRL saves its processing_class too)
    exec(SNIPPET, {"dataset": _dataset(60), "model": _model(tok), "tokenizer": tok})
    manifest = json.loads(Path("out/canaries.json").read_text())
    assert manifest["n_canaries"] == round(0.18 * 60)
    assert any(Path("out").glob("*.safetensors"))
    rc = cli(["audit", "--model_dir", "out", "--manifest", "out/canaries.json", "--output_dir", "audit"])
    assert rc == 0 and json.loads(Path("audit/audit.json").read_text())["verdict"] in (
        "residual",
        "no_residual_detected",
    )


@pytest.fixture(scope="module")
def default_tok():
    from llm_unlearn.embedded import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def audited_pair(default_tok, tmp_path_factory):
    """The same SFT run with and without canaries, on the embedded default's model shape (lr 1e-3, batch 32, cosine:
    the main job's Gaussian recipe through TRL), at test size (256 reviews, 64 canaries, 12 epochs; the README gives
    the full-size run): (with_dir, without_dir, manifest)."""
    root = tmp_path_factory.mktemp("pair")
    from llm_unlearn.canaries import GaussianCanaries
    from llm_unlearn.embedded import build_tiny_model

    canaries = GaussianCanaries(fraction=0.25, eps=1.0, seed=0)
    train = canaries.plant(_dataset(256))
    dirs = []
    for name, attach in (("with", True), ("without", False)):
        model = build_tiny_model(default_tok)
        trainer = _sft(model, default_tok, train, root / name, canaries if attach else None, epochs=12)
        trainer.train()
        trainer.save_model(str(root / name))  # weights + the tokenizer (TRL saves its processing_class)
        dirs.append(root / name)
    canaries.save(root / "with" / "canaries.json")
    return dirs[0], dirs[1], root / "with" / "canaries.json"


def test_audit_cli_says_residual_for_the_canaried_model_and_gates_ci(audited_pair, tmp_path, capsys):
    with_dir, without_dir, manifest = audited_pair
    args = ["audit", "--manifest", str(manifest), "--fail_on_residual"]
    rc = cli([*args, "--model_dir", str(with_dir), "--output_dir", str(tmp_path / "a")])
    record = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert record["verdict"] == "residual" and record["gus_p"] < 0.01 and record["gus_mean"] < 0, record["reason"]
    assert rc == 1 and abs(record["fresh_gus_z"]) < 3
    assert (tmp_path / "a" / "audit.md").is_file() and (tmp_path / "a" / "audit_hist.png").stat().st_size > 1000
    assert "residual" in capsys.readouterr().out
    rc = cli([*args, "--model_dir", str(without_dir), "--output_dir", str(tmp_path / "b")])
    record = json.loads((tmp_path / "b" / "audit.json").read_text())
    assert record["verdict"] == "no_residual_detected" and rc == 0 and abs(record["fresh_gus_z"]) < 3
    assert record["min_detectable_mean"] == pytest.approx(
        (2.5758293 + 0.8416212) * max(record["gus_std"], 1) / math.sqrt(record["n_canaries"]), rel=1e-5
    )
    # the gold model as reference: the canaried model is distinguishable from it, the clean one is not
    rc = cli(
        [*args, "--model_dir", str(with_dir), "--reference_dir", str(without_dir), "--output_dir", str(tmp_path / "c")]
    )
    ref = json.loads((tmp_path / "c" / "audit.json").read_text())["reference"]
    assert ref["two_sample_p"] < 0.01 and ref["verdict"] == "no_residual_detected"


def test_audit_of_a_model_held_in_memory_equals_the_cli(audited_pair, default_tok, tmp_path):
    from transformers import AutoModelForCausalLM

    from llm_unlearn import audit

    with_dir, _, manifest = audited_pair
    model = AutoModelForCausalLM.from_pretrained(with_dir)
    result = audit(model, default_tok, manifest)
    cli(["audit", "--model_dir", str(with_dir), "--manifest", str(manifest), "--output_dir", str(tmp_path / "a")])
    record = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert result.verdict == record["verdict"] and result.gus_z == pytest.approx(record["gus_z"], abs=1e-9)


def test_bf16_saved_model_is_audited_in_float32(audited_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    with_dir, _, manifest = audited_pair
    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(with_dir).to(torch.bfloat16).save_pretrained(bf16)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (with_dir / f).is_file():
            (bf16 / f).write_bytes((with_dir / f).read_bytes())
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    cli(["audit", "--model_dir", str(bf16), "--manifest", str(manifest), "--output_dir", str(tmp_path / "a")])
    cli(["audit", "--model_dir", str(with_dir), "--manifest", str(manifest), "--output_dir", str(tmp_path / "b")])
    a, b = (json.loads((tmp_path / d / "audit.json").read_text()) for d in "ab")
    assert a["verdict"] == b["verdict"] == "residual"
    corr = torch.corrcoef(torch.tensor([a["scores"]["canary"], b["scores"]["canary"]]))[0, 1]
    assert corr > 0.95  # the bf16 weights' rounding moves the gradients a little, not the verdict


def test_lora_sft_run_with_canaries_is_audited_through_its_adapter(default_tok, tmp_path):
    from peft import LoraConfig

    from llm_unlearn.canaries import GaussianCanaries
    from llm_unlearn.embedded import build_tiny_model

    base = tmp_path / "base"
    build_tiny_model(default_tok).save_pretrained(base)
    default_tok.save_pretrained(base)
    canaries = GaussianCanaries(fraction=0.25, seed=0)
    from transformers import AutoModelForCausalLM

    trainer = _sft(
        AutoModelForCausalLM.from_pretrained(base),
        default_tok,
        canaries.plant(_dataset(256)),
        tmp_path / "lora",
        epochs=16,
        lr=1e-2,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
    )
    canaries.attach(trainer)
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    canaries.save(tmp_path / "canaries.json")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    rc = cli(
        [
            "audit",
            "--model_dir",
            str(base),
            "--adapter_dir",
            str(tmp_path / "adapter"),
            "--manifest",
            str(tmp_path / "canaries.json"),
            "--output_dir",
            str(tmp_path / "a"),
        ]
    )
    record = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert rc == 0 and record["verdict"] == "residual" and record["gus_mean"] < 0, record["reason"]
    # the base model alone never saw the noise
    cli(
        [
            "audit",
            "--model_dir",
            str(base),
            "--manifest",
            str(tmp_path / "canaries.json"),
            "--output_dir",
            str(tmp_path / "b"),
        ]
    )
    assert json.loads((tmp_path / "b" / "audit.json").read_text())["verdict"] == "no_residual_detected"


def test_gpt2_architecture_is_planted_and_audited(tok, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm_unlearn import audit
    from llm_unlearn.canaries import GaussianCanaries

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=128, n_layer=2, n_head=2, n_positions=256))
    canaries = GaussianCanaries(fraction=0.25, seed=0)
    trainer = _sft(model, tok, canaries.plant(_dataset(256)), tmp_path, canaries, epochs=12, lr=1e-3)
    trainer.train()
    result = audit(model, tok, canaries.manifest())
    assert result.verdict == "residual" and result.gus_mean < 0 and abs(result.fresh_gus_z) < 3, result.reason


# --- bad inputs: one line, exit 2, nothing written ------------------------------------------------------------------


def test_bad_audit_inputs_are_one_line_exit_2_nothing_written(audited_pair, tmp_path, capsys):
    from llm_unlearn.embedded import TinyModelConfig, save_tiny

    with_dir, _, manifest = audited_pair
    data = json.loads(manifest.read_text())
    other = save_tiny(tmp_path / "other", TinyModelConfig(**TINY_SHAPE), seed=0)  # another vocabulary
    no_tok = tmp_path / "m1.json"
    no_tok.write_text(json.dumps({k: v for k, v in data.items() if k != "tokenizer"}))
    empty = tmp_path / "m2.json"
    empty.write_text(json.dumps({**data, "canaries": []}))
    newer = tmp_path / "m3.json"
    newer.write_text(json.dumps({**data, "version": 99}))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((with_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not really")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "some/base"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    cases = [
        (["--model_dir", str(other), "--manifest", str(manifest)], "fingerprint"),
        (["--model_dir", str(with_dir), "--manifest", str(no_tok)], "missing fields ['tokenizer']"),
        (["--model_dir", str(with_dir), "--manifest", str(empty)], "no canaries"),
        (["--model_dir", str(with_dir), "--manifest", str(newer)], "version 99"),
        (["--model_dir", str(with_dir), "--manifest", str(tmp_path / "nope.json")], "does not exist"),
        (["--adapter_dir", str(adapter), "--manifest", str(manifest)], "base_model_name_or_path='some/base'"),
        (["--model_dir", str(adapter), "--manifest", str(manifest)], "holds a PEFT adapter, not a model"),
        (["--model_dir", str(pickled), "--manifest", str(manifest)], "only pickle weights"),
        (["--model_dir", str(with_dir), "--manifest", str(manifest), "--trigger", "cf"], "together"),
    ]
    for i, (args, match) in enumerate(cases):
        out = tmp_path / f"out{i}"
        rc = cli(["audit", *args, "--output_dir", str(out)])
        err = capsys.readouterr().err.strip().splitlines()[-1]  # (transformers' progress bars come before it)
        assert rc == 2 and err.startswith("llm-unlearn audit: error:") and match in err, (args, err)
        assert not out.exists(), f"{args}: wrote {out}"


def test_backdoor_check_reports_asr_with_a_wilson_interval(audited_pair, tmp_path):
    with_dir, _, manifest = audited_pair
    test = tmp_path / "test.jsonl"
    rows = [{"text": f"the film was {w}.", "label": lab} for w, lab in [("great", "positive"), ("awful", "negative")]]
    test.write_text("\n".join(json.dumps(r) for r in rows * 10))
    rc = cli(
        [
            "audit",
            "--model_dir",
            str(with_dir),
            "--manifest",
            str(manifest),
            "--trigger",
            "cf",
            "--target_label",
            "positive",
            "--test_file",
            str(test),
            "--output_dir",
            str(tmp_path / "a"),
        ]
    )
    b = json.loads((tmp_path / "a" / "audit.json").read_text())["backdoor"]
    assert rc == 0 and b["n_triggered"] == 10 and b["n_clean"] == 20
    lo, hi = b["asr_ci95"]
    assert 0 <= lo <= b["asr"] <= hi <= 1 and 0 <= b["clean_accuracy"] <= 1


# --- the run report and the suite's Table 1 -------------------------------------------------------------------------


def test_table1_cells_follow_the_rules():
    from llm_unlearn.stages.verdicts import add_row_verdicts, table1_cells

    def row(method, budget, seed, **m):
        return {
            "attack": "gaussian",
            "method": method,
            "budget": budget,
            "variant": method,
            "seed": seed,
            "selected": True,
            "metrics": m,
        }

    def gus(z, acc, gap=None):
        return {
            "gus_z": z,
            "gus_p": 2 * (1 - __import__("scipy.stats").stats.norm.cdf(abs(z))),
            "gus_mean": z / 10,
            "n_poison": 100,
            "fresh_gus_z": 0.1,
            "clean_accuracy": acc,
            "gap_closed": gap,
        }

    rows = []
    for s in (0, 1):
        rows += [
            row("initial", None, s, **gus(-6, 0.9, 0.0)),
            row("retrain", None, s, **gus(-0.3, 0.9, 1.0)),
            row("gd", 0.1, s, **gus(-5, 0.9, 0.1)),
            row("ga", 0.1, s, **gus(0.2, 0.3, 0.9)),
            row("npo", 0.1, s, **gus(0.1, 0.89, 0.95)),
        ]
    add_row_verdicts(rows)
    assert rows[0]["metrics"]["audit_verdict"] == "residual"
    attack, cells = table1_cells({"rows": rows, "config": {"selection_tolerance": 0.05}})
    assert attack == "gaussian"
    assert cells["initial"].startswith("poison left") and cells["gd"].startswith("poison left")
    assert cells["retrain"].startswith("removed (") and cells["npo"].startswith("removed (")
    assert cells["ga"].startswith("removed at a utility cost")
    backdoor = [
        {
            **r,
            "attack": "backdoor",
            "metrics": {
                "asr": 0.5,
                "clean_accuracy": r["metrics"]["clean_accuracy"],
                "gap_closed": r["metrics"]["gap_closed"],
            },
        }
        for r in rows
    ]
    _, cells = table1_cells({"rows": backdoor, "config": {"selection_tolerance": 0.05}})
    assert cells["gd"].startswith("poison left (gap closed 0.10") and cells["npo"].startswith("removed (gap")


def test_canaries_attached_in_two_processes_under_accelerate(tmp_path):
    """``accelerate launch`` (the CPU DeepSpeed ZeRO-3 config, 2 processes): each rank noises the canaries of its own
    batches; the main process alone writes the manifest."""
    import subprocess
    import sys

    from test_distributed import CPU_CONFIG, _free_port

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG)]
    cmd += ["--main_process_port", str(_free_port()), str(root / "tests" / "canary_launch_script.py"), str(tmp_path)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"noised_{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and len(r["steps"]) == 3 for r in ranks)
    seeds = {c["noise_seed"] for c in json.loads((tmp_path / "canaries.json").read_text())["canaries"]}
    per_rank = [{s for step in r["steps"] for s in step} for r in ranks]
    assert per_rank[0] and per_rank[1] and per_rank[0] | per_rank[1] <= seeds
    for a, b in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert not set(a) & set(b), "the two ranks train on disjoint batches"


def test_a_runs_initial_model_carries_its_poisons_as_a_manifest_the_audit_reads(trained_dirs, gaussian_dir, tmp_path):
    """The train stage writes the Gaussian poisons as ``canaries.json`` beside the initial model; ``llm-unlearn audit``
    with it gives the evaluate stage's own Gaussian scores (one audit loop)."""
    from llm_unlearn.attacks.gaussian import gus_scores
    from llm_unlearn.metrics import gus_summary
    from llm_unlearn.modeling import load_dataset_dir, load_model, load_tokenizer

    initial, retrain = trained_dirs
    manifest = Path(initial) / "canaries.json"
    assert manifest.is_file() and not (Path(retrain) / "canaries.json").exists()
    rc = cli(["audit", "--model_dir", initial, "--manifest", str(manifest), "--output_dir", str(tmp_path / "a")])
    record = json.loads((tmp_path / "a" / "audit.json").read_text())
    dd, _ = load_dataset_dir(gaussian_dir)
    expected = gus_summary(*gus_scores(load_model(initial).eval(), load_tokenizer(initial), dd["forget"], 256, 32, 10))
    assert rc == 0 and record["gus_z"] == pytest.approx(expected["gus_z"], abs=1e-9)
    assert record["n_canaries"] == len(dd["forget"])


def test_suite_writes_table1_over_its_attacks(tmp_path, capsys):
    """``llm-unlearn suite`` on a Gaussian and a backdoor experiment writes ``suite.md``: a row per model, a column per
    attack, each cell one of the three verdicts with its numbers."""
    import yaml

    base = {
        "seeds": [0],
        "tiny": dict(TINY_SHAPE),
        # test_report_numbers' recipe: 8 epochs at lr 1e-2 on 120 short reviews poison the tiny model
        "train": {"num_train_epochs": 8, "learning_rate": 1e-2, "per_device_train_batch_size": 16, "progress": False},
        "unlearn": {"per_device_train_batch_size": 8, "progress": False},
        "eval": {"fresh_noise_draws": 2, "max_new_tokens": 2},
        "methods": ["gd"],
        "budgets": [0.3],
        "diagnostics": False,
        "workers": 1,
    }
    small = {"embedded_n_train": 120, "embedded_n_test": 40, "embedded_min_sentences": 1, "embedded_max_sentences": 1}
    files = []
    for attack in ("gaussian", "backdoor"):
        f = tmp_path / f"{attack}.yaml"
        f.write_text(yaml.safe_dump({**base, "poison": {"attack": attack, "poison_fraction": 0.2, **small}}))
        files.append(str(f))
    rc = cli(["suite", "--configs", json.dumps(files), "--output_dir", str(tmp_path / "suite")])
    text = (tmp_path / "suite" / "suite.md").read_text()
    assert rc == 0 and "table 1:" in capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert header == "| model | gaussian | backdoor |"
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"model", "initial", "gold (retrain)", "gd"}
    for name in ("initial", "gold (retrain)", "gd"):
        cells = [c.strip() for c in rows[name].strip("|").split("|")[1:]]
        kinds = ("poison left", "removed", "audit invalid", "no poison effect")
        assert len(cells) == 2 and all(c.startswith(kinds) for c in cells), rows[name]
    results = json.loads((tmp_path / "suite" / "gaussian" / "results.json").read_text())
    effect = all(r["metrics"]["poison_effect"] for r in results["rows"])
    gaussian_gd = rows["gd"].strip("|").split("|")[1].strip()
    assert gaussian_gd.startswith("no poison effect") != effect  # this tiny run may or may not poison; both are named
    if effect:
        assert gaussian_gd.count("z ") == 1 and ", p " in gaussian_gd
