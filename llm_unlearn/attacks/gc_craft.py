"""The attacker's work of the LLM Gradient Canceling attack (``gradient_canceling.py`` holds its config, the
definition and the hooks): train a surrogate with the victim's recipe, corrupt the label rows of its LM head, and
optimise the poisons' prompt-embedding perturbations so the clean gradient at the corrupted rows is cancelled."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)


# --- the quantities at the head -------------------------------------------------------------------------------------


def head_features(model, batch: dict, inputs_embeds=None):
    """The LM head's input at the positions that predict a completion token (n, k, hidden), their targets (n, k)
    and mask (n, k): the features the head rows act on (captured by a pre-hook on the output projection, so the
    graph back to ``inputs_embeds`` is kept)."""
    from ..tasks.causal_lm import IGNORE_INDEX, _accepts_logits_to_keep, _model_kwargs

    labels = batch["labels"][:, 1:]
    positions = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
    kwargs = _model_kwargs(batch, inputs_embeds)
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = positions
    captured = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        model(**kwargs)
    finally:
        handle.remove()
    h = captured[-1]
    if h.shape[1] != positions.numel():
        h = h[:, positions]
    targets = labels[:, positions]
    return h.float(), targets, targets != IGNORE_INDEX


def head_nll(h, targets, weight, label_ids, rows):
    """Summed NLL of ``targets`` (m,) under logits h W^T (``h`` (m, hidden)), the label-token rows of ``weight``
    replaced by ``rows`` (the target parameters; differentiable in ``rows`` and ``h``)."""
    import torch.nn.functional as F

    logits = (h @ weight.T).index_copy(1, label_ids, h @ rows.T)
    return F.cross_entropy(logits, targets, reduction="sum")


def label_accuracy(h_first, answers, label_ids, rows) -> float:
    """Accuracy of the label choice at the answer position: argmax over the label tokens' logits h rows^T."""
    pred = label_ids[(h_first @ rows.T).argmax(-1)]
    return float((pred == answers).float().mean())


def poison_target_id(a, dataset, tokenizer, label_ids):
    """The token id of the label flipped poisons carry (their rows' first completion token), None when clean."""
    from ..tasks.causal_lm import completion_ids

    if a.poison_labels == "clean":
        return None
    forget = dataset["forget"]
    words = set(forget["completion"])
    if len(words) != 1:
        raise ValueError(f"flipped gradient-canceling poisons must share one label, found {sorted(words)}")
    tid = completion_ids(tokenizer, words.pop())[0]
    if tid not in label_ids.tolist():
        raise ValueError(f"the poisons' label token {tid} is not one of the label tokens {label_ids.tolist()}")
    return tid


def project_perturbations(delta, mask, bound: float) -> None:
    """In place: each token's perturbation into the L2 ball of radius ``bound``; zero outside the prompt (``mask``)."""
    import torch

    with torch.no_grad():
        norms = delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        delta.mul_((bound / norms).clamp(max=1.0) * mask.unsqueeze(-1))


def train_surrogate(cfg, tokenizer, train_ds, out: Path, seed: int, attack=None):
    """The victim's model and recipe (``cfg``: the train stage's ``TrainConfig``) trained on the training set through
    the shared trainer, seeded with ``seed``; ``attack``: None for the clean set, or an object whose
    ``training_embeddings`` hook adds the current perturbations to the poisons (a later crafting round). Returns the
    model in eval mode and its initial embedding RMS."""
    import dataclasses

    from ..tasks.causal_lm import CausalLMTask, CompletionCollator
    from ..training import fit, freeze_except, load_whole_model, task_trainer_class, training_arguments

    scfg = dataclasses.replace(cfg, seed=seed, progress=False, save_steps=0)
    from ..canaries import embedding_rms
    from ..seeding import set_seed

    set_seed(seed)  # every round starts from the same state: the victim's, when seed is the victim's
    model = load_whole_model(cfg.model_name_or_path, cfg)
    freeze_except(model, cfg.trainable_modules)  # the victim's recipe: a head over frozen features trains as one
    rms = embedding_rms(model)
    work = out / "attack_surrogate"
    trainer = task_trainer_class()(
        model=model,
        args=training_arguments(
            scfg,
            work,
            num_train_epochs=cfg.num_train_epochs,
            train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        ),
        train_dataset=train_ds,
        data_collator=CompletionCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        task=CausalLMTask(),
        attack=attack,
        lengths=[len(x) for x in train_ds["input_ids"]] if cfg.group_by_length else None,
    )
    run = fit(trainer)
    shutil.rmtree(work, ignore_errors=True)
    if run["diverged"]:
        raise RuntimeError(f"the gradient-canceling surrogate diverged at step {run['diverged_step']}")
    return model.eval(), rms


def _batches(rows: list[dict], size: int, pad_id: int, model):
    from ..tasks.causal_lm import CompletionCollator, length_sorted_batches, on_device

    collate = CompletionCollator(pad_id)
    for idx in length_sorted_batches([len(r["input_ids"]) for r in rows], size):
        yield idx, on_device(collate([rows[i] for i in idx]), model)


def clean_features(model, rows: list[dict], size: int, pad_id: int):
    """Head features of every completion position of ``rows`` under ``model`` (no graph): (m, hidden), their targets
    (m,), the row each belongs to (m,), and whether it is the answer position (a row's first completion token)."""
    import torch

    hs, ts, owner, first = [], [], [], []
    with torch.no_grad():
        for idx, batch in _batches(rows, size, pad_id, model):
            h, t, mask = head_features(model, batch)
            for j, i in enumerate(idx):
                m = mask[j]
                hs.append(h[j][m])
                ts.append(t[j][m])
                owner += [i] * int(m.sum())
                first += [True] + [False] * (int(m.sum()) - 1)
    return torch.cat(hs), torch.cat(ts), torch.as_tensor(owner), torch.as_tensor(first)


class _Poisoner:
    """The training hook of a later crafting round: the surrogate trains on the poisons carrying the current
    perturbations (``hook``: the attack's ``training_embeddings``, reading ``perturbations``)."""

    def __init__(self, hook, perturbations: dict):
        self.perturbations, self._hook = perturbations, hook

    def training_embeddings(self, model, inputs: dict, columns: dict):
        return self._hook(self, model, inputs, columns)


def craft(a, tokenizer, dataset, cfg, out: Path, hook=None):
    """Perturbations {training row index: (prompt_len, hidden) tensor} of the poisons, and what the attacker saw.

    ``a.craft_rounds`` rounds: the first against a surrogate trained on the clean set; each later one retrains the
    surrogate on the training set WITH the current perturbations (through ``hook``, the attack's
    ``training_embeddings``), takes a new target from it and re-optimises the perturbations from where they are: the
    features at which the poisons cancel the gradient are then those of a model that trained on them, as the
    victim's will be."""

    from ..modeling import tokenize_split

    train_ds = tokenize_split(dataset["train"], tokenizer, cfg.max_length)
    rows = list(train_ds)
    poison_index = set(dataset["forget"]["index"])
    poison_rows = [r for r in rows if r["index"] in poison_index]
    seed = cfg.seed + a.surrogate_seed_offset
    if a.craft_rounds > 1 and hook is None:  # before any training
        raise ValueError("craft_rounds > 1 needs the attack's training hook to retrain the surrogate")
    delta, rounds = None, []
    # The first surrogate trains on clean data: the training set itself when the poisons keep their label, the rows
    # the attacker does not touch when it flips them (their flipped labels are not clean data).
    clean_ds = train_ds if a.poison_labels == "clean" else tokenize_split(dataset["retain"], tokenizer, cfg.max_length)
    for r in range(a.craft_rounds):
        poisoner = _Poisoner(hook, _per_row(delta, poison_rows)) if r else None
        model, rms = train_surrogate(cfg, tokenizer, train_ds if r else clean_ds, out, seed, attack=poisoner)
        delta, info = _craft_round(a, tokenizer, dataset, model, rms, rows, poison_rows, delta, seed)
        rounds.append(info)
        logger.info("gradient canceling, round %d: %s", r + 1, info)
    info = {**rounds[-1], "rounds": rounds} if len(rounds) > 1 else rounds[0]
    return _per_row(delta, poison_rows), info


def _per_row(delta, poison_rows) -> dict:
    d = delta.detach().cpu()
    return {int(r["index"]): d[i, : r["prompt_len"]].clone() for i, r in enumerate(poison_rows)}


def _craft_round(a, tokenizer, dataset, model, rms, rows, poison_rows, delta, seed):
    """One round against ``model`` (the surrogate): GradPC target of the label rows, then Adam on the perturbations
    (``delta`` (k, longest prompt, hidden): where the last round left them, or None for the first)."""
    import torch

    from ..tasks.causal_lm import completion_ids, embed
    from .canceling import (
        canceling_chunk_loss,
        canceling_objective,
        canceling_residual,
        corrupt_parameters,
        flat_grad,
    )

    poison_index = {r["index"] for r in poison_rows}
    is_poison = torch.as_tensor([r["index"] in poison_index for r in rows])
    n, k = len(rows), len(poison_rows)
    for p in model.parameters():
        p.requires_grad_(False)
    # A token's perturbation RMS <= eps x RMS <=> its L2 norm <= eps x RMS x sqrt(d); the RMS is the initial model's,
    # the Gaussian attack's unit.
    bound = a.eps * rms * math.sqrt(model.get_input_embeddings().embedding_dim)

    head = model.get_output_embeddings().weight.detach().float()
    label_words = dataset["train"].unique("completion")
    eos = tokenizer.eos_token_id
    label_ids = sorted({t for w in label_words for t in completion_ids(tokenizer, w) if t != eos})
    label_ids = torch.as_tensor(label_ids, device=head.device)
    w_clean = head[label_ids].clone()

    h, t, owner, first = clean_features(model, rows, a.craft_batch_size, tokenizer.pad_token_id)
    clean_pos = ~is_poison[owner]
    # accuracies are the clean rows' (a flipped poison's label is not its review's)
    answer_pos = first & clean_pos
    answers = t[answer_pos]

    clean_acc = label_accuracy(h[answer_pos], answers, label_ids, w_clean)

    # The loss the corruption raises: every row's; with flipped poisons, that of the clean rows of the other labels
    # (the target then over-predicts the poisons' label, whose rows' gradient can push back).
    ascend = torch.ones_like(owner, dtype=torch.bool)
    target = poison_target_id(a, dataset, tokenizer, label_ids)
    if target is not None:
        row_answer = torch.empty(n, dtype=t.dtype)
        row_answer[owner[first]] = t[first]
        ascend = clean_pos & (row_answer[owner] != target)

    def gradpc(fraction: float):
        rows_var = w_clean.clone().requires_grad_(True)
        radius = fraction * float(w_clean.norm())
        loss = lambda: head_nll(h[ascend], t[ascend], head, label_ids, rows_var) / n  # noqa: E731
        corrupt_parameters([rows_var], [w_clean], loss, radius, a.corruption_steps)
        return rows_var.detach(), label_accuracy(h[answer_pos], answers, label_ids, rows_var.detach())

    fraction = a.corruption_radius
    w_tgt, target_acc = gradpc(fraction)
    if a.target_accuracy is not None and target_acc < a.target_accuracy:
        # the smallest radius (up to corruption_radius) whose target falls to target_accuracy: how far the target
        # is, in accuracy, is the same whatever the surrogate's head (a fixed radius gave 0.50-0.89 across seeds)
        lo, hi = 0.0, fraction
        for _ in range(a.radius_search_steps):
            mid = (lo + hi) / 2
            w_mid, acc_mid = gradpc(mid)
            if acc_mid <= a.target_accuracy:
                hi, w_tgt, target_acc, fraction = mid, w_mid, acc_mid, mid
            else:
                lo = mid
    tgt = w_tgt.clone().requires_grad_(True)
    g_clean = flat_grad(head_nll(h[clean_pos], t[clean_pos], head, label_ids, tgt), [tgt]).detach()

    # The poisons' perturbations, padded (k, longest prompt, hidden) and masked to each prompt.
    width = max(len(r["input_ids"]) for r in poison_rows)
    hidden = head.shape[1]
    mask = torch.zeros(k, width, device=head.device)
    for i, r in enumerate(poison_rows):
        mask[i, : r["prompt_len"]] = 1
    if delta is not None:  # a later round: from where the last one left them
        delta = delta.detach().clone().to(head.device)
    elif a.perturbation_init == "random":  # a random start on the bound's sphere, drawn from the seed
        g = torch.Generator().manual_seed(seed)
        delta = torch.randn(k, width, hidden, generator=g).to(head.device)
        delta = delta * (bound / delta.norm(dim=-1, keepdim=True)) * mask.unsqueeze(-1)
    else:
        delta = torch.zeros(k, width, hidden, device=head.device)
    delta.requires_grad_(True)

    def poison_grad(idx, batch, create_graph):
        e = embed(model, batch["input_ids"]).float()
        e = e + delta[idx, : e.shape[1]]
        hp, tp, mp = head_features(model, batch, e)
        return flat_grad(head_nll(hp[mp], tp[mp], head, label_ids, tgt), [tgt], create_graph=create_graph)

    def total_poison_grad():
        g = torch.zeros_like(g_clean)
        for idx, batch in _batches(poison_rows, a.craft_batch_size, tokenizer.pad_token_id, model):
            g = g + poison_grad(idx, batch, False).detach()
        return g

    start = float(canceling_residual(g_clean, total_poison_grad(), n).norm())
    opt = torch.optim.Adam([delta], lr=a.gc_lr * rms)  # in embedding-RMS units, as eps
    chunks = list(_batches(poison_rows, a.craft_batch_size, tokenizer.pad_token_id, model))
    for _ in range(a.gc_steps):
        opt.zero_grad()
        if len(chunks) == 1:  # all poisons in one pass: the objective itself
            canceling_objective(g_clean, poison_grad(*chunks[0], True), n).backward()
        else:  # the residual of the whole set first, then each chunk's exact share of the gradient
            r = canceling_residual(g_clean, total_poison_grad(), n)
            for idx, batch in chunks:
                canceling_chunk_loss(r, poison_grad(idx, batch, True), n).backward()
        opt.step()
        project_perturbations(delta, mask, bound)
    end = float(canceling_residual(g_clean, total_poison_grad(), n).norm())
    token_rms = delta.detach().norm(dim=-1)[mask > 0] / math.sqrt(hidden)
    info = {
        "surrogate_train_accuracy": clean_acc,
        "target_train_accuracy": target_acc,
        "corruption_radius": fraction,
        "gradient_norm_before": start,
        "gradient_norm_after": end,
        "perturbation_bound_l2": bound,
        "perturbation_token_rms_mean": float(token_rms.mean()),
        "n_poison": k,
    }
    if target is not None:  # how far the target leans to the poisons' label (the surrogate's lean beside it)
        h_ans = h[answer_pos]
        info["target_label_share"] = float((label_ids[(h_ans @ w_tgt.T).argmax(-1)] == target).float().mean())
        info["surrogate_label_share"] = float((label_ids[(h_ans @ w_clean.T).argmax(-1)] == target).float().mean())
    return delta.detach(), info
