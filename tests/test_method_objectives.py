"""Every trainer optimises what it names, through the real ``METHODS`` registry entries (no patched copies).

For each method the loss its trainer computes on one fixed pair of batches is compared with the method's equation,
written here independently from raw logits (not through the package's loss helpers): which half goes where (retain vs
forget), which model (the one being trained vs the frozen reference), which weights. The model is moved off its
reference first (random LoRA B matrices), so a reference mix-up cannot hide behind model == reference. Then one small
SGD step on that pair must lower the trainer's own objective, GA's step must raise the forget NLL and GD's lower the
retain NLL. A trainer fed the wrong half of its batch (GA on retain, GD on forget, NegGrad+ with swapped halves) or
the wrong reference fails here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import make_unlearn_trainer

from llm_unlearn.methods import METHODS
from llm_unlearn.tasks.causal_lm import IGNORE_INDEX

TRAINED = sorted(m for m in METHODS if m != "ssd")  # SSD trains nothing: tests/test_ssd_data.py checks it
# Variants with the retain term off isolate a forget term that the retain NLL would dwarf (SimNPO's at its default
# beta 2.5 saturates near 0 on a half-trained model: beta 0.1 keeps it in range).
VARIANTS = {
    "graddiff": [{}, {"retain_loss": "kl"}, {"retain_loss": "kl", "kl_positions": "completion"}],
    "npo": [{}, {"retain_loss": "kl"}, {"retain_weight": 0.0}],
    "simnpo": [{}, {"retain_weight": 0.0, "beta": 0.1}, {"retain_weight": 0.0, "beta": 0.1, "gamma": 0.5}],
    "neggrad_plus": [{}, {"beta": 0.7}],
    "scrub": [{}],
}
CASES = [(m, args) for m in TRAINED for args in VARIANTS.get(m, [{}])]


# ---------------------------------------------------------------------------------- the equations, from raw logits


def _shifted(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    return logits, labels, labels != IGNORE_INDEX


def token_logps(model, batch):
    logits, labels, mask = _shifted(model, batch)
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def nll(model, batch):
    logp, mask = token_logps(model, batch)
    return -logp.sum() / mask.sum()


def seq_logp(model, batch):
    return token_logps(model, batch)[0].sum(-1)


def kl(student, teacher, batch, positions="completion", T=1.0):
    """T^2 * mean over positions of KL(teacher || student) at temperature T."""
    s_logits, _, mask = _shifted(student, batch)
    with torch.no_grad():
        t_logits, _, _ = _shifted(teacher, batch)
    if positions == "all":
        attn = batch["attention_mask"].bool()
        mask = attn[:, :-1] & attn[:, 1:]
    log_s, log_t = F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1)
    per_pos = (log_t.exp() * (log_t - log_s)).sum(-1)
    return (per_pos * mask).sum() / mask.sum() * T**2


def layer_out(model, layer, batch):
    store = {}
    handle = layer.register_forward_hook(
        lambda m, a, out: store.setdefault("h", out[0] if isinstance(out, tuple) else out)
    )
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    return store["h"].float()


def expected_loss(trainer, model, method, forget, retain):
    """The method's loss on (forget, retain) from its equation; ``reference`` = the adapter switched off."""
    cfg = trainer.method_cfg
    unwrapped = trainer.accelerator.unwrap_model(model)

    def reference():
        return unwrapped.disable_adapter()

    if method in ("gd", "ngd", "cf_k", "eu_k"):
        return nll(model, retain)
    if method == "ga":
        return -nll(model, forget)
    if method == "neggrad_plus":
        return cfg.beta * nll(model, retain) - (1 - cfg.beta) * nll(model, forget)  # l2_weight 0 by default
    if method in ("graddiff", "npo", "simnpo"):
        if getattr(cfg, "retain_loss", "nll") == "kl":
            retain_term = kl(model, _frozen_copy(unwrapped), retain, cfg.kl_positions)
        else:
            retain_term = nll(model, retain)
        if method == "graddiff":
            forget_term = -nll(model, forget)
        elif method == "npo":
            with torch.no_grad(), reference():
                ref_lp = seq_logp(model, forget)
            forget_term = -(2 / cfg.beta) * F.logsigmoid(-cfg.beta * (seq_logp(model, forget) - ref_lp)).mean()
        else:
            lengths = (forget["labels"][:, 1:] != IGNORE_INDEX).sum(-1)
            reward = -(cfg.beta / lengths) * seq_logp(model, forget) - cfg.gamma
            forget_term = -(2 / cfg.beta) * F.logsigmoid(reward).mean()
        return cfg.forget_weight * forget_term + cfg.retain_weight * retain_term
    if method == "rmu":
        from llm_unlearn.methods.rmu import _layer_ids

        layer_id, _ = _layer_ids(unwrapped, cfg)
        layer = unwrapped.get_base_model().model.layers[layer_id]
        # c u: u uniform in [0, 1)^d from the run's seed (0 here), normalised (as the WMDP code draws it)
        u = torch.rand(layer_out(model, layer, forget).shape[-1], generator=torch.Generator().manual_seed(0))
        target = cfg.steering_coeff * u / u.norm()
        h_f, h_r = layer_out(model, layer, forget), layer_out(model, layer, retain)
        with torch.no_grad(), reference():
            h_ref = layer_out(model, layer, retain)

        def mse(a, b, batch):
            m = batch["attention_mask"].float()
            return ((a - b).square().mean(-1) * m).sum() / m.sum()

        return mse(h_f, target.expand_as(h_f), forget) + cfg.alpha * mse(h_r, h_ref, retain)
    raise AssertionError(f"no equation for {method}: add it when adding a method")


def _frozen_copy(unwrapped):
    """A detached stand-in for the reference: the base model with the adapter disabled, as a callable."""

    class Ref(torch.nn.Module):
        def forward(self, **kw):
            with torch.no_grad(), unwrapped.disable_adapter():
                return unwrapped(**kw)

    return Ref()


# ------------------------------------------------------------------------------------------------------ the tests


def _setup(model_dir, gaussian_dir, tmp_path, method, args):
    trainer, model = make_unlearn_trainer(model_dir, gaussian_dir, tmp_path, method, True, args, lr=1e-3)
    model.eval()  # no dropout in the tiny model anyway; keeps both sides deterministic
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the model off its reference: the LoRA B matrices start at zero
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_B" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    pairs = trainer.train_dataset
    forget_ds, retain_ds = pairs.forget, pairs.retain
    collate = trainer.data_collator
    items = [{"forget": forget_ds[i], "retain": retain_ds[i]} for i in range(4)]
    inputs = collate(items)
    # Completions of different lengths (1 to 4 more tokens: the end of the prompt joins the completion), so a
    # per-example length normalisation (SimNPO) or a sum-vs-mean mix-up shows: the label alone is one token.
    labels = inputs["forget"]["labels"]
    for row in range(labels.shape[0]):
        start = int((labels[row] != IGNORE_INDEX).nonzero()[0])
        labels[row, start - row - 1 : start] = inputs["forget"]["input_ids"][row, start - row - 1 : start]
    forget = {k: inputs["forget"][k] for k in ("input_ids", "attention_mask", "labels")}
    retain = {k: inputs["retain"][k] for k in ("input_ids", "attention_mask", "labels")}
    return trainer, model, inputs, forget, retain


def _descend(model, loss, step: float = 0.05) -> None:
    """One normalised gradient step of length ``step`` over the trainable parameters: a first-order decrease of about
    step * |grad| whatever the loss's scale (RMU's MSE gradients are ~1e-3, GA's NLL gradients ~1)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    norm = torch.sqrt(sum(g.square().sum() for g in grads))
    assert float(norm) > 0, "the loss does not depend on the trainable parameters"
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(g, alpha=step / float(norm))


def _trainer_inputs(method, inputs):
    """What the trainer sees in one step: SCRUB's batches are all-forget (max steps) or all-retain (min steps)."""
    if method == "scrub":
        return [{"forget": inputs["forget"], "costs": {}}, {"retain": inputs["retain"], "costs": {}}]
    return [inputs]


@pytest.mark.parametrize(
    ("method", "args"), CASES, ids=[f"{m}{'-' + '-'.join(map(str, a.values())) if a else ''}" for m, a in CASES]
)
def test_trainer_loss_is_the_methods_equation(trained_dirs, gaussian_dir, tmp_path, method, args):
    trainer, model, inputs, forget, retain = _setup(trained_dirs[0], gaussian_dir, tmp_path, method, args)
    for step_inputs in _trainer_inputs(method, inputs):
        got = trainer.compute_loss(model, step_inputs)
        if method == "scrub":
            cfg = trainer.method_cfg
            ref = _frozen_copy(trainer.accelerator.unwrap_model(model))
            if "forget" in step_inputs:
                want = -kl(model, ref, forget, T=cfg.temperature)
            else:
                want = nll(model, retain) + cfg.alpha * kl(model, ref, retain, T=cfg.temperature)
        else:
            want = expected_loss(trainer, model, method, forget, retain)
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-5, atol=1e-6)
        assert abs(float(want)) > 1e-4  # not a vacuous 0 == 0


@pytest.mark.parametrize("method", TRAINED)
def test_one_step_lowers_the_trainers_own_objective(trained_dirs, gaussian_dir, tmp_path, method):
    trainer, model, inputs, _, _ = _setup(trained_dirs[0], gaussian_dir, tmp_path, method, {})
    for step_inputs in _trainer_inputs(method, inputs):
        before = trainer.compute_loss(model, step_inputs)
        _descend(model, before)
        with torch.no_grad():
            after = trainer.compute_loss(model, step_inputs)
        assert float(after) < float(before), (method, float(before), float(after))


def test_ascent_raises_forget_loss_and_descent_lowers_retain_loss(trained_dirs, gaussian_dir, tmp_path):
    """GA's steps raise the forget NLL (and only GA, of the two, reads the forget half); GD's lower the retain NLL."""
    for method, half, sign in (("ga", "forget", +1), ("gd", "retain", -1)):
        trainer, model, inputs, forget, retain = _setup(trained_dirs[0], gaussian_dir, tmp_path / method, method, {})
        batch = forget if half == "forget" else retain
        other = retain if half == "forget" else forget
        with torch.no_grad():
            start, start_other = float(nll(model, batch)), float(nll(model, other))
        for _ in range(3):
            _descend(model, trainer.compute_loss(model, inputs), step=0.2)
        with torch.no_grad():
            end, end_other = float(nll(model, batch)), float(nll(model, other))
        assert sign * (end - start) > 1e-4, (method, start, end)
        # the step is driven by the named half: it moves that half's loss more than the other's
        assert abs(end - start) > abs(end_other - start_other), (method, end - start, end_other - start_other)
