"""Mutation check: would the test suite notice if the science were wrong?

Each mutant is one deliberate breakage of the product (training that stops poisoning, an unlearning method fed the
wrong half of its batch, a report that swaps initial and gold, ...). For each, the script copies the repository (code,
tests, recipes; no venv, no .git, no runs) into a temporary directory, applies the breakage there, runs the tests that
should catch it with that copy first on ``PYTHONPATH``, and records whether they failed ("killed") or passed
("SURVIVED"). The checkout itself is never modified.

    .venv/bin/python scripts/mutants.py                 # every mutant (~15-25 min on 2 CPU cores)
    .venv/bin/python scripts/mutants.py --list          # names and what each breaks
    .venv/bin/python scripts/mutants.py ngd_no_noise ga_on_retain

Exit status 1 when a mutant survives or cannot be applied (its code changed: update its ``old`` text). A developer
tool, not part of CI: it runs a subset of the suite once per mutant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".venv", ".git", "runs", ".whl", "__pycache__", "*.egg-info", ".pytest_cache", "hub_*")


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in ``file``
    new: str
    tests: tuple[str, ...]  # pytest node ids or files that must fail
    also: tuple[tuple[str, str], ...] = ()  # further (old, new) edits of the same file


MUTANTS = [
    # ---- attacks and training: the poison must really be there
    Mutant(
        "train_no_noise",
        "the Gaussian attack's training hook adds no noise (returns emb): the initial model is never poisoned",
        "llm_unlearn/canaries.py",
        "return emb + noise.to(emb.device, emb.dtype)",
        "return emb",
        ("tests/test_poisoning_applied.py", "tests/test_science.py"),
    ),
    Mutant(
        "train_no_noise_science",
        "the same breakage, against the integration test alone: its run must show no poison signature any more",
        "llm_unlearn/canaries.py",
        "return emb + noise.to(emb.device, emb.dtype)",
        "return emb",
        ("tests/test_science.py::test_gaussian_test_separates_initial_from_gold",),
    ),
    Mutant(
        "train_noise_wrong_rows",
        "the noise of each row goes to the next row of the batch",
        "llm_unlearn/canaries.py",
        "return emb + noise.to(emb.device, emb.dtype)",
        "return emb + noise.roll(1, 0).to(emb.device, emb.dtype)",
        ("tests/test_poisoning_applied.py",),
    ),
    Mutant(
        "backdoor_no_trigger",
        "the backdoor relabels its rows but never inserts the trigger",
        "llm_unlearn/attacks/backdoor.py",
        '    if position == "start":\n        return f"{trigger} {text}"',
        '    if position == "start":\n        return text',
        ("tests/test_poisoning_applied.py", "tests/test_attacks.py"),
    ),
    Mutant(
        "image_gaussian_no_noise",
        "the image track's Gaussian poisons are the clean images",
        "image_track/attacks/gaussian.py",
        "images = clean.train_x[idx] + self.args.noise_eps * batch_pixel_noise(seeds, shape)",
        "images = clean.train_x[idx].clone()",
        ("tests/test_poisoning_applied.py", "tests/test_image_attacks.py"),
    ),
    # ---- the audit and the metrics
    Mutant(
        "canary_hook_no_noise",
        "a trainer with canaries attached trains on the clean embeddings (the hook adds nothing)",
        "llm_unlearn/canaries.py",
        "return add_prompt_noise(output, seeds, plens, self.std, starts=starts)",
        "return None",
        ("tests/test_canaries.py::test_attached_sft_trainer_adds_exactly_each_canarys_noise_to_its_prompt",),
    ),
    Mutant(
        "audit_verdict_inverted",
        "the audit calls a significant canary shift 'no residual' and an insignificant one 'residual'",
        "llm_unlearn/auditing.py",
        "    if p < alpha:",
        "    if p >= alpha:",
        ("tests/test_canaries.py::test_verdict_rules",),
    ),
    Mutant(
        "gus_no_prompt_mask",
        "the audit's gradient norm covers every position, not only the prompt positions the noise touched",
        "llm_unlearn/canaries.py",
        "norm = float(np.linalg.norm(g))",
        "norm = float(np.linalg.norm(grads[j]))",
        ("tests/test_gus_speed.py", "tests/test_eval.py"),
    ),
    Mutant(
        "gus_fresh_is_training_noise",
        "the control's fresh noises are the training noise (draw 0)",
        "llm_unlearn/canaries.py",
        "prompt_noise(seed, plen, hidden, draw=d).numpy().ravel() for d in range(draws + 1)",
        "prompt_noise(seed, plen, hidden, draw=0).numpy().ravel() for d in range(draws + 1)",
        ("tests/test_eval.py", "tests/test_science.py"),
    ),
    Mutant(
        "stouffer_mean",
        "the pooled z is the mean of the per-seed z's instead of Stouffer's sum / sqrt(k)",
        "llm_unlearn/metrics/gus.py",
        "return float(values.sum() / math.sqrt(values.size))",
        "return float(values.mean())",
        ("tests/test_metrics.py", "tests/test_report_numbers.py"),
    ),
    Mutant(
        "p_value_one_sided",
        "the GUS p-value is one-sided",
        "llm_unlearn/metrics/gus.py",
        "p = float(2.0 * norm.sf(abs(z)))",
        "p = float(norm.sf(abs(z)))",
        ("tests/test_metrics.py",),
    ),
    Mutant(
        "mia_sign",
        "the loss MIA calls a high loss a member",
        "llm_unlearn/metrics/mia.py",
        "labels, scores = _labels_and_scores(-member, -nonmember)",
        "labels, scores = _labels_and_scores(member, nonmember)",
        ("tests/test_metrics.py",),
    ),
    Mutant(
        "asr_counts_target_rows",
        "the attack success rate also counts triggered inputs whose true label already is the target",
        "llm_unlearn/metrics/utility.py",
        "kept = [pred for pred, label in zip(predictions, true_labels) if _norm(label) != target_norm]",
        "kept = list(predictions)",
        ("tests/test_metrics.py",),
    ),
    Mutant(
        "shift_cosine_sign",
        "the section-6 diagnostic's cosine has the wrong sign",
        "llm_unlearn/metrics/shift.py",
        '"shift_cosine": dot / (nu * nr) if nu > 0 and nr > 0 else None,',
        '"shift_cosine": -dot / (nu * nr) if nu > 0 and nr > 0 else None,',
        ("tests/test_diagnose.py",),
    ),
    Mutant(
        "poisons_stay_in_retain",
        "the poison stage leaves the poisons in the retain set (the gold model trains on them)",
        "llm_unlearn/stages/poison.py",
        '"retain": [r for r in rows if not r["is_poison"]],',
        '"retain": list(rows),',
        ("tests/test_poisoning_applied.py", "tests/test_attacks.py"),
    ),
    Mutant(
        "budget_is_whole_retraining",
        "the unlearn stage ignores the budget fraction (spends 100 % of retraining)",
        "llm_unlearn/stages/unlearn.py",
        "trainer, extra_state = prepare(cfg, cfg.budget * ref_tokens)",
        "trainer, extra_state = prepare(cfg, ref_tokens)",
        ("tests/test_methods.py", "tests/test_e2e.py"),
    ),
    # ---- methods: what each trainer optimises
    Mutant(
        "ngd_no_noise",
        "NGD's noise callback does nothing (NGD = GD)",
        "llm_unlearn/methods/ngd.py",
        "        add_parameter_noise(params, lr * self.sigma, args.seed, state.global_step)",
        "        return",
        ("tests/test_method_updates.py", "tests/test_ngd_deepspeed.py"),
    ),
    Mutant(
        "ngd_noise_ignores_lr",
        "NGD's noise is sigma * z per step instead of lr * sigma * z (sigma no longer in gradient units)",
        "llm_unlearn/methods/ngd.py",
        "add_parameter_noise(params, lr * self.sigma, args.seed, state.global_step)",
        "add_parameter_noise(params, self.sigma, args.seed, state.global_step)",
        ("tests/test_method_updates.py",),
    ),
    Mutant(
        "ga_on_retain",
        "GA ascends on the retain batch",
        "llm_unlearn/methods/ga.py",
        "return ga_loss(self.nll(model, forget))",
        "return ga_loss(self.nll(model, retain))",
        ("tests/test_method_objectives.py",),
    ),
    Mutant(
        "gd_on_forget",
        "GD descends on the forget batch",
        "llm_unlearn/methods/gd.py",
        "return gd_loss(self.nll(model, retain))",
        "return gd_loss(self.nll(model, forget))",
        ("tests/test_method_objectives.py",),
        also=(("    reads_forget = False", "    reads_forget = True"),),
    ),
    Mutant(
        "neggrad_plus_swapped",
        "NegGrad+ with its halves swapped: descends on forget, ascends on retain",
        "llm_unlearn/methods/neggrad_plus.py",
        "neggrad_plus_loss(self.nll(model, retain), self.nll(model, forget), cfg.beta, l2)",
        "neggrad_plus_loss(self.nll(model, forget), self.nll(model, retain), cfg.beta, l2)",
        ("tests/test_method_objectives.py",),
    ),
    Mutant(
        "npo_reference_is_student",
        "NPO's log-ratio against the model itself (always 0)",
        "llm_unlearn/methods/npo.py",
        "ref_logp = self.task.sequence_logps(ref, forget)",
        "ref_logp = logp.detach()",
        ("tests/test_method_objectives.py",),
    ),
    Mutant(
        "simnpo_no_length_norm",
        "SimNPO's reward not divided by the completion length",
        "llm_unlearn/methods/simnpo.py",
        "loss = cfg.forget_weight * simnpo_loss(logp, self.task.lengths(forget), cfg.beta, cfg.gamma)",
        "loss = cfg.forget_weight * simnpo_loss(logp, torch.ones_like(logp), cfg.beta, cfg.gamma)",
        ("tests/test_method_objectives.py",),
    ),
    Mutant(
        "scrub_max_on_retain",
        "SCRUB's max steps push the student away from the teacher on retain batches",
        "llm_unlearn/methods/scrub.py",
        '            return {"forget": self.forget[j]}',
        '            return {"forget": self.retain[j % len(self.retain)]}',
        ("tests/test_method_updates.py",),
    ),
    Mutant(
        "schedule_over_max_steps",
        "the learning-rate schedule is spread over the max_steps upper bound instead of the budget",
        "llm_unlearn/methods/base.py",
        "if self.lr_scheduler is not None or not math.isfinite(self.budget_tokens):",
        "if True:",
        ("tests/test_method_updates.py",),
    ),
    Mutant(
        "budget_never_stops",
        "the budget callback never stops training",
        "llm_unlearn/methods/base.py",
        "            control.should_training_stop = True\n        return control",
        "            pass\n        return control",
        ("tests/test_methods_llm.py",),
    ),
    Mutant(
        "reference_is_the_student",
        "the reference model of KL/NPO/SCRUB is the model being trained (LoRA: adapter left on)",
        "llm_unlearn/methods/base.py",
        "with unwrapped.disable_adapter(), torch.no_grad():",
        "with torch.no_grad():",
        ("tests/test_methods_llm.py", "tests/test_method_objectives.py"),
    ),
    # ---- the report
    Mutant(
        "gap_closed_swapped",
        "unlearned rows' gap closed computed with initial and gold swapped (reports 1 - gap)",
        "llm_unlearn/stages/report.py",
        'gap_closed(base["initial"][metric], m[metric], base["retrain"][metric]) if metric in m else None',
        'gap_closed(base["retrain"][metric], m[metric], base["initial"][metric]) if metric in m else None',
        ("tests/test_report_numbers.py", "tests/test_e2e.py"),
    ),
]


def run_mutant(m: Mutant, python: str, timeout: int) -> tuple[str, float, str]:
    """('killed' | 'SURVIVED' | 'NOT APPLIED' | 'TIMEOUT', seconds, detail)."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=IGNORE)
        target = copy / m.file
        text = target.read_text()
        for old, new in ((m.old, m.new), *m.also):
            if text.count(old) != 1:
                return "NOT APPLIED", 0.0, f"{m.file}: {old!r} occurs {text.count(old)} times"
            text = text.replace(old, new)
        target.write_text(text)
        env = dict(os.environ, PYTHONPATH=str(copy), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        env.setdefault("OMP_NUM_THREADS", "1")
        tests = [t for t in m.tests if (copy / t.split("::")[0]).exists()]
        missing = sorted(set(m.tests) - set(tests))
        if not tests:
            return "NOT APPLIED", 0.0, f"none of its tests exist: {missing}"
        cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "TIMEOUT", time.perf_counter() - start, ""
        seconds = time.perf_counter() - start
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        status = "killed" if proc.returncode != 0 else "SURVIVED"
        return status, seconds, tail[0] + (f" (missing: {missing})" if missing else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the project's dependencies")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    unknown = sorted(set(args.names) - set(by_name))
    if unknown:
        parser.error(f"unknown mutant(s) {unknown}; choose from {sorted(by_name)}")
    chosen = [by_name[n] for n in args.names] if args.names else MUTANTS
    if args.list:
        for m in chosen:
            print(f"{m.name:28s} {m.what}\n{'':28s} {m.file}; caught by {', '.join(m.tests)}")
        return 0
    bad = 0
    for m in chosen:
        status, seconds, detail = run_mutant(m, args.python, args.timeout)
        bad += status != "killed"
        print(f"{m.name:28s} {status:12s} {seconds:6.0f} s  {detail}", flush=True)
    print(f"\n{len(chosen) - bad} of {len(chosen)} mutants killed", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
