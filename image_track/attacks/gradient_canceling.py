"""Gradient Canceling (Lu, Kamath, Yu 2023): poisons whose gradient cancels the clean gradient at corrupted,
low-accuracy target parameters of a linear classifier, so that training on clean + poisons is stationary there. The
metric is the victim's clean accuracy (an indiscriminate attack)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llm_unlearn.attacks.canceling import canceling_objective, canceling_residual, corrupt_parameters
from llm_unlearn.configs import ConfigError, check_positive
from llm_unlearn.lazy import F, torch
from llm_unlearn.registry import register_attack

from .common import Clean, ImageAttack, Poisoned, flat_grad


@dataclass
class GradientCancelingConfig:
    """The Gradient Canceling knobs (``poison.attack_args``)."""

    corruption_radius: float = field(
        default=0.5, metadata={"help": "||theta_tgt - theta_clean|| as a fraction of ||theta_clean||"}
    )
    corruption_radii: list[float] = field(
        default_factory=list,
        metadata={
            "help": "candidate radii (empty: corruption_radius alone); the attacker crafts poisons for each, trains "
            "the training recipe on clean + poisons and keeps the least accurate on its clean training rows "
            "(farther targets are less reachable)"
        },
    )
    corruption_steps: int = field(default=100, metadata={"help": "parameter-corruption steps"})
    gc_steps: int = field(default=500, metadata={"help": "poison optimisation steps (Adam)"})
    gc_lr: float = field(default=0.05, metadata={"help": "Adam step size on the poison pixels"})
    surrogate_seed_offset: int = field(
        default=10_000,
        metadata={
            "help": "the surrogate (and the simulated victim) is initialised with seed + this; 0 = the attacker "
            "knows the victim's initialisation"
        },
    )

    def validate(self) -> None:
        check_positive(self, ("corruption_radius", "gc_lr"), at_least_one=("corruption_steps", "gc_steps"))
        if any(not r > 0 for r in self.corruption_radii):
            raise ConfigError(f"corruption_radii must all be > 0, got {self.corruption_radii}")


def _total_grad(model, x, y, params, create_graph=False) -> torch.Tensor:
    loss = F.cross_entropy(model(pixel_values=x).logits.float(), y, reduction="sum")
    return flat_grad(loss, params, create_graph=create_graph)


def _cancel(model, params, x, y, keep, idx, clean: Clean, cfg, a, label_seed: int, dev):
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
    opt = torch.optim.Adam([px], lr=a.gc_lr)
    for _ in range(a.gc_steps):
        g_p = _total_grad(model, px, labels, params, create_graph=True)
        obj = canceling_objective(g_clean, g_p, n, wd_term)
        opt.zero_grad()
        (gx,) = torch.autograd.grad(obj, px)
        px.grad = gx
        opt.step()
        with torch.no_grad():
            px.clamp_(0, 1)
    g_p = _total_grad(model, px.detach(), labels, params).detach()
    residual = float(canceling_residual(g_clean, g_p, n, wd_term).norm())
    start = float((g_clean / n + wd_term).norm())
    return px.detach(), labels, residual, start


@register_attack("gradient_canceling", config=GradientCancelingConfig, track="image")
class GradientCancelingAttack(ImageAttack):
    """Poisons that make training stationary at low-accuracy target parameters of a linear classifier."""

    metric = "clean_accuracy"  # computed by every evaluation: no eval keys of its own

    def check(self, cfg) -> None:
        if cfg.model.arch != "linear":
            raise ConfigError(
                "poison.attack gradient_canceling needs model.arch: linear (the attack solves for the poisons of a "
                f"convex linear classifier; the issue's 'linear head over frozen features'), got {cfg.model.arch!r}"
            )

    def poison(self, cfg, clean: Clean, rng, train_surrogate) -> Poisoned:
        """theta_clean (trained on the clean set), theta_tgt (GradPC: ascent on the clean loss within ||theta -
        theta_clean|| <= radius * ||theta_clean||), then poisons (started from random clean images, labelled with the
        classes theta_tgt over-predicts) minimising ||(G_clean + G_poison) / N + wd * theta_tgt||^2 at theta_tgt.

        With several ``corruption_radii`` the attacker picks its target as Lu et al. pick among GradPC targets:
        farther ones have lower accuracy but may be beyond what ``poison_fraction`` poisons can cancel, so it crafts
        poisons for each, trains the victim's recipe on clean + poisons and keeps the radius whose model is least
        accurate on its clean training rows (never the test set)."""
        from llm_unlearn.tasks.classification import accuracy, device

        self.check(cfg)
        a = self.args
        dev = device()
        model = train_surrogate(cfg.seed + a.surrogate_seed_offset).to(dev).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        theta_clean = [p.detach().clone() for p in params]
        x, y = clean.train_x.to(dev), clean.train_y.to(dev)
        n = len(y)
        k = self.count_poisons(cfg, n)
        clean_acc = accuracy(model, clean.test_x, clean.test_y)
        # The poisons take the place of k training rows (forget set); the clean part is the other rows (retain set).
        idx = torch.as_tensor(sorted(rng.sample(range(n), k)))
        keep = torch.ones(n, dtype=torch.bool)
        keep[idx] = False
        label_seed = rng.randrange(2**31)
        ref_norm = math.sqrt(sum(float(t.square().sum()) for t in theta_clean))

        def clean_loss():  # the mean clean loss GradPC ascends
            return F.cross_entropy(model(pixel_values=x).logits.float(), y)

        radii = list(a.corruption_radii) or [a.corruption_radius]
        candidates = []
        for r in radii:
            corrupt_parameters(params, theta_clean, clean_loss, r * ref_norm, a.corruption_steps)  # GradPC
            target_acc = accuracy(model, clean.test_x, clean.test_y)
            px, labels, residual, start = _cancel(
                model, params, x, y, keep.to(dev), idx, clean, cfg, a, label_seed, dev
            )
            cand = {
                "corruption_radius": r,
                "target_accuracy": target_acc,
                "gradient_norm_before": start,
                "gradient_norm_after": residual,
            }
            if len(radii) > 1:  # simulate the victim: the attacker knows the training recipe, not the victim's seed
                sx, sy = clean.train_x.clone(), clean.train_y.clone()
                sx[idx], sy[idx] = px.cpu(), labels.cpu()
                sim = train_surrogate(cfg.seed + a.surrogate_seed_offset, x=sx, y=sy)
                cand["simulated_train_accuracy"] = accuracy(sim, clean.train_x[keep], clean.train_y[keep])
            candidates.append((cand, px.cpu(), labels.cpu()))
        best = min(candidates, key=lambda c: c[0].get("simulated_train_accuracy", 0.0))
        info = {"clean_surrogate_accuracy": clean_acc, **best[0]}
        if len(radii) > 1:
            info["candidates"] = [c[0] for c in candidates]
        return Poisoned(idx, best[1], best[2], info=info)

    def describe(self) -> str:
        a = self.args
        radius = (
            f"corruption radius picked by the attacker from {a.corruption_radii}"
            if a.corruption_radii
            else f"corruption radius {a.corruption_radius:g}"
        )
        return f"{radius}, {a.gc_steps} poison steps"
