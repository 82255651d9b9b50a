"""``executor: ray``: each stage job a Ray task with its stage's resources (see :mod:`llm_unlearn.executors`).

``ray_address: null`` starts a Ray instance on this machine, bound to 127.0.0.1 (no dashboard), for the run's length;
``auto`` or ``ray://head:10001`` joins a running cluster, whose nodes must have llm-unlearn installed and see the run
dir. A process that already called ``ray.init`` (a notebook, a test) keeps its session: the run uses it and leaves it
open. Tasks are not retried by Ray: a job whose worker died is reported with its log, and rerunning the command
resumes it from what the stage saved, as with ``local``.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future

from ..configs import ConfigError
from .config import RESOURCE_STAGES, job_resources, require, stage_resources
from .remote import PROBE_TIMEOUT_S, RemotePool, node_name, probe, run_remote

logger = logging.getLogger(__name__)


class RayPool(RemotePool):
    name = "ray"

    def __init__(self, address: str | None, resources: dict, run_dirs: list[str]):
        super().__init__(resources, run_dirs)
        self.address = address
        self.owned = False  # whether this pool started the Ray session (and so ends it)
        self.inflight: dict = {}  # ObjectRef -> Future, the jobs submitted and not settled

    def open(self) -> None:
        """Start or join Ray, then check that every node sees the run dir."""
        if self.address is None:
            # Read by ray at import: the local instance's servers then bind 127.0.0.1, not the machine's address.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray = require("ray")
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            try:
                if self.address is None:
                    ray.init(_node_ip_address="127.0.0.1", **kwargs)
                else:
                    ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = self.address or "a local instance on 127.0.0.1"
                raise ConfigError(f"executor ray: cannot start or join Ray at {where}: {e}") from e
            self.owned = True
            self.local = self.address is None  # its workers are this machine's processes: they die with the run
        self.task = ray.remote(run_remote)  # exported to the cluster once, not per job
        self._check_fits(ray)
        self.write_markers()
        self._probe_nodes(ray)

    def _check_fits(self, ray) -> None:
        """Every stage's job must fit on some node: Ray would otherwise leave it pending for ever (on a local
        instance, e.g. ``num_gpus: 1`` on a machine without GPU). A cluster may add nodes (an autoscaler): there,
        a warning."""
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        for stage in RESOURCE_STAGES[1:]:
            res = stage_resources(self.resources, stage)
            want = {"CPU": res["num_cpus"], "GPU": res["num_gpus"]}
            if any(all(node.get(k, 0) >= v for k, v in want.items() if v) for node in nodes):
                continue
            most = {k: max((node.get(k, 0) for node in nodes), default=0) for k in want}
            article = "an" if stage[0] in "aeiou" else "a"
            msg = (
                f"executor ray: {article} {stage} job asks for {res['num_cpus']:g} CPUs and {res['num_gpus']:g} "
                f"GPUs (resources), but the largest node has {most['CPU']:g} CPUs and {most['GPU']:g} GPUs"
            )
            if self.owned and self.address is None:
                raise ConfigError(msg)
            logger.warning("%s: its jobs wait until the cluster has such a node", msg)

    def _probe_nodes(self, ray) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(_probe_on_node)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [
            task.options(
                num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(*self.probe_args())
            for n in nodes
        ]
        try:
            answers = ray.get(refs, timeout=PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as e:
            raise ConfigError(
                f"executor ray: the shared-filesystem probe did not run on every node within {PROBE_TIMEOUT_S} s"
            ) from e
        except ray.exceptions.RayError as e:  # e.g. the nodes lack llm_unlearn: the task cannot even be unpickled
            raise ConfigError(
                f"executor ray: the shared-filesystem probe failed on a node ({str(e).strip().splitlines()[-1]}); "
                "every node needs llm-unlearn installed and the run dir on a shared filesystem"
            ) from e
        for node, problems in answers:
            if problems:
                self.refuse(f"node {node}", problems)
        logger.info("executor ray: %d node(s) see the run dir", len(answers))

    def submit(self, fn, job, threads=None) -> Future:
        """Run ``job`` as a Ray task (``fn`` is the scheduler's ``run_job``; the task calls it through
        :func:`llm_unlearn.executors.remote.run_remote`)."""
        res = job_resources(self.resources, job)
        options = dict(num_cpus=res["num_cpus"], num_gpus=res["num_gpus"], max_retries=0, name=job.name)
        if res.get("memory_gb"):
            options["memory"] = int(res["memory_gb"] * 2**30)
        ref = self.task.options(**options).remote(*self.job_args(job))
        future: Future = Future()
        future.set_running_or_notify_cancel()
        self.inflight[ref] = future

        def done(raw: Future) -> None:
            self.inflight.pop(ref, None)
            try:
                outcome = raw.result()
            except BaseException as e:  # the worker died (killed, out of memory), the node was lost, cancelled
                self.settle(future, job, None, crash=e)
                return
            self.settle(future, job, outcome)

        ref.future().add_done_callback(done)
        return future

    def stop(self) -> None:
        """Cancel every job in flight (a failure elsewhere, a signal): their workers are killed, nothing they
        left is marked complete."""
        if not self.inflight:
            return
        ray = require("ray")
        for ref in list(self.inflight):
            try:
                ray.cancel(ref, force=True)
            except Exception as e:  # already finished, or the cluster is gone
                logger.debug("ray.cancel: %s", e)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """End the run's use of Ray: the markers go, and a session this pool started is shut down."""
        if cancel_futures:
            self.stop()
        self.remove_markers()
        if self.owned:
            require("ray").shutdown()
            self.owned = False


def _probe_on_node(markers: list[str], token: str, cwd: str) -> tuple[str, list[str]]:
    return node_name(), probe(markers, token, cwd)
