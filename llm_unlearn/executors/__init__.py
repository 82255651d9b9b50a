"""Where the grid's jobs run: ``executor: local | ray | slurm``.

``local`` is the scheduler's own process pool (:mod:`llm_unlearn.scheduler`). ``ray`` runs each stage job as a Ray
task with the resources of its stage (``resources``), on ``ray_address`` (null: a Ray instance started on this machine,
bound to 127.0.0.1). ``slurm`` submits each job through submitit (``slurm`` section: partition, time, setup commands).
Both are pools with ``submit(fn, job, threads) -> Future`` that the scheduler's DAG loop drives exactly as it drives
the local pool, so ordering, skipping, resuming and stopping on a failure are one code path for every executor.

Both assume a filesystem shared by the driver and every node (the run dir, the working directory, the installed
package). Each pool's ``open()`` checks it before any job is submitted: the driver writes a marker with a fresh
token into each run dir and a probe task on the executor (on every Ray node) must read it back; every job checks it
again where it lands. A job's output goes to ``<output_dir>.<executor>.log`` beside its output dir, and a failure
names it.

The package: :mod:`.config` (the keys and their checks), :mod:`.remote` (what runs on a node, the shared pool
code), :mod:`.ray_pool` and :mod:`.slurm_pool` (imported only when their executor is used).
"""

from __future__ import annotations

from .config import EXECUTORS, SlurmConfig, check_executor, job_resources
from .remote import JobFailed, job_log

__all__ = ["EXECUTORS", "JobFailed", "SlurmConfig", "build_pool", "check_executor", "job_log", "job_resources"]


def build_pool(cfg, run_dirs: list[str]):
    """The pool of ``cfg.executor`` (None for ``local``: the scheduler's process pool)."""
    if cfg.executor == "local":
        return None
    if cfg.executor == "ray":
        from .ray_pool import RayPool

        return RayPool(cfg.ray_address, cfg.resources, run_dirs)
    from .slurm_pool import SlurmPool

    return SlurmPool(cfg.slurm, cfg.resources, run_dirs)
