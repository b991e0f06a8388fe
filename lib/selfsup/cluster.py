"""SLURM through submitit: a sweep's runs as one job array, a long run as one multi-process job.

Everything this project says to a cluster goes through here (DINO and MAE launch the same way):

- `cluster_options` reads a sweep file's `cluster:` block (or `--cluster KEY=VALUE` on the command
  line, which wins) into the sbatch request: partition, account, qos, gpus_per_task, cpus_per_task,
  mem_gb, time_min, array_parallelism, constraint, setup (shell lines run before the task, e.g.
  `module load cuda`), sbatch (any other sbatch option, {name: value}).
- `run_array` submits a sweep's pending (point, seed) tasks as ONE job array; each array task runs
  the function the local executor runs for one point (a papermill execution of notebook 03 into its
  run folder). Each run folder records its job (runs.Run.write_job): job id, stdout and stderr.
- `PointTask` and `TrainJob` are submitit checkpointable callables: at a time limit or preemption
  (SIGUSR2) submitit calls `checkpoint()`, which returns the same task set to resume, and requeues
  the job; the run then continues from its last epoch checkpoint, bit-exactly on the CPU.
- `submit_train` runs `selfsup train` on N nodes x T tasks: each task sets the variables torchrun
  would set (submitit's TorchDistributedEnvironment) and then takes the torchrun code path.

Job states come from `squeue -u USER` (terminal states stay listed for the cluster's MinJobAge), with
a job's result file as the final word; submitit's own watcher calls sacct, which needs the
accounting daemon that many small clusters (and scripts/slurm_local.sh) do not run.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .config import ConfigError
from .runs import Run, RunError, now

# key: (type, what the value must be); ints and floats must be positive (gpus_per_task may be 0)
CLUSTER_KEYS = {
    "partition": (str, "a partition name"),
    "account": (str, "an account name"),
    "qos": (str, "a QOS name"),
    "constraint": (str, "a node feature expression"),
    "gpus_per_task": (int, "a whole number of GPUs, 0 or more"),
    "cpus_per_task": (int, "a whole number of CPUs, 1 or more"),
    "mem_gb": (float, "memory in GB, more than 0"),
    "time_min": (int, "a time limit in whole minutes, 1 or more"),
    "array_parallelism": (int, "how many array tasks may run at once, 1 or more"),
    "tasks_per_node": (int, "processes per node of a training job, 1 or more"),
    "setup": (list, "a list of shell lines run before the task"),
    "sbatch": (dict, "a mapping of other sbatch options, e.g. {exclusive: true}"),
}
DEFAULTS = dict(cpus_per_task=1, time_min=60)
LIVE = {"PENDING": "queued", "CONFIGURING": "queued", "REQUEUED": "queued", "REQUEUE_HOLD": "queued"}
LIVE |= dict.fromkeys(("RUNNING", "COMPLETING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESIZING"), "running")
POLL_S = 3.0
LOG_TAIL = 8  # lines of a job's log shown when it failed before writing a result


class ClusterError(RuntimeError):
    """The cluster cannot take the request (no SLURM here, unknown partition, ...). One line."""


# --------------------------------------------------------------------------------------------
# Options


def cluster_options(block, overrides: dict | None = None, source: str = "--cluster") -> dict:
    """The `cluster:` block (or None) with the command line's KEY=VALUE overrides on top, checked:
    an unknown key or a value of the wrong kind is a one-line ConfigError naming source and key."""
    if block is not None and not isinstance(block, dict):
        raise ConfigError(f"{source}: key 'cluster' must be a mapping of cluster options, got {block!r}")
    out = dict(DEFAULTS)
    for where, items in ((f"{source}: key 'cluster", block or {}), ("--cluster", overrides or {})):
        for key, value in items.items():
            name = f"{where}.{key}'" if where != "--cluster" else f"--cluster {key}"
            if key not in CLUSTER_KEYS:
                raise ConfigError(f"{name}: unknown cluster option (known: {', '.join(CLUSTER_KEYS)})")
            out[key] = _checked(name, key, value)
    return out


def checked_block(block, source: str):
    """A sweep file's `cluster:` block as it is, once cluster_options accepts it (so a bad block
    fails when the file is read, not at submission)."""
    cluster_options(block, source=source)
    return block


def _checked(name: str, key: str, value):
    kind, what = CLUSTER_KEYS[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and kind in (int, float):
        ok = value > 0 or (key == "gpus_per_task" and value == 0)
    if ok and kind is list:
        ok = all(isinstance(line, str) for line in value)
    if not ok:
        raise ConfigError(f"{name}: expected {what}, got {value!r}")
    return value


def parse_cluster_args(items: list[str] | None) -> dict:
    """['partition=gpu', 'time_min=600'] -> {'partition': 'gpu', 'time_min': 600} (YAML values)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--cluster {item!r}: expected KEY=VALUE (e.g. partition=gpu)")
        out[key.strip()] = yaml.safe_load(value) if value else ""
    return out


def _require_slurm(opts: dict) -> None:
    """One-line errors for a machine without SLURM and for a partition the cluster lacks."""
    if shutil.which("sbatch") is None:
        raise ClusterError(
            "--executor slurm: no sbatch on the PATH; run on a login node of a SLURM cluster, "
            "start a local one (make slurm), or use --executor local"
        )
    if opts.get("partition"):
        listed = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
        known = [p.strip().rstrip("*") for p in listed.stdout.split()]
        if listed.returncode == 0 and opts["partition"] not in known:
            raise ClusterError(
                f"cluster option 'partition': {opts['partition']!r} is not a partition of this cluster "
                f"(sinfo lists: {', '.join(known) or 'none'})"
            )


def executor(folder: Path, opts: dict, name: str, nodes: int = 1, tasks_per_node: int = 1, gpus_per_node: int = 0):
    """A submitit SlurmExecutor for `opts` (cluster_options) whose jobs keep their files in folder."""
    _require_slurm(opts)
    import submitit  # only where a job is submitted: the library imports without it

    ex = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=3)
    sbatch = dict(opts.get("sbatch") or {})
    for key in ("account", "qos", "constraint"):
        if opts.get(key):
            sbatch[key] = opts[key]
    params = dict(
        job_name=name,
        time=opts["time_min"],
        nodes=nodes,
        ntasks_per_node=tasks_per_node,
        cpus_per_task=opts["cpus_per_task"],
        array_parallelism=opts.get("array_parallelism", 256),
        setup=list(opts.get("setup") or []),
        additional_parameters=sbatch,
    )
    if opts.get("partition"):
        params["partition"] = opts["partition"]
    if opts.get("mem_gb"):
        params["mem"] = f"{int(opts['mem_gb'] * 1024)}MB"
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    elif opts.get("gpus_per_task"):
        params["gpus_per_task"] = opts["gpus_per_task"]
    ex.update_parameters(**params)
    return ex


# --------------------------------------------------------------------------------------------
# What runs on the nodes


def _use_allocated_cpus() -> None:
    """Threads = the CPUs SLURM gave this task, in this process and in the kernel a notebook starts
    (it inherits the environment), as the local pool and torchrun split the cores between processes."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, cpus)
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@dataclass
class PointTask:
    """One (point, seed) of a sweep as an array task: execute(task), the local executor's function.
    On requeue it restarts with resume on (notebook 03 resumes from a checkpoint if there is one)."""

    execute: object
    task: dict

    def __call__(self) -> dict:
        _use_allocated_cpus()
        return self.execute(self.task)

    def checkpoint(self, *args, **kwargs):
        task = {**self.task, "parameters": {**self.task["parameters"], "resume": True}}
        import submitit

        return submitit.helpers.DelayedSubmission(PointTask(self.execute, task))


@dataclass
class TrainJob:
    """`selfsup train ARGV` in every task of a job: the variables torchrun sets (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from SLURM's, then main(argv), torchrun's code path."""

    main: object
    argv: list[str]
    run_dir: str = ""

    def __call__(self) -> int:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        _use_allocated_cpus()
        code = self.main(self.argv)
        if code:
            raise RuntimeError(f"selfsup train exited with status {code} (its error is in this log)")
        return code

    def checkpoint(self, *args, **kwargs):
        argv = list(self.argv)
        if "--resume" not in argv and Run(self.run_dir).has_checkpoint():
            argv.append("--resume")
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.main, argv, self.run_dir))


# --------------------------------------------------------------------------------------------
# Submitting and following


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _record(job) -> dict:
    paths = job.paths
    return dict(
        job_id=job.job_id,
        stdout=str(paths.stdout),
        stderr=str(paths.stderr),
        result=str(paths.result_pickle),
        submitted=now(),
    )


def run_array(tasks: list[dict], execute, root: Path, name: str, opts: dict, detach: bool, progress: bool) -> dict:
    """Submit tasks (the sweep's task dicts: slug, run_dir, parameters, ...) as one job array whose
    tasks call execute(task); record each job in its run folder; then wait for all of them (unless
    detach) and return {slug: outcome} as execute returns it; progress: report on stderr."""
    if not tasks:
        return {}
    ex = executor(Path(root).resolve() / "slurm", opts, name)
    with ex.batch():
        jobs = [ex.submit(PointTask(execute, t)) for t in tasks]
    for t, job in zip(tasks, jobs):
        Run(t["run_dir"]).write_job(_record(job))
    array = jobs[0].job_id.split("_")[0]
    _say(progress, f"[{name}] submitted SLURM job {array}: {len(jobs)} task(s), logs in {Path(root) / 'slurm'}")
    if detach:
        _say(
            progress,
            f"[{name}] detached: follow with `squeue -j {array}` or `selfsup sweep FILE --status`; "
            "the same command again collects the results",
        )
        return {}
    try:
        return wait([(t["slug"], t["run_dir"]) for t in tasks], name, progress)
    except KeyboardInterrupt:  # the jobs are the cluster's now: say how to get them back or stop them
        _say(
            True,
            f"[{name}] stopped waiting; job {array} keeps running: the same command collects it, "
            f"scancel {array} stops it",
        )
        raise


def queue_states() -> dict[str, str] | None:
    """{job id (12 or 12_3): SLURM state} of this user's jobs that squeue still lists; None when
    squeue did not answer (a busy controller), so that no job is taken for ended on a failed call."""
    cmd = ["squeue", "-u", getpass.getuser(), "-h", "-r", "-t", "all", "-o", "%i|%T"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)


def run_state(run_dir, states: dict[str, str]) -> tuple[str, dict]:
    """(state, job record) of a run folder: finished / failed / queued / running / stopped (its job
    ended, the run did not) / not submitted."""
    run, states = Run(run_dir), states or {}
    job = run.job()
    if job and not Path(job["result"]).exists() and job["job_id"] in states:
        live = LIVE.get(states[job["job_id"]])
        if live:
            return live, job
    if run.status == "finished" and not run.has_error():
        return "finished", job
    if run.has_error():
        return "failed", job
    return ("stopped" if job else "not submitted"), job


def in_flight(runs: list[tuple[str, str]]) -> list[str]:
    """The slugs of (slug, run_dir) whose recorded job is still queued or running."""
    states = queue_states()
    return [slug for slug, run_dir in runs if run_state(run_dir, states)[0] in ("queued", "running")]


def attach(runs: list[tuple[str, str]], name: str, opts: dict, detach: bool, progress: bool) -> bool:
    """Before a sweep looks at its run folders: check the cluster, then wait for the runs an earlier
    (detached) submission still has queued or running, so none is cleared or submitted twice.
    True when detach and some are still in flight (the caller submits nothing new)."""
    _require_slurm(opts)
    busy = set(in_flight(runs))
    if busy:
        _say(progress, f"[{name}] {len(busy)} run(s) still queued or running from an earlier submission")
        if detach:
            _say(progress, f"[{name}] detached: nothing new submitted; `selfsup sweep FILE --status` lists them")
            return True
        wait([r for r in runs if r[0] in busy], name, progress)
    return False


def wait(runs: list[tuple[str, str]], name: str, progress: bool = True) -> dict:
    """Wait until every run's job has ended; returns {slug: outcome}. A job that ended without a
    result (killed, or failed before the notebook started) gets an error.txt with its log's last lines."""
    pending, outcomes = dict(runs), {}
    while pending:
        states = queue_states()
        for slug, run_dir in list(pending.items()):
            job = Run(run_dir).job()
            if Path(job["result"]).exists():
                outcomes[slug] = _outcome(slug, job)
            elif states is None or LIVE.get(states.get(job["job_id"], "")):
                continue  # still queued or running (or squeue did not answer: ask again)
            else:  # gone from the queue, or ended, without a result
                time.sleep(1)  # the result file may still be on its way (a network filesystem)
                if Path(job["result"]).exists():
                    continue
                outcomes[slug] = _lost(slug, run_dir, job, states.get(job["job_id"], "no longer listed"))
            del pending[slug]
            out = outcomes[slug]
            _say(
                progress,
                f"[{name}] {slug}: "
                + ("finished" if out["ok"] else f"FAILED: {out['error']}")
                + f" (job {job['job_id']})",
            )
        if pending:
            time.sleep(POLL_S)
    return outcomes


def _outcome(slug: str, job: dict) -> dict:
    from submitit.core.utils import pickle_load

    status, value = pickle_load(job["result"])
    if status == "success":
        return value if isinstance(value, dict) else dict(slug=slug, ok=True)
    # the task's own one-line error (selfsup's CLI prints it to the log), else the exception's last line
    log = Path(job["stderr"]).read_text(errors="replace").splitlines() if Path(job["stderr"]).exists() else []
    ours = [line for line in log if line.startswith("selfsup: error: ")]
    first = ours[-1].removeprefix("selfsup: error: ") if ours else (str(value).strip().splitlines() or ["failed"])[-1]
    return dict(slug=slug, ok=False, error=f"SLURM job {job['job_id']}: {first}; see {job['stderr']}")


def _lost(slug: str, run_dir, job: dict, state: str) -> dict:
    """A job that ended without a result: why, in one line, and its log's last lines in error.txt."""
    logs = [Path(job["stderr"]), Path(job["stdout"])]
    if not any(p.exists() for p in logs):
        error = (
            f"SLURM job {job['job_id']} ended ({state}) without writing its log {logs[0]}: the nodes cannot "
            f"see the runs folder {Path(run_dir).resolve().parent}; put it on a filesystem shared with them"
        )
        tail = ""
    else:
        error = f"SLURM job {job['job_id']} ended ({state}) before the notebook finished; see {logs[0]}"
        tail = "\n".join(
            line for p in logs if p.exists() for line in p.read_text(errors="replace").splitlines()[-LOG_TAIL:]
        )
    Run(run_dir).write_error(error + ("\n\nlast lines of the log:\n" + tail if tail else ""))
    return dict(slug=slug, ok=False, error=error + ("; its log ends: " + tail.splitlines()[-1] if tail else ""))


def status_lines(runs: list[tuple[str, str]]) -> list[str]:
    """One line per (slug, run_dir): state, job id and log file, for `selfsup sweep FILE --status`."""
    states, rows = queue_states(), []
    for slug, run_dir in runs:
        state, job = run_state(run_dir, states)
        rows.append((slug, state, job.get("job_id", "-") if job else "-", job.get("stdout", "-") if job else "-"))
    width = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    return [f"{a:<{width[0]}}  {b:<{width[1]}}  {c:<{width[2]}}  {d}" for a, b, c, d in rows]


def submit_train(
    main, argv: list[str], run_dir: str, opts: dict, nodes: int, gpus_per_node: int, detach: bool, progress: bool = True
) -> int:
    """`selfsup train argv` as one SLURM job of nodes x tasks (one per GPU, else opts' tasks_per_node),
    its files in RUN_DIR/../slurm-<run name>/; waits for it unless detach. Returns the exit status."""
    tasks = gpus_per_node or opts.get("tasks_per_node", 1)
    run = Path(run_dir)
    state, job = run_state(run, queue_states())
    if "--resume" not in argv and Run(run).has_checkpoint():  # what the job would say, said before queueing
        raise RunError(f"{run}: already holds a run (its checkpoint); pass --resume or choose a new --run-dir")
    if state in ("queued", "running"):  # a second job would collide with it in the run folder
        raise ClusterError(
            f"{run}: SLURM job {job['job_id']} is still {state} for this run folder; wait for it or cancel it"
        )
    folder = run.resolve().parent / f"slurm-{run.name}"
    ex = executor(folder, opts, f"selfsup-{run.name}", nodes=nodes, tasks_per_node=tasks, gpus_per_node=gpus_per_node)
    job = ex.submit(TrainJob(main, argv, str(run.resolve())))
    run.mkdir(parents=True, exist_ok=True)
    Run(run).write_job(_record(job))
    _say(progress, f"submitted SLURM job {job.job_id}: {nodes} node(s) x {tasks} task(s); log {job.paths.stdout}")
    if detach:
        _say(progress, f"detached: follow with `squeue -j {job.job_id}` and `tail -f {job.paths.stdout}`")
        return 0
    out = wait([(run.name, str(run))], "train", progress)[run.name]
    return 0 if out["ok"] else 1
