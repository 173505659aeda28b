"""Run a bigspec job on SLURM with dask-jobqueue: the scheduler here, the workers as SLURM jobs.

Run it on a login node (or in a small allocation) whose scheduler the compute nodes can reach::

    pip install dask-jobqueue                  # besides bigspec
    python deploy/slurm/jobqueue.py examples/job.yaml --jobs 4 --cores 32 --memory 128GB
    python deploy/slurm/jobqueue.py examples/job.yaml --print-job-script     # the sbatch script, nothing submitted

Each SLURM job runs ``dask worker`` processes that join the scheduler this script starts; the job
file then runs with ``bigspec run JOB --scheduler ADDRESS``. The job's store must be on a file
system every node mounts (or at an s3:// URL). Stopping this script (Ctrl-C) cancels the worker
jobs; running it again resumes the job from its store. With ``--tls DIR`` (from ``bigspec certs
DIR``) scheduler, workers and client speak TLS.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def make_cluster(*, cores: int, memory: str, processes: int, walltime: str, queue: str | None = None,
                 account: str | None = None, tls: str | None = None, interface: str | None = None):
    """A ``dask_jobqueue.SLURMCluster`` for bigspec: each SLURM job is ``processes`` workers sharing
    ``cores`` cores and ``memory``, spilling to node-local disk."""
    from dask_jobqueue import SLURMCluster

    security = None
    if tls is not None:
        from bigspec.security import tls_security

        security = tls_security(tls)
    return SLURMCluster(
        cores=cores,
        processes=processes,
        memory=memory,
        walltime=walltime,
        queue=queue,
        account=account,
        interface=interface,
        local_directory="$TMPDIR",
        job_name="bigspec-worker",
        job_extra_directives=["--exclusive"],
        log_directory="bigspec-slurm-logs",
        protocol="tls://" if security is not None else None,
        security=security,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", help="bigspec job file (YAML or TOML)")
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs of workers (default 2)")
    parser.add_argument("--cores", type=int, default=32, help="cores per SLURM job")
    parser.add_argument("--memory", default="128GB", help="memory per SLURM job")
    parser.add_argument("--processes", type=int, default=4, help="worker processes per SLURM job")
    parser.add_argument("--walltime", default="12:00:00")
    parser.add_argument("--queue", default=None, help="SLURM partition")
    parser.add_argument("--account", default=None)
    parser.add_argument("--interface", default=None, help="network interface of the nodes, e.g. ib0")
    parser.add_argument("--tls", default=None, metavar="DIR", help="certificates written by `bigspec certs DIR`")
    parser.add_argument("--print-job-script", action="store_true", help="print the worker job script and exit")
    args = parser.parse_args(argv)

    cluster = make_cluster(cores=args.cores, memory=args.memory, processes=args.processes, walltime=args.walltime,
                           queue=args.queue, account=args.account, tls=args.tls, interface=args.interface)
    with cluster:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        cluster.scale(jobs=args.jobs)
        from distributed import Client

        print(f"waiting for the SLURM jobs to start (squeue -u $USER); dashboard: {cluster.dashboard_link}")
        with Client(cluster) as client:
            client.wait_for_workers(1)        # the queue decides when: no timeout
        command = ["bigspec", "run", args.job, "--scheduler", cluster.scheduler_address]
        if args.tls:
            command += ["--tls", args.tls]
        return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
