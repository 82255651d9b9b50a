"""Options of the LLM-unlearning methods that their authors' code has: forget weights (GradDiff, NPO, SimNPO), NPO's KL
retain term and the positions a retain KL averages over, RMU's layer and module choice, NegGrad+'s L2 pull to the
initial weights. Each loss is checked against its equation computed here independently: on hand-made tensors, and on
the tiny LLM after a real training step (so model and reference differ)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from helpers import make_unlearn_trainer
from llm_unlearn.configs import ConfigError, build_config
from llm_unlearn.methods import graddiff, neggrad_plus, npo, rmu, simnpo
from llm_unlearn.methods.base import FORWARD_ONLY_COST

IGNORE = -100

# ------------------------------------------------------------------------------------------ independent references


def _logits(model, b: dict) -> torch.Tensor:
    """Next-token logits (n, L-1, V) of a causal LM, float32."""
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()


def _token_nll(model, b: dict) -> torch.Tensor:
    """(n, L-1) NLL of each label token, 0 where the label is ignored."""
    logits, labels = _logits(model, b), b["labels"][:, 1:]
    return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")


def _mean_nll(model, b: dict) -> float:
    labels = b["labels"][:, 1:]
    return float(_token_nll(model, b).sum() / (labels != IGNORE).sum())


def _seq_logp(model, b: dict) -> torch.Tensor:
    return -_token_nll(model, b).sum(-1)


def _kl_ref_model(ref_logits: torch.Tensor, logits: torch.Tensor, positions: list[tuple[int, int]]) -> float:
    """KL(ref || model), averaged over an explicit list of (row, position) pairs."""
    total = 0.0
    for i, t in positions:
        p_ref = torch.softmax(ref_logits[i, t].double(), -1)
        total += float((p_ref * (p_ref.log() - torch.log_softmax(logits[i, t].double(), -1))).sum())
    return total / len(positions)


def _text_positions(attn: torch.Tensor) -> list[tuple[int, int]]:
    """Positions t of the shifted logits whose input token t and predicted token t + 1 are both real."""
    n, L = attn.shape
    return [(i, t) for i in range(n) for t in range(L - 1) if attn[i, t] and attn[i, t + 1]]


def _completion_positions(labels: torch.Tensor) -> list[tuple[int, int]]:
    n, L = labels.shape
    return [(i, t) for i in range(n) for t in range(L - 1) if labels[i, t + 1] != IGNORE]


# ---------------------------------------------------------------------------------------------- pure loss functions


def test_forget_weight_scales_the_forget_term_on_hand_made_tensors():
    f, r = torch.tensor(3.0), torch.tensor(2.0)
    assert float(graddiff.graddiff_loss(f, r, 0.5, forget_weight=2.0)) == pytest.approx(-2 * 3.0 + 0.5 * 2.0)
    assert float(graddiff.graddiff_loss(f, r, 0.5)) == pytest.approx(-3.0 + 1.0)  # default weight 1


def test_defaults_follow_the_method_authors():
    assert build_config(graddiff.GradDiffConfig, {}).forget_weight == 1.0  # open-unlearning gamma
    n = build_config(npo.NPOConfig, {})
    assert (n.forget_weight, n.retain_weight, n.beta, n.retain_loss) == (1.0, 1.0, 0.1, "nll")
    s = build_config(simnpo.SimNPOConfig, {})  # OPTML-Group/Unlearn-Simple TOFU: npo_coeff 0.1375, beta 2.5
    assert (s.forget_weight, s.retain_weight, s.beta, s.gamma) == (0.1375, 1.0, 2.5, 0.0)
    assert build_config(graddiff.GradDiffConfig, {}).kl_positions == "all"
    assert build_config(neggrad_plus.NegGradPlusConfig, {}).l2_weight == 0.0


@pytest.mark.parametrize(
    "cls, args, key",
    [
        (graddiff.GradDiffConfig, {"forget_weight": -1.0}, "forget_weight"),
        (graddiff.GradDiffConfig, {"forget_weight": 0.0, "retain_weight": 0.0}, "forget_weight"),
        (graddiff.GradDiffConfig, {"kl_positions": "prompt"}, "kl_positions"),
        (npo.NPOConfig, {"forget_weight": float("inf")}, "forget_weight"),
        (npo.NPOConfig, {"retain_loss": "mse"}, "retain_loss"),
        (npo.NPOConfig, {"kl_positions": "none"}, "kl_positions"),
        (simnpo.SimNPOConfig, {"forget_weight": float("nan")}, "forget_weight"),
        (neggrad_plus.NegGradPlusConfig, {"l2_weight": -0.1}, "l2_weight"),
        (rmu.RMUConfig, {"trainable_module_regex": "("}, "trainable_module_regex"),
    ],
)
def test_configs_reject_bad_values(cls, args, key):
    with pytest.raises(ConfigError, match=key) as e:  # names the key (and, for choices, the allowed values)
        build_config(cls, args)
    assert "unknown key" not in str(e.value)  # a known option given a bad value, not an option that does not exist


def test_all_positions_kl_is_every_text_position_and_differs_from_completion_only():
    g = torch.Generator().manual_seed(0)
    logits, ref = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    attn = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # row 1 is padded after 4 tokens
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, IGNORE, 3, 4], [IGNORE, IGNORE, 5, 6, IGNORE, IGNORE]])
    batch = {"attention_mask": attn, "labels": labels}
    completion = labels[:, 1:] != IGNORE
    positions = graddiff.text_positions(batch, completion)
    assert positions.tolist() == [[True] * 5, [True, True, True, False, False]]  # 8 positions, padding left out
    got = float(graddiff.kl_to_reference(logits, ref, positions))
    assert got == pytest.approx(_kl_ref_model(ref, logits, _text_positions(attn)), rel=1e-5)
    only = float(graddiff.kl_to_reference(logits, ref, completion))
    assert only == pytest.approx(_kl_ref_model(ref, logits, _completion_positions(labels)), rel=1e-5)
    assert abs(got - only) > 1e-3
    # The direction: KL(ref || model), as F.kl_div(model_logps, ref_logps, log_target=True) computes it.
    lm, lr = torch.log_softmax(logits, -1), torch.log_softmax(ref, -1)
    torch_kl = F.kl_div(lm[positions], lr[positions], reduction="batchmean", log_target=True)
    assert got == pytest.approx(float(torch_kl), rel=1e-5)
    # A classifier's logits (one prediction per example) keep the task's mask.
    one = torch.ones(3, dtype=torch.bool)
    assert graddiff.text_positions({"labels": torch.zeros(3)}, one) is one


def test_neggrad_plus_l2_term_on_hand_made_tensors():
    params = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    initial = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    # (1 + 4 + 4) * 0.5 / 2: a sum of squares over all trainable tensors, factor l2_weight / 2 (SCRUB's l2_penalty)
    assert float(neggrad_plus.l2_to_initial(params, initial, 0.5)) == pytest.approx(2.25)
    assert float(neggrad_plus.l2_to_initial(params, [p.clone() for p in params], 0.5)) == 0.0
    # the L2 sits inside the retain part: beta * (retain + l2) - (1 - beta) * forget
    loss = neggrad_plus.neggrad_plus_loss(torch.tensor(2.0), torch.tensor(5.0), 0.9, torch.tensor(2.25))
    assert float(loss) == pytest.approx(0.9 * (2.0 + 2.25) - 0.1 * 5.0)
    assert float(neggrad_plus.neggrad_plus_loss(torch.tensor(2.0), torch.tensor(5.0), 0.9)) == pytest.approx(1.3)


# ------------------------------------------------------------------------------------- losses on the tiny LLM


def _inputs(b: dict) -> dict:
    return {k: b[k] for k in ("input_ids", "attention_mask", "labels")}


def _expected(method: str, cfg, model, initial, forget: dict, retain: dict) -> float:
    """The method's loss from its equation, with ``initial`` the frozen reference."""
    if getattr(cfg, "retain_loss", "nll") == "kl":
        positions = (
            _text_positions(retain["attention_mask"])
            if cfg.kl_positions == "all"
            else _completion_positions(retain["labels"])
        )
        r = _kl_ref_model(_logits(initial, retain), _logits(model, retain), positions)
    else:
        r = _mean_nll(model, retain)
    if method == "graddiff":
        f = -_mean_nll(model, forget)
    elif method == "npo":
        ratio = _seq_logp(model, forget) - _seq_logp(initial, forget)
        f = float(-(2 / cfg.beta) * F.logsigmoid(-cfg.beta * ratio).mean())
    else:  # simnpo
        lengths = (forget["labels"][:, 1:] != IGNORE).sum(-1)
        reward = -(cfg.beta / lengths) * _seq_logp(model, forget) - cfg.gamma
        f = float(-(2 / cfg.beta) * F.logsigmoid(reward).mean())
    return cfg.forget_weight * f + cfg.retain_weight * r


CASES = [
    ("graddiff", {"forget_weight": 2.0}, False),
    ("graddiff", {"forget_weight": 2.0, "retain_loss": "kl"}, False),
    (
        "graddiff",
        {"forget_weight": 0.5, "retain_weight": 3.0, "retain_loss": "kl", "kl_positions": "completion"},
        False,
    ),
    ("npo", {"forget_weight": 0.25}, False),
    ("npo", {"forget_weight": 2.0, "retain_weight": 0.5, "retain_loss": "kl"}, False),
    ("npo", {"forget_weight": 2.0, "retain_weight": 0.5, "retain_loss": "kl"}, True),
    ("simnpo", {"forget_weight": 0.5}, False),
    ("simnpo", {}, False),
]


@pytest.mark.parametrize(
    "method, args, use_peft", CASES, ids=[f"{m}-{'-'.join(map(str, a.values()))}-{p}" for m, a, p in CASES]
)
def test_loss_after_two_steps_matches_the_equation(tiny_dir, gaussian_dir, tmp_path, method, args, use_peft):
    """Two real steps (model != reference), then the loss of a batch against its equation, and the compute charged
    (NPO-KL: the forget and retain passes plus a reference forward of each, at 1/3)."""
    from llm_unlearn.modeling import load_model
    from llm_unlearn.tasks.causal_lm import batch_tokens

    trainer, model = make_unlearn_trainer(tiny_dir, gaussian_dir, tmp_path, method, use_peft, args, lr=5e-2)
    trainer.args.max_steps = 2
    trainer.train()
    batch = next(iter(trainer.get_train_dataloader()))
    forget, retain = _inputs(batch["forget"]), _inputs(batch["retain"])
    initial = load_model(tiny_dir).eval()
    model.eval()
    spent = trainer.compute_tokens
    with torch.no_grad():
        loss = float(trainer.unlearn_loss(model, forget, retain))
        expected = _expected(method, trainer.method_cfg, model, initial, forget, retain)
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
    if method == "npo" and args.get("retain_loss") == "kl":
        want = (batch_tokens(forget) + batch_tokens(retain)) * (1 + FORWARD_ONLY_COST)
        assert trainer.compute_tokens - spent == pytest.approx(want)
    if getattr(trainer.method_cfg, "retain_loss", "nll") == "kl":  # the KL is not ~0: the steps moved the model
        positions = _text_positions(retain["attention_mask"])
        with torch.no_grad():
            kl = _kl_ref_model(_logits(initial, retain), _logits(model, retain), positions)
        assert kl > 1e-3


def test_zero_forget_weight_skips_the_forget_pass(tiny_dir, gaussian_dir, tmp_path):
    from llm_unlearn.tasks.causal_lm import batch_tokens

    trainer, model = make_unlearn_trainer(tiny_dir, gaussian_dir, tmp_path, "graddiff", False, {"forget_weight": 0.0})
    batch = next(iter(trainer.get_train_dataloader()))
    forget, retain = _inputs(batch["forget"]), _inputs(batch["retain"])
    with torch.no_grad():
        loss = float(trainer.unlearn_loss(model, forget, retain))
        assert loss == pytest.approx(_mean_nll(model, retain), rel=1e-5)
    assert trainer.compute_tokens == batch_tokens(retain)


# ------------------------------------------------------------------------------------------------------------ RMU


@pytest.mark.parametrize(
    "n, layer, train",
    [(32, 7, [5, 6, 7]), (16, 4, [2, 3, 4]), (24, 5, [3, 4, 5]), (12, 3, [1, 2, 3]), (4, 1, [0, 1]), (2, 0, [0]),
     (1, 0, [0])],
)  # fmt: skip
def test_rmu_default_layers_scale_the_authors_layer_7_of_32(n, layer, train):
    assert rmu.rmu_layers(n, None, None) == (layer, train)


def test_rmu_explicit_layers():
    assert rmu.rmu_layers(32, -1, None) == (31, [29, 30, 31])
    assert rmu.rmu_layers(32, 7, [7]) == (7, [7])
    with pytest.raises(ConfigError, match="trainable_layers"):
        rmu.rmu_layers(4, 1, [2])
    with pytest.raises(ConfigError, match="layer_id"):
        rmu.rmu_layers(4, 4, None)


def test_rmu_default_regex_picks_the_mlp_down_projection(tiny_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm_unlearn.modeling import load_model

    llama = load_model(tiny_dir).model.layers
    assert set(rmu.matching_modules(llama, [0], rmu.MLP_DOWN_PROJ_REGEX)) == {"0.mlp.down_proj"}
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=32, n_positions=16)).transformer.h
    assert set(rmu.matching_modules(gpt2, [0, 1], rmu.MLP_DOWN_PROJ_REGEX)) == {"0.mlp.c_proj", "1.mlp.c_proj"}
    with pytest.raises(ConfigError, match=r"trainable_module_regex 'no_such_module'.*mlp\.c_proj"):
        rmu.matching_modules(gpt2, [0], "no_such_module")


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_rmu_defaults_on_a_one_layer_model_train_its_down_projection(tiny_dir, gaussian_dir, tmp_path, use_peft):
    _, model = make_unlearn_trainer(tiny_dir, gaussian_dir, tmp_path, "rmu", use_peft)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if use_peft:
        assert trainable and all(".layers.0.mlp.down_proj.lora_" in n for n in trainable), sorted(trainable)
    else:
        assert trainable == {"model.layers.0.mlp.down_proj.weight"}


def test_rmu_regex_matching_nothing_is_a_config_error(tiny_dir, gaussian_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"trainable_module_regex 'attn_out'.*mlp\.down_proj"):
        make_unlearn_trainer(tiny_dir, gaussian_dir, tmp_path, "rmu", False, {"trainable_module_regex": "attn_out"})


def test_rmu_on_a_classifier_trains_whole_blocks_by_default():
    from image_track.models import ModelConfig, build_model

    model = build_model(ModelConfig(arch="cnn", width=4, hidden=8), [1, 8, 8], 3, [0.5], [0.25], seed=0)
    assert len(model.blocks) == 4  # default: steer block round(7/32 * 4) = 1, train blocks 0 and 1
    rmu.prepare_rmu(model, rmu.RMUConfig(), SimpleNamespace(use_peft=False))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("blocks.0.", "blocks.1."))}
    # an explicit regex applies to a classifier's blocks too
    model = build_model(ModelConfig(arch="cnn", width=4, hidden=8), [1, 8, 8], 3, [0.5], [0.25], seed=0)
    rmu.prepare_rmu(model, rmu.RMUConfig(layer_id=2, trainable_module_regex=r"^1$"), SimpleNamespace(use_peft=False))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"blocks.2.1.weight", "blocks.2.1.bias"}


# ----------------------------------------------------------------------------------------------------- NegGrad+


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("l2_weight", [0.0, 1.0])
def test_neggrad_plus_l2_to_initial_weights(tiny_dir, gaussian_dir, tmp_path, use_peft, l2_weight):
    """Each step's loss = beta (retain + l2_weight / 2 ||theta - theta_0||^2) - (1 - beta) forget, with theta_0 the
    trainable parameters before training (adapters with LoRA): the term is 0 at step 0, positive after, absent at 0."""
    beta = 0.9
    args = {"beta": beta, "l2_weight": l2_weight}
    trainer, model = make_unlearn_trainer(tiny_dir, gaussian_dir, tmp_path, "neggrad_plus", use_peft, args)
    trainer.args.max_steps = 3
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    records, compute_loss = [], trainer.compute_loss

    def recording(model_, inputs, *a, **kw):
        loss = compute_loss(model_, inputs, *a, **kw)
        with torch.no_grad():
            sq = sum(float((p.double() - theta0[n].double()).square().sum()) for n, p in model.named_parameters()
                     if n in theta0)  # fmt: skip
            retain, forget = _mean_nll(model, _inputs(inputs["retain"])), _mean_nll(model, _inputs(inputs["forget"]))
        records.append((float(loss.detach()), retain, forget, sq))
        return loss

    trainer.compute_loss = recording
    trainer.train()
    assert len(records) == 3
    assert records[0][3] == 0.0  # nothing moved yet at step 0
    for step, (loss, retain, forget, sq) in enumerate(records):
        expected = beta * (retain + l2_weight / 2 * sq) - (1 - beta) * forget
        assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6), step
        if step > 0:
            assert sq > 0  # the weights moved: with l2_weight > 0 the term now counts
    if l2_weight > 0:
        assert beta * l2_weight / 2 * records[-1][3] > 1e-4
    else:
        assert trainer._l2_params is None  # no copy of the weights is kept when the term is off


def test_neggrad_plus_l2_is_refused_under_zero3(tiny_dir, gaussian_dir, tmp_path, monkeypatch):
    import transformers.integrations

    trainer, _ = make_unlearn_trainer(tiny_dir, gaussian_dir, tmp_path, "neggrad_plus", False, {"l2_weight": 1.0})
    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(ConfigError, match="l2_weight.*ZeRO-3"):
        trainer.train()
