"""Witches' Brew (Geiping et al. 2021): clean-label gradient matching on a surrogate, ||delta||_inf <= eps. The
poisons are images of ``adv_class`` whose training gradient points where the gradient of classifying the target test
images as ``adv_class`` does; the metric ``poison_success`` is the share of targets the victim calls ``adv_class``."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

from llm_unlearn.configs import ConfigError, check_positive
from llm_unlearn.lazy import F, torch
from llm_unlearn.registry import register_attack

from .common import Clean, ImageAttack, Poisoned, flat_grad


@dataclass
class WitchesBrewConfig:
    """The Witches' Brew knobs (``poison.attack_args``)."""

    eps: float = field(default=16 / 255, metadata={"help": "l_inf bound of the perturbation (pixels in [0, 1])"})
    steps: int = field(default=250, metadata={"help": "signed-Adam steps per restart"})
    restarts: int = field(default=8, metadata={"help": "random restarts (the best match is kept)"})
    attack_lr: float = field(default=0.1, metadata={"help": "Adam step size in units of eps"})
    num_targets: int = field(
        default=1,
        metadata={"help": "target test images (one shared pair of classes; their gradients are matched jointly)"},
    )
    target_class: int | None = field(
        default=None, metadata={"help": "the targets' true class (null: drawn from the seed)"}
    )
    adv_class: int | None = field(
        default=None, metadata={"help": "the class the targets should get (null: drawn); the poisons are of it"}
    )
    target_selection: Literal["random", "low_margin"] = field(
        default="random",
        metadata={
            "help": "random correctly classified targets, or those with the smallest surrogate margin to adv_class "
            "(an attacker's free choice; easier on small models)"
        },
    )
    match_epochs: list[int] = field(
        default_factory=list,
        metadata={
            "help": "also match gradients on the surrogate's checkpoints after these epochs (an ensemble along the "
            "training trajectory the victim will follow); empty: the final surrogate only"
        },
    )
    surrogate_seed_offset: int = field(
        default=10_000,
        metadata={
            "help": "the surrogate is initialised with seed + this; 0 = the attacker knows the victim's "
            "initialisation (a stronger threat model than the paper's)"
        },
    )

    def validate(self) -> None:
        check_positive(self, ("eps", "attack_lr"), at_least_one=("steps", "restarts", "num_targets"))
        if self.eps > 1:
            raise ConfigError(f"eps is in pixel units (pixels in [0, 1]): must be <= 1, got {self.eps}")


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
            g = flat_grad(loss, ps, create_graph=create_graph)
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


@register_attack("witches_brew", config=WitchesBrewConfig, track="image")
class WitchesBrewAttack(ImageAttack):
    """Clean-label gradient matching on a surrogate towards misclassified target test images."""

    metric = "poison_success"
    eval_keys = ("poison_success",)

    def poison(self, cfg, clean: Clean, rng, train_surrogate) -> Poisoned:
        from llm_unlearn.tasks.classification import device, logits_of, predict

        a = self.args
        k_cls, n = clean.num_classes, len(clean.train_y)
        k = self.count_poisons(cfg, n)
        epochs = sorted(set(a.match_epochs))
        if any(not 1 <= e <= cfg.train.epochs for e in epochs):
            raise ConfigError(
                f"poison.attack_args.match_epochs must lie in [1, train.epochs={cfg.train.epochs}], got {epochs}"
            )
        snapshots = {}

        def keep_checkpoint(epoch, model):
            if epoch in epochs and epoch != cfg.train.epochs:  # the final model is the surrogate itself
                snapshots[epoch] = copy.deepcopy(model)  # a frozen copy of the trajectory's checkpoint

        surrogate = train_surrogate(
            cfg.seed + a.surrogate_seed_offset, on_epoch_end=keep_checkpoint if epochs else None
        )
        test_pred = predict(surrogate, clean.test_x)
        classes = list(range(k_cls))
        target_class = a.target_class if a.target_class is not None else rng.choice(classes)
        adv_class = a.adv_class if a.adv_class is not None else rng.choice([c for c in classes if c != target_class])
        if target_class == adv_class or not (0 <= target_class < k_cls and 0 <= adv_class < k_cls):
            raise ConfigError(
                f"poison.attack_args.target_class and adv_class must be distinct classes in [0, {k_cls})"
            )
        # Targets: test images of target_class the clean surrogate gets right (else "success" could be its error).
        right = (clean.test_y == target_class) & (test_pred == target_class)
        cands = [i for i in range(len(clean.test_y)) if right[i]]
        if len(cands) < a.num_targets:
            raise ConfigError(
                f"poison.attack_args.num_targets={a.num_targets}: only {len(cands)} correctly classified test images "
                f"of class {target_class}"
            )
        if a.target_selection == "low_margin":  # closest to flipping: logit(true) - logit(adv) smallest
            lg = logits_of(surrogate, clean.test_x[cands])
            margin = lg[:, target_class] - lg[:, adv_class]
            targets = torch.as_tensor(sorted(cands[i] for i in margin.argsort()[: a.num_targets].tolist()))
        else:
            targets = torch.as_tensor(sorted(rng.sample(cands, a.num_targets)))
        pool = [i for i in range(n) if int(clean.train_y[i]) == adv_class]
        if k > len(pool):
            raise ConfigError(
                f"poison.poison_fraction asks for {k} poisons of class {adv_class}, which has {len(pool)}"
            )
        idx = torch.as_tensor(sorted(rng.sample(pool, k)))
        dev = device()
        surrogates = [m.to(dev).eval() for m in [surrogate, *(snapshots[e] for e in sorted(snapshots))]]
        tx = clean.test_x[targets].to(dev)
        adv = torch.full((len(targets),), adv_class, dtype=torch.long, device=dev)
        target_grads = []
        with torch.enable_grad():
            for s in surrogates:
                ps = [p for p in s.parameters() if p.requires_grad]
                target_grads.append(flat_grad(F.cross_entropy(s(pixel_values=tx).logits.float(), adv), ps).detach())
        base = clean.train_x[idx].to(dev)
        labels = clean.train_y[idx].to(dev)
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        delta, loss = gradient_matching(surrogates, base, labels, target_grads, a, g)
        images = (base + delta).cpu()
        keep = torch.ones(len(clean.test_y), dtype=torch.bool)
        keep[targets] = False  # targets are scored on their own, not in clean accuracy
        extras = {"target_images": clean.test_x[targets].clone(), "target_labels": clean.test_y[targets].clone()}
        extras["target_adv_labels"] = torch.full((len(targets),), adv_class, dtype=torch.long)
        info = {"eps": a.eps, "steps": a.steps, "restarts": a.restarts, "target_class": int(target_class)}
        info.update(adv_class=int(adv_class), target_test_rows=targets.tolist(), matching_loss=loss)
        info["match_epochs"] = sorted(snapshots) + [cfg.train.epochs]
        return Poisoned(idx, images, clean.train_y[idx].clone(), extras=extras, test_keep=keep, info=info)

    def evaluate(self, *, model, tensors: dict, manifest: dict, cfg, **_) -> tuple[dict, dict]:
        from llm_unlearn.tasks.classification import predict

        tp = predict(model, tensors["target_images"], cfg.batch_size)
        success = float((tp == tensors["target_adv_labels"]).float().mean())
        return {"poison_success": success}, {"target_predictions": tp.tolist()}

    def describe(self) -> str:
        a = self.args
        return f"l_inf eps {a.eps:.4g}, {a.steps} steps x {a.restarts} restarts, {a.num_targets} target(s)"
