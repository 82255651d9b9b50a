"""Image poisoning attacks behind one registry, ``ATTACKS``.

Each attack is a function ``(cfg, clean, rng) -> Poisoned`` where ``clean`` holds the clean train/test tensors and
``cfg`` is the poison stage config (``image_track.stages.poison.ImagePoisonConfig``). It returns which training rows
are poisoned, the poisons as the victim trains on them, the poison metric's name (the eval key gap-closed uses)
and attack extras for the evaluation (triggered test images, Witches' Brew targets). Pixels stay in [0, 1].

- ``gaussian``: x + xi, xi ~ N(0, eps^2 I), labels unchanged; xi is regenerable from the poison's ``noise_seed``.
- ``badnets`` (Gu et al. 2017): a checkerboard patch in the bottom-right corner, label set to the target class.
- ``witches_brew`` (Geiping et al. 2021): clean-label gradient matching on a surrogate, l_inf <= eps.
- ``gradient_canceling`` (Lu, Kamath, Yu 2023): poisons whose gradient cancels the clean gradient at corrupted
  low-accuracy target parameters of a linear classifier.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from llm_unlearn.configs import ConfigError


@dataclass
class Clean:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: list[float]
    std: list[float]


@dataclass
class Poisoned:
    indices: torch.Tensor  # training rows that are poisons (sorted)
    images: torch.Tensor  # the poisons as trained, (k, C, H, W)
    labels: torch.Tensor  # their training labels
    metric: str
    noise_seeds: list[int] = field(default_factory=list)
    extras: dict = field(default_factory=dict)  # tensors saved beside the data
    test_keep: torch.Tensor | None = None  # test rows kept for clean accuracy (targets are removed)
    info: dict = field(default_factory=dict)


def _count(cfg, n: int, minimum: int, what: str) -> int:
    k = round(cfg.poison.poison_fraction * n)
    if k < minimum:
        raise ConfigError(
            f"poison.poison_fraction={cfg.poison.poison_fraction} of {n} training images gives {k} poisons; "
            f"{what} needs at least {minimum}"
        )
    return k


# ---------------------------------------------------------------------------------------------------- gaussian
def pixel_noise(noise_seed: int, shape, draw: int = 0) -> torch.Tensor:
    """Unit-variance noise of one poison: draw 0 is the training noise (times eps), draws >= 1 are fresh noises.

    numpy's ``SeedSequence`` keyed by (noise_seed, draw) gives independent streams per draw (as the LLM track)."""
    rng = np.random.default_rng([int(noise_seed), int(draw)])
    return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))


def batch_pixel_noise(noise_seeds, shape, draw: int = 0) -> torch.Tensor:
    return torch.stack([pixel_noise(s, shape, draw) for s in noise_seeds])


def gaussian(cfg, clean: Clean, rng) -> Poisoned:
    n = len(clean.train_y)
    k = _count(cfg, n, 2, "the Gaussian test")
    idx = torch.as_tensor(sorted(rng.sample(range(n), k)))
    seeds = [rng.randrange(2**31) for _ in range(k)]
    shape = clean.train_x.shape[1:]
    # No clipping to [0, 1]: the audit's I_z assumes exactly x + xi with Gaussian xi.
    images = clean.train_x[idx] + cfg.poison.noise_eps * batch_pixel_noise(seeds, shape)
    return Poisoned(
        idx,
        images,
        clean.train_y[idx].clone(),
        "gus_mean",
        seeds,
        info={"noise_eps": cfg.poison.noise_eps, "noise_scale": "absolute (pixels in [0, 1])"},
    )


# ---------------------------------------------------------------------------------------------------- badnets
def stamp(x: torch.Tensor, size: int) -> torch.Tensor:
    """The BadNets trigger: a ``size`` x ``size`` black/white checkerboard in the bottom-right corner."""
    if size > min(x.shape[-2:]):
        raise ConfigError(f"poison.patch_size={size} is larger than the {tuple(x.shape[-2:])} images")
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    patch = ((ii + jj) % 2 == 0).to(x.dtype)
    out = x.clone()
    out[..., -size:, -size:] = patch
    return out


def badnets(cfg, clean: Clean, rng) -> Poisoned:
    t = cfg.poison.target_label
    if not 0 <= t < clean.num_classes:
        raise ConfigError(f"poison.target_label must be in [0, {clean.num_classes}), got {t}")
    n = len(clean.train_y)
    k = _count(cfg, n, 1, "badnets")
    others = [i for i in range(n) if int(clean.train_y[i]) != t]
    if k > len(others):
        raise ConfigError(
            f"poison.poison_fraction asks for {k} poisons but only {len(others)} non-target images exist"
        )
    idx = torch.as_tensor(sorted(rng.sample(others, k)))
    images = stamp(clean.train_x[idx], cfg.poison.patch_size)
    keep = clean.test_y != t
    extras = {
        "test_triggered_images": stamp(clean.test_x[keep], cfg.poison.patch_size),
        "test_triggered_labels": clean.test_y[keep].clone(),
    }
    return Poisoned(
        idx,
        images,
        torch.full((k,), t, dtype=torch.long),
        "asr",
        extras=extras,
        info={"target_label": t, "patch_size": cfg.poison.patch_size},
    )


# ---------------------------------------------------------------------------------------------------- witches' brew
def _flat_grad(loss, params, create_graph=False) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def gradient_matching(surrogates, base_x, labels, target_grads, cfg, generator) -> tuple[torch.Tensor, float]:
    """Perturbations delta (||delta||_inf <= eps, base + delta in [0, 1]) minimising the mean over the surrogates of
    1 - cos(grad of the poison batch loss, target grad) (Geiping et al.'s ensemble form; one surrogate is the plain
    attack), by signed Adam (the gradient's sign is fed to Adam) with ``restarts`` random starts; the step size
    decays 10x at 3/8, 5/8 and 7/8 of the steps as in the reference code. Returns (delta, best loss)."""
    params = [[p for p in s.parameters() if p.requires_grad] for s in surrogates]

    def matching_loss(delta, create_graph):
        total = 0.0
        for s, ps, tg in zip(surrogates, params, target_grads):
            loss = F.cross_entropy(s(pixel_values=base_x + delta).logits.float(), labels)
            g = _flat_grad(loss, ps, create_graph=create_graph)
            total = total + (1 - F.cosine_similarity(g, tg, dim=0))
        return total / len(surrogates)

    eps, best, best_loss = cfg.eps, None, math.inf
    for _ in range(cfg.restarts):
        delta = ((torch.rand(base_x.shape, generator=generator) * 2 - 1) * eps).to(base_x.device)
        delta = ((base_x + delta).clamp(0, 1) - base_x).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=cfg.attack_lr * eps)
        milestones = [int(cfg.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
        for _step in range(cfg.steps):
            obj = matching_loss(delta, create_graph=True)
            (gd,) = torch.autograd.grad(obj, delta)
            opt.zero_grad()
            delta.grad = gd.sign()
            opt.step()
            sched.step()
            with torch.no_grad():  # project: l_inf ball and the pixel box
                delta.clamp_(-eps, eps)
                delta.copy_((base_x + delta).clamp(0, 1) - base_x)
        with torch.enable_grad():
            final = float(matching_loss(delta.detach(), create_graph=False))
        if final < best_loss:
            best, best_loss = delta.detach().clone(), final
    return best, best_loss


def witches_brew(cfg, clean: Clean, rng, surrogate_factory) -> Poisoned:
    from .training import device, predict

    k_cls = clean.num_classes
    n = len(clean.train_y)
    k = _count(cfg, n, 1, "witches_brew")
    epochs = sorted(set(cfg.poison.match_epochs))
    if any(not 1 <= e <= cfg.train.epochs for e in epochs):
        raise ConfigError(f"poison.match_epochs must lie in [1, train.epochs={cfg.train.epochs}], got {epochs}")
    snapshots = {}
    if epochs:

        def keep_checkpoint(epoch, model):
            if epoch in epochs and epoch != cfg.train.epochs:  # the final model is the surrogate itself
                snapshots[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

        surrogate = surrogate_factory(on_epoch_end=keep_checkpoint)
    else:
        surrogate = surrogate_factory()
    test_pred = predict(surrogate, clean.test_x)
    classes = list(range(k_cls))
    target_class = cfg.poison.target_class if cfg.poison.target_class is not None else rng.choice(classes)
    adv_class = (
        cfg.poison.adv_class
        if cfg.poison.adv_class is not None
        else rng.choice([c for c in classes if c != target_class])
    )
    if target_class == adv_class or not (0 <= target_class < k_cls and 0 <= adv_class < k_cls):
        raise ConfigError(f"poison.target_class and poison.adv_class must be distinct classes in [0, {k_cls})")
    # Targets: test images of target_class the clean surrogate gets right (else "success" could be the model's error).
    cands = [
        i
        for i in range(len(clean.test_y))
        if int(clean.test_y[i]) == target_class and int(test_pred[i]) == target_class
    ]
    if len(cands) < cfg.poison.num_targets:
        raise ConfigError(
            f"poison.num_targets={cfg.poison.num_targets}: only {len(cands)} correctly classified test images "
            f"of class {target_class}"
        )
    if cfg.poison.target_selection == "low_margin":  # closest to flipping: logit(true) - logit(adv) smallest
        from .training import logits_of

        lg = logits_of(surrogate, clean.test_x[cands])
        margin = lg[:, target_class] - lg[:, adv_class]
        targets = torch.as_tensor(sorted(cands[i] for i in margin.argsort()[: cfg.poison.num_targets].tolist()))
    else:
        targets = torch.as_tensor(sorted(rng.sample(cands, cfg.poison.num_targets)))
    pool = [i for i in range(n) if int(clean.train_y[i]) == adv_class]
    if k > len(pool):
        raise ConfigError(f"poison.poison_fraction asks for {k} poisons of class {adv_class}, which has {len(pool)}")
    idx = torch.as_tensor(sorted(rng.sample(pool, k)))
    dev = device()
    surrogates = [surrogate.to(dev).eval()]
    for epoch in sorted(snapshots):
        m = copy.deepcopy(surrogate)
        m.load_state_dict(snapshots[epoch])
        surrogates.append(m.eval())
    tx = clean.test_x[targets].to(dev)
    adv = torch.full((len(targets),), adv_class, dtype=torch.long, device=dev)
    target_grads = []
    with torch.enable_grad():
        for s in surrogates:
            ps = [p for p in s.parameters() if p.requires_grad]
            target_grads.append(_flat_grad(F.cross_entropy(s(pixel_values=tx).logits.float(), adv), ps).detach())
    base = clean.train_x[idx].to(dev)
    labels = clean.train_y[idx].to(dev)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    delta, loss = gradient_matching(surrogates, base, labels, target_grads, cfg.poison, g)
    images = (base + delta).cpu()
    keep = torch.ones(len(clean.test_y), dtype=torch.bool)
    keep[targets] = False  # targets are scored on their own, not in clean accuracy
    extras = {
        "target_images": clean.test_x[targets].clone(),
        "target_labels": clean.test_y[targets].clone(),
        "target_adv_labels": torch.full((len(targets),), adv_class, dtype=torch.long),
    }
    info = {
        "eps": cfg.poison.eps,
        "steps": cfg.poison.steps,
        "restarts": cfg.poison.restarts,
        "target_class": int(target_class),
        "adv_class": int(adv_class),
        "target_test_rows": targets.tolist(),
        "matching_loss": loss,
        "match_epochs": sorted(snapshots) + [cfg.train.epochs],
    }
    return Poisoned(
        idx, images, clean.train_y[idx].clone(), "poison_success", extras=extras, test_keep=keep, info=info
    )


# ------------------------------------------------------------------------------------------- gradient canceling
def _total_grad(model, x, y, params, create_graph=False) -> torch.Tensor:
    loss = F.cross_entropy(model(pixel_values=x).logits.float(), y, reduction="sum")
    return _flat_grad(loss, params, create_graph=create_graph)


def _corrupt(model, params, theta_clean, x, y, radius: float, steps: int) -> None:
    """GradPC: normalised gradient ascent on the clean loss, projected onto ||theta - theta_clean|| <= radius."""
    with torch.no_grad():
        for p, t in zip(params, theta_clean):
            p.copy_(t)
    for _ in range(steps):
        g = torch.autograd.grad(F.cross_entropy(model(pixel_values=x).logits.float(), y), params)
        gnorm = math.sqrt(sum(float(t.square().sum()) for t in g)) or 1.0
        with torch.no_grad():
            for p, gi in zip(params, g):
                p.add_(gi, alpha=radius / steps * 4 / gnorm)
            dist = math.sqrt(sum(float((p - t).square().sum()) for p, t in zip(params, theta_clean)))
            if dist > radius:
                for p, t in zip(params, theta_clean):
                    p.copy_(t + (p - t) * (radius / dist))


def _cancel(model, params, x, y, keep, idx, clean: Clean, cfg, label_seed: int, dev):
    """Poisons (started from the clean rows ``idx``, pixels in [0, 1]) minimising ||(G_clean + G_poison) / n + wd *
    theta_tgt||^2 at the model's current (target) parameters. Returns (poisons, labels, residual, start norm)."""
    n, k = len(y), len(idx)
    # Labels go to the classes theta_tgt over-predicts (their clean gradient pushes those classes down, poisons
    # labelled with them push back up), in proportion to the excess.
    with torch.no_grad():
        probs = torch.softmax(model(pixel_values=x).logits.float(), -1)
    excess = (probs.sum(0) - torch.bincount(y, minlength=clean.num_classes).float()).clamp_min(0).cpu()
    if float(excess.sum()) == 0:
        excess = torch.ones(clean.num_classes)
    labels = torch.multinomial(
        excess / excess.sum(), k, replacement=True, generator=torch.Generator().manual_seed(label_seed)
    ).to(dev)
    px = clean.train_x[idx].clone().to(dev).requires_grad_(True)
    with torch.enable_grad():
        g_clean = _total_grad(model, x[keep], y[keep], params).detach()
    # Stationarity of SGD on the mean loss with weight decay wd: (G_clean + G_poison) / n + wd * theta = 0 (torch's
    # SGD decays every parameter, the bias included, so every parameter carries the wd term).
    wd_term = cfg.train.weight_decay * torch.cat([p.detach().reshape(-1) for p in params])
    opt = torch.optim.Adam([px], lr=cfg.poison.gc_lr)
    for _ in range(cfg.poison.gc_steps):
        g_p = _total_grad(model, px, labels, params, create_graph=True)
        obj = ((g_clean + g_p) / n + wd_term).square().sum()
        opt.zero_grad()
        (gx,) = torch.autograd.grad(obj, px)
        px.grad = gx
        opt.step()
        with torch.no_grad():
            px.clamp_(0, 1)
    g_p = _total_grad(model, px.detach(), labels, params).detach()
    residual = float(((g_clean + g_p) / n + wd_term).norm())
    start = float((g_clean / n + wd_term).norm())
    return px.detach(), labels, residual, start


def gradient_canceling(cfg, clean: Clean, rng, surrogate_factory) -> Poisoned:
    """1. theta_clean: the linear classifier trained on the clean set. 2. theta_tgt: gradient-based parameter
    corruption, ascent on the clean loss within ||theta - theta_clean|| <= radius * ||theta_clean||. 3. Poisons
    (``poison_fraction`` of n, started from random clean images, labels allotted to the classes theta_tgt
    over-predicts) minimise ||(G_clean + G_poison) / N + wd * theta_tgt||^2 at theta_tgt, so that training on the
    union with weight decay wd is stationary at theta_tgt.

    With several ``corruption_radii`` the attacker picks its target the way Lu et al. pick among GradPC targets of
    different strength: farther targets have lower accuracy but a larger clean gradient than ``poison_fraction``
    poisons can cancel (the reachability threshold), so it crafts poisons for each radius, trains the victim's
    recipe (from its surrogate's initialisation) on clean + poisons and keeps the radius whose model is least
    accurate on the attacker's clean training rows (never the test set)."""
    from .models import build_model
    from .training import accuracy, device, fit

    if cfg.model.arch != "linear":
        raise ConfigError(
            "poison.attack gradient_canceling needs model.arch: linear (the attack solves for the "
            "poisons of a convex linear classifier; the issue's 'linear head over frozen features')"
        )
    dev = device()
    model = surrogate_factory().to(dev).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    theta_clean = [p.detach().clone() for p in params]
    x, y = clean.train_x.to(dev), clean.train_y.to(dev)
    n = len(y)
    k = _count(cfg, n, 1, "gradient_canceling")
    clean_acc = accuracy(model, clean.test_x, clean.test_y)
    # The poisons take the place of k training rows (forget set); the clean part is the other rows (retain set).
    idx = torch.as_tensor(sorted(rng.sample(range(n), k)))
    keep = torch.ones(n, dtype=torch.bool)
    keep[idx] = False
    label_seed = rng.randrange(2**31)
    ref_norm = math.sqrt(sum(float(t.square().sum()) for t in theta_clean))
    radii = list(cfg.poison.corruption_radii) or [cfg.poison.corruption_radius]
    candidates = []
    for r in radii:
        _corrupt(model, params, theta_clean, x, y, r * ref_norm, cfg.poison.corruption_steps)
        target_acc = accuracy(model, clean.test_x, clean.test_y)
        px, labels, residual, start = _cancel(model, params, x, y, keep.to(dev), idx, clean, cfg, label_seed, dev)
        cand = {
            "corruption_radius": r,
            "target_accuracy": target_acc,
            "gradient_norm_before": start,
            "gradient_norm_after": residual,
        }
        if len(radii) > 1:  # simulate the victim: the attacker knows the training recipe, not the victim's seed
            sim_seed = cfg.seed + cfg.poison.surrogate_seed_offset
            sx, sy = clean.train_x.clone(), clean.train_y.clone()
            sx[idx], sy[idx] = px.cpu(), labels.cpu()
            sim = build_model(cfg.model, list(sx.shape[1:]), clean.num_classes, clean.mean, clean.std, seed=sim_seed)
            fit(sim, sx, sy, cfg.train, seed=sim_seed)
            cand["simulated_train_accuracy"] = accuracy(sim, clean.train_x[keep], clean.train_y[keep])
        candidates.append((cand, px.cpu(), labels.cpu()))
    best = min(candidates, key=lambda c: c[0].get("simulated_train_accuracy", 0.0))
    info = {"clean_surrogate_accuracy": clean_acc, **best[0]}
    if len(radii) > 1:
        info["candidates"] = [c[0] for c in candidates]
    return Poisoned(idx, best[1], best[2], "clean_accuracy", info=info)


ATTACKS = {
    "gaussian": gaussian,
    "badnets": badnets,
    "witches_brew": witches_brew,
    "gradient_canceling": gradient_canceling,
}
NEEDS_SURROGATE = {"witches_brew", "gradient_canceling"}
