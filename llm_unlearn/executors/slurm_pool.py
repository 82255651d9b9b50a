"""``executor: slurm``: each stage job one sbatch job, submitted through submitit (see :mod:`llm_unlearn.executors`).

The driver (the ``llm-unlearn run`` process) stays running while the grid runs: it submits a job once the jobs it
depends on have finished, so the DAG is the scheduler's, the same as with ``local`` (run the driver in ``tmux`` or
in a small CPU job of its own). ``slurm.cluster: local`` swaps sbatch for submitit's local executor, each job a
process on this machine: the same path without a cluster (the tests use it).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from pathlib import Path

from ..configs import ConfigError
from .config import SlurmConfig, job_resources, require
from .remote import PROBE_TIMEOUT_S, RemotePool, probe, run_remote, threaded_future

logger = logging.getLogger(__name__)


class SlurmPool(RemotePool):
    name = "slurm"

    def __init__(self, cfg: SlurmConfig, resources: dict, run_dirs: list[str]):
        super().__init__(resources, run_dirs)
        self.cfg = cfg
        self.folder = Path(cfg.folder or self.run_dirs[0] / "submitit").absolute()
        self.inflight: dict = {}  # submitit Job -> Future
        self.local = cfg.cluster == "local"

    def executor(self, name: str, res: dict):
        """A submitit executor for one job: the slurm section plus the job's resources."""
        submitit = require("slurm")
        try:
            ex = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cfg.cluster)
        except RuntimeError as e:  # no srun on PATH: not a SLURM login node
            raise ConfigError(
                f"executor slurm: {e} (run from a SLURM login node, or slurm.cluster: local for a dry run here)"
            ) from e
        params = dict(
            name=name,
            timeout_min=self.cfg.time_min,
            cpus_per_task=int(res["num_cpus"]),
            gpus_per_node=int(res["num_gpus"]),
            nodes=1,
            tasks_per_node=1,
        )
        if res.get("memory_gb"):
            params["mem_gb"] = float(res["memory_gb"])
        prefix = self.cfg.cluster  # submitit's cluster-specific keys: slurm_partition, local_setup, ...
        if self.cfg.setup:
            params[f"{prefix}_setup"] = list(self.cfg.setup)
        if self.cfg.cluster == "slurm":
            if self.cfg.partition:
                params["slurm_partition"] = self.cfg.partition
            if self.cfg.account:
                params["slurm_account"] = self.cfg.account
            if self.cfg.additional:
                params["slurm_additional_parameters"] = dict(self.cfg.additional)
        try:
            ex.update_parameters(**params)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"executor slurm: submitit refuses the slurm section: {e}") from e
        return ex

    def open(self) -> None:
        """Check, with one small probe job, that a job sees the run dir."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.write_markers()
        ex = self.executor("llm-unlearn-probe", {"num_cpus": 1, "num_gpus": 0})
        try:
            job = ex.submit(probe, *self.probe_args())
        except Exception as e:  # sbatch missing or refusing the options
            raise ConfigError(f"executor slurm: the probe job could not be submitted: {e}") from e
        done = threaded_future(job.result, lambda fut, outcome, err: _settle_probe(fut, outcome, err))
        try:
            problems = done.result(timeout=PROBE_TIMEOUT_S)
        except TimeoutError as e:
            job.cancel(check=False)
            raise ConfigError(
                f"executor slurm: the shared-filesystem probe job {job.job_id} did not finish within "
                f"{PROBE_TIMEOUT_S} s (queue too long? its files: {self.folder})"
            ) from e
        except Exception as e:
            raise ConfigError(
                f"executor slurm: the shared-filesystem probe job {job.job_id} failed ({str(e).strip()[-300:]}); "
                f"its log: {job.paths.stderr}"
            ) from e
        if problems:
            self.refuse(f"SLURM job {job.job_id}", problems)

    def submit(self, fn, job, threads=None) -> Future:
        """Submit ``job`` as one SLURM job (``fn`` is the scheduler's ``run_job``; the job calls it through
        :func:`llm_unlearn.executors.remote.run_remote`)."""
        res = job_resources(self.resources, job)
        sjob = self.executor(f"llm-unlearn:{job.name}", res).submit(run_remote, *self.job_args(job))
        logger.info("%s: SLURM job %s", job.name, sjob.job_id)

        def done(future: Future, outcome, err) -> None:
            self.inflight.pop(sjob, None)
            extra = f" (submitit's log: {sjob.paths.stderr})"
            self.settle(future, job, outcome, crash=err, extra=extra if err is not None else "")

        future = threaded_future(sjob.result, done)
        self.inflight[sjob] = future
        return future

    def stop(self) -> None:
        """Cancel every job in flight (``scancel``; a local job gets SIGINT)."""
        for sjob in list(self.inflight):
            try:
                sjob.cancel(check=False)
            except Exception as e:  # already finished
                logger.debug("cancel %s: %s", sjob.job_id, e)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if cancel_futures:
            self.stop()
        self.remove_markers()


def _settle_probe(future: Future, outcome, err) -> None:
    if err is not None:
        future.set_exception(err)
    else:
        future.set_result(outcome)
