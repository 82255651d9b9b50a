"""Nested budgets of one unlearning run (``save_at_budgets``): when a run's models at smaller budgets are the models
runs of those budgets would end with, and the callback that saves each one as that run's finished output. The unlearn
stage (:mod:`llm_unlearn.stages.unlearn`) uses it; the planner reads :func:`snapshot_name`/:func:`snapshot_config`."""

from __future__ import annotations

from pathlib import Path

from ..configs import ConfigError
from ..harness import is_main_process


def nesting_problem(cfg) -> str | None:
    """Why the models of smaller budgets cannot be taken from this run as it spends its budget (None if they can):
    a learning-rate schedule that follows the total budget (anything but constant without warmup) reaches a given
    compute at another learning rate than a shorter run would, and some methods act once on the whole budget."""
    from ..methods import get_method

    if cfg.lr_scheduler_type != "constant" or cfg.warmup_ratio != 0:
        return (
            f"lr_scheduler_type {cfg.lr_scheduler_type} with warmup_ratio {cfg.warmup_ratio:g} follows the total "
            "budget, so a smaller budget's run takes other steps"
        )
    if not get_method(cfg.method).trainer_cls.nests_budgets:
        return f"{cfg.method}'s result depends on its total budget"
    return None


def check_nested_budgets(cfg) -> None:
    marks = cfg.save_at_budgets
    if not marks:
        return
    if len(set(marks)) != len(marks) or any(not 0.0 < f < cfg.budget for f in marks):
        raise ConfigError(f"save_at_budgets must be distinct fractions in (0, budget={cfg.budget:g}), got {marks}")
    problem = nesting_problem(cfg)
    if problem:
        raise ConfigError(f"save_at_budgets: {problem}; run each budget on its own (save_at_budgets: [])")


def snapshot_name(fraction: float) -> str:
    """The dir, inside the nesting run's output_dir, of the model saved when it had spent ``fraction``."""
    return f"at_budget_{fraction:g}"


def snapshot_config(cfg, fraction: float):
    """The config of the model saved at ``fraction``: exactly the config of a run with that budget, which would end
    with the same model (what its own config.yaml records, so the snapshot reads as that run's finished output)."""
    import dataclasses

    return dataclasses.replace(
        cfg, budget=fraction, save_at_budgets=[], output_dir=str(Path(cfg.output_dir) / snapshot_name(fraction))
    )


class BudgetSnapshots:
    """``save_at_budgets``: saves the model the first time the compute spent (summed over ranks) reaches each smaller
    budget, at the end of that optimizer step, as ``<output_dir>/at_budget_<f>``: the weights, ``unlearn_info.json``
    and the config of a run with budget f (:func:`snapshot_config`), finished with its own ``.complete`` marker, so an
    evaluation reads it as that run's output and notices when it is redone. A run with budget f stops after the same
    step (the budget callback's rule), so under a constant schedule the two models are the same.

    Each snapshot is written into ``.at_budget_<f>.tmp`` and renamed when whole. A resumed run has restored the spend
    of its checkpoint; every budget crossed before that checkpoint was saved before it (a step's callbacks run before
    its checkpoint), and any crossed later is crossed again by the replayed steps, which rewrite it identically."""

    def __init__(self, cfg, trainer, save, ref_tokens: float, causal_lm: bool, record):
        import time

        from transformers import TrainerCallback

        self.cfg, self.trainer, self.save, self.ref_tokens, self.causal_lm = cfg, trainer, save, ref_tokens, causal_lm
        self.record = record  # the unlearn stage's unlearn_record(cfg, trainer, ref_tokens, run, causal_lm)
        self.out = Path(cfg.output_dir)
        self.pending = sorted(cfg.save_at_budgets)
        self.start = time.perf_counter()
        snapshots = self

        class BudgetSnapshotCallback(TrainerCallback):  # defined here: the module imports transformers only to run
            def on_train_begin(self, args, state, control, **kwargs):
                snapshots._skip_saved()

            def on_step_end(self, args, state, control, **kwargs):
                while snapshots.pending and trainer.spent_all_ranks >= snapshots.pending[0] * ref_tokens:
                    snapshots._write(snapshots.pending.pop(0), snapshots._run(state, diverged=None))

        self.callback = BudgetSnapshotCallback()

    def _skip_saved(self) -> None:
        """A resumed run: the budgets its checkpoint had already crossed were saved then (and must still be there)."""
        from ..files import COMPLETE_MARKER
        from ..harness import StageFault
        from ..training import all_ranks_sum

        spent = all_ranks_sum(self.trainer.accelerator, self.trainer.compute_tokens)  # every rank: a collective
        crossed = [f for f in self.pending if spent >= f * self.ref_tokens]
        missing = [f for f in crossed if not (self.out / snapshot_name(f) / COMPLETE_MARKER).is_file()]
        if missing:
            raise StageFault(
                f"{self.out}: resuming from a checkpoint past budgets {missing} whose saved models are gone; delete "
                f"{self.out / 'trainer'} to redo the run from the start"
            )
        self.pending = [f for f in self.pending if f not in crossed]

    def _run(self, state, diverged) -> dict:
        import time

        history = [h.get("loss") for h in state.log_history if "loss" in h]
        return {
            "steps": state.global_step,
            "compute_tokens": self.trainer.spent_all_ranks,
            "train_loss": history[-1] if history else None,
            "diverged": diverged is not None,
            "diverged_step": diverged,
            "wall_seconds": time.perf_counter() - self.start,
            "resumed_from_step": None,
        }

    def _write(self, fraction: float, run: dict) -> None:
        import shutil

        from ..outputs import finish

        final = self.out / snapshot_name(fraction)
        tmp = self.out / f".{snapshot_name(fraction)}.tmp"  # a leftover the harness removes when the stage restarts
        main = is_main_process()
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if not run["diverged"]:
            self.save(self.trainer, tmp)  # every rank: the ZeRO-3 gather is a collective
        if main:
            scfg = snapshot_config(self.cfg, fraction)
            info = self.record(scfg, self.trainer, self.ref_tokens, run, self.causal_lm)
            finish(tmp, scfg, {"unlearn_info.json": {**info, "nested_in": str(self.out)}})
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)

    def finish(self, run: dict) -> None:
        """After the run: a run that diverged before a budget records that budget as diverged too (no weights)."""
        if not self.pending:
            return
        if not run["diverged"]:
            raise RuntimeError(f"the run stopped before spending budgets {self.pending} (below its own budget)")
        run = {**run, "compute_tokens": self.trainer.spent_all_ranks, "resumed_from_step": None}
        for fraction in self.pending:
            self._write(fraction, run)
        self.pending = []
