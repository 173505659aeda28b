"""The deployment files agree with each other and with the package.

No Docker daemon runs here and no image can be pulled, so docker-compose.yml, deploy/Dockerfile(s),
the Helm values and the SLURM scripts are parsed and checked: one image name and tag (the package
version), real Dask and bigspec command lines with real options, the scheduler and dashboard ports,
environment variables that are real config keys, one shared store volume mounted at the same path
everywhere, the dashboard bound to localhost, the job file the runner runs, and images that install
what their commands need.
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import dask.config
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

import bigspec
from bigspec.cli import cli
from bigspec.security import file_names

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE, GPU_IMAGE = f"bigspec:{VERSION}", f"bigspec:{VERSION}-gpu"
SCHEDULER_PORT, DASHBOARD_PORT = 8786, 8787
STORES = "/data"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _services() -> dict:
    return _compose()["services"]


def _helm() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def _dockerfile(name: str) -> str:
    return (DEPLOY / name).read_text()


def _click_options(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


def _dask_command(name: str) -> click.Command:
    if name == "scheduler":
        from distributed.cli.dask_scheduler import main
    else:
        from distributed.cli.dask_worker import main
    return main


def _check_options(argv: list[str], known: set[str], where: str) -> None:
    for token in argv:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in known, f"{where}: {flag} is not an option of {' '.join(argv[:2])}"


def _check_command(argv: list[str], where: str) -> None:
    """A Dask or bigspec command line whose subcommand and options exist."""
    if argv[:2] in (["dask", "scheduler"], ["dask", "worker"]):
        _check_options(argv[2:], _click_options(_dask_command(argv[1])), where)
    elif argv[:3] == ["dask", "cuda", "worker"]:
        # dask-cuda is not installed here: its worker takes the `dask worker` options this file uses
        _check_options(argv[3:], _click_options(_dask_command("worker")), where)
    elif argv[0] == "bigspec":
        assert argv[1] in cli.commands, f"{where}: `bigspec {argv[1]}` is not a bigspec command ({sorted(cli.commands)})"
        _check_options(argv[2:], _click_options(cli.commands[argv[1]]) | {"--help"}, where)
    elif argv[0] == "jupyter":
        assert argv[1] == "lab", where
    else:
        raise AssertionError(f"{where}: {argv[0]} is not a command this image provides")


def _env_is_a_config_key(name: str, where: str) -> None:
    """DASK_A__B_C names dask config key a.b-c (dask.config.collect_env): it must exist."""
    assert name.startswith("DASK_"), f"{where}: {name} is not a Dask config variable"
    if name == "DASK_SCHEDULER_ADDRESS":      # distributed.Client() reads config "scheduler-address" (no default)
        return
    parts = [p.lower().replace("_", "-") for p in name[len("DASK_"):].split("__")]
    config = dask.config.config
    for i, part in enumerate(parts):
        assert isinstance(config, dict) and part in config, \
            f"{where}: {name} is not a config key ({'.'.join(parts[:i + 1])} does not exist)"
        config = config[part]


def _compose_env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return env


# -- docker-compose.yml ----------------------------------------------------------------------------

def test_compose_services_and_profiles():
    s = _services()
    assert {"scheduler", "worker", "runner", "notebook", "gpu-worker", "secure-scheduler", "secure-worker",
            "secure-runner"} <= set(s)
    default = {name for name, svc in s.items() if not svc.get("profiles")}
    assert default == {"scheduler", "worker", "runner", "notebook"}   # `docker compose up` starts these
    assert s["gpu-worker"]["profiles"] == ["gpu"]
    assert all(s[n]["profiles"] == ["secure"] for n in ("secure-scheduler", "secure-worker", "secure-runner"))


def test_workers_scale_and_reach_the_scheduler_by_service_name():
    s = _services()
    for name in ("worker", "gpu-worker", "secure-worker"):
        svc = s[name]
        assert "container_name" not in svc, f"{name}: a fixed container_name breaks --scale {name}=N"
        assert "ports" not in svc, f"{name}: a published port breaks --scale {name}=N"
    assert s["worker"]["command"][:3] == ["dask", "worker", f"tcp://scheduler:{SCHEDULER_PORT}"]
    assert s["gpu-worker"]["command"][:4] == ["dask", "cuda", "worker", f"tcp://scheduler:{SCHEDULER_PORT}"]
    assert s["secure-worker"]["command"][:3] == ["dask", "worker", f"tls://secure-scheduler:{SCHEDULER_PORT}"]
    assert s["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_commands_are_real_dask_and_bigspec_commands():
    for name, svc in _services().items():
        command = svc["command"]
        assert isinstance(command, list), f"{name}: give the command as a list (no shell)"
        _check_command(command, f"docker-compose.yml {name}")
        for check in [svc.get("healthcheck", {}).get("test", [])]:
            if check:
                assert check[0] == "CMD" and check[1] == "python"
                ast.parse(check[3])                         # python -c CODE parses


def test_ports_scheduler_8786_and_dashboard_on_localhost_only():
    s = _services()
    for name in ("scheduler", "secure-scheduler"):
        argv = s[name]["command"]
        assert argv[argv.index("--port") + 1] == str(SCHEDULER_PORT)
        assert argv[argv.index("--dashboard-address") + 1] == f":{DASHBOARD_PORT}"
    published = {}
    for name, svc in s.items():
        for spec in svc.get("ports", []):
            host_ip, host_port, container_port = str(spec).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {spec} beyond this machine"
            assert host_port not in published, f"{name} and {published[host_port]} both publish {host_port}"
            published[host_port] = name
    assert published[str(DASHBOARD_PORT)] == "scheduler"
    assert all(str(SCHEDULER_PORT) not in p for svc in s.values() for p in map(str, svc.get("ports", [])))
    assert f"{DASHBOARD_PORT}/health" in " ".join(s["scheduler"]["healthcheck"]["test"])


def test_one_image_for_every_role():
    s = _services()
    for name, svc in s.items():
        want = GPU_IMAGE if name == "gpu-worker" else IMAGE
        assert svc["image"] == want, name
        assert svc["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile.gpu" if name == "gpu-worker"
                                else "deploy/Dockerfile"}, name
    assert VERSION == bigspec.__version__


def test_one_shared_store_volume_at_the_same_path():
    c = _compose()
    assert list(c["volumes"]) == ["stores"]
    for name, svc in c["services"].items():
        mounts = [v for v in svc["volumes"] if v.split(":")[0] == "stores"]
        assert mounts == [f"stores:{STORES}"], name
        assert svc["working_dir"] == STORES, name            # relative store paths of a job land on the volume


def test_the_runner_runs_a_job_file_of_the_repository():
    s = _services()
    for name, scheduler in (("runner", "tcp://scheduler:8786"), ("secure-runner", "tls://secure-scheduler:8786")):
        svc = s[name]
        argv = svc["command"]
        assert argv[:2] == ["bigspec", "run"]
        assert argv[argv.index("--scheduler") + 1] == scheduler
        mounts = dict(v.split(":")[:2] for v in svc["volumes"])
        job = Path(argv[2])
        host_dir = [h for h, c in mounts.items() if c == str(job.parent)]
        assert host_dir, f"{name}: nothing is mounted at {job.parent}"
        on_host = ROOT / host_dir[0] / job.name
        assert on_host.is_file(), f"{name} runs {job}, which is {on_host.relative_to(ROOT)}: missing in the repo"
        assert svc["restart"] == "no"                     # a finished job is not run again and again


def test_environment_variables_are_real_config_keys():
    for name, svc in _services().items():
        for var in _compose_env(svc):
            _env_is_a_config_key(var, f"docker-compose.yml {name}")
    assert _compose_env(_services()["notebook"])["DASK_SCHEDULER_ADDRESS"] == f"tcp://scheduler:{SCHEDULER_PORT}"
    values = _helm()
    for group in (values["scheduler"], values["worker"], *values["additional_worker_groups"]):
        for item in group.get("env") or []:
            _env_is_a_config_key(item["name"], "deploy/helm/values.yaml")
    for text in (_dockerfile("Dockerfile"), _dockerfile("Dockerfile.gpu")):
        for var in re.findall(r"^ENV (DASK_\w+)=", text, re.M):
            _env_is_a_config_key(var, "deploy/Dockerfile")
    # the commented TLS settings of the Helm values too
    for var in set(re.findall(r"name: (DASK_\w+)", (DEPLOY / "helm" / "values.yaml").read_text())):
        _env_is_a_config_key(var, "deploy/helm/values.yaml (TLS comment)")


def test_secure_profile_uses_the_files_bigspec_certs_writes():
    s = _services()
    names = file_names()
    for name, role in (("secure-scheduler", "scheduler"), ("secure-worker", "worker")):
        argv = s[name]["command"]
        assert argv[argv.index("--tls-ca-file") + 1] == f"/certs/{names['ca']}"
        assert argv[argv.index("--tls-cert") + 1] == f"/certs/{names[role]}"
        assert argv[argv.index("--tls-key") + 1] == f"/certs/{names[role + '-key']}"
    assert s["secure-scheduler"]["command"][s["secure-scheduler"]["command"].index("--protocol") + 1] == "tls"
    runner = s["secure-runner"]["command"]
    assert runner[runner.index("--tls") + 1] == "/certs"
    for name in ("secure-scheduler", "secure-worker", "secure-runner"):
        assert "./certs:/certs:ro" in s[name]["volumes"], name
    assert "certs/" in (ROOT / ".gitignore").read_text().split()          # keys are never committed
    assert "certs" in (ROOT / ".dockerignore").read_text().split()        # nor baked into an image


# -- Dockerfiles -----------------------------------------------------------------------------------

def _arg(text: str, name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)", text, re.M).group(1)


def _pip_install(text: str) -> str:
    """The `pip install` of a Dockerfile with its continuation lines."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return re.search(r"pip install [^\n]*", joined).group(0)


def test_dockerfile_from_the_official_dask_image_with_the_tested_dask():
    text = _dockerfile("Dockerfile")
    dask_version = _arg(text, "DASK_VERSION")
    assert re.search(r"^FROM ghcr\.io/dask/dask:\$\{DASK_VERSION\}-py\$\{PYTHON_VERSION\}$", text, re.M)
    assert dask_version == _arg(_dockerfile("Dockerfile.gpu"), "DASK_VERSION")      # one dask in every role
    deps = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    for package in ("dask", "distributed"):
        assert Version(dask_version) in deps[package].specifier, f"DASK_VERSION {dask_version} vs {deps[package]}"
    for name in ("Dockerfile", "Dockerfile.gpu"):
        pip = _pip_install(_dockerfile(name))
        assert '"distributed==${DASK_VERSION}"' in pip and '"dask[array]==${DASK_VERSION}"' in pip, name
    # a python the package supports
    python = _arg(text, "PYTHON_VERSION")
    from packaging.specifiers import SpecifierSet

    assert Version(python) in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_dockerfiles_install_the_extras_their_commands_need():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for name, need in (("Dockerfile", {"tls", "notebook"}), ("Dockerfile.gpu", {"gpu", "tls", "notebook"})):
        text = _dockerfile(name)
        pip = _pip_install(text)
        installed = set(re.search(r'"\.\[([\w,]+)\]"', pip).group(1).split(","))
        assert need <= installed <= set(extras), f"{name} installs extras {installed}"
        assert "jupyterlab" in pip                                   # the notebook service runs `jupyter lab`
        for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
            for path in src.split():
                assert (ROOT / path).exists(), f"{name} copies {path}, which is not in the repository"
    # `dask cuda worker` (compose gpu profile, Helm GPU group) comes from the gpu extra
    assert any(Requirement(r).name == "dask-cuda" for r in extras["gpu"])
    assert any(Requirement(r).name.startswith("cupy") for r in extras["gpu"])
    assert any(Requirement(r).name == "cryptography" for r in extras["tls"])     # bigspec certs


def test_images_provide_the_commands_the_helm_chart_runs():
    cpu, gpu = _dockerfile("Dockerfile"), _dockerfile("Dockerfile.gpu")
    values = _helm()
    shims = {}
    for text, image in ((cpu, IMAGE), (gpu, GPU_IMAGE)):
        for target, shim in re.findall(r"exec (dask [\w ]+?) \"\$@\"\\n' > /usr/local/bin/([\w-]+)", text):
            shims.setdefault(image, {})[shim] = target
    # the chart's scheduler runs `dask-scheduler`; each worker group its image.dask_worker
    assert shims[IMAGE]["dask-scheduler"] == "dask scheduler"
    assert shims[IMAGE][values["worker"]["image"]["dask_worker"]] == "dask worker"
    gpu_group = values["additional_worker_groups"][0]
    image = f"{gpu_group['image']['repository']}:{gpu_group['image']['tag']}"
    assert shims[image][gpu_group["image"]["dask_worker"]] == "dask cuda worker"
    assert "/usr/local/bin/" + "dask-cuda-worker" in gpu and "dask cuda worker --help" in gpu


def test_dockerignore_keeps_the_build_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


# -- Helm ------------------------------------------------------------------------------------------

# keys of the Dask Helm chart's values.yaml (dask/helm-chart, dask/values.yaml); a mistyped key is ignored
# by helm without a word, so it is caught here
CHART_KEYS = {
    "scheduler": {"name", "enabled", "image", "replicas", "serviceType", "loadBalancerIP", "servicePort",
                  "serviceAnnotations", "extraArgs", "resources", "tolerations", "affinity", "nodeSelector",
                  "securityContext", "serviceAccountName", "metrics", "livenessProbe", "readinessProbe", "env"},
    "webUI": {"name", "servicePort", "ingress"},
    "worker": {"name", "image", "replicas", "strategy", "custom_scheduler_url", "default_resources", "env",
               "extraArgs", "resources", "mounts", "annotations", "tolerations", "affinity", "nodeSelector",
               "securityContext", "serviceAccountName", "port", "portDashboard", "threads_per_worker", "metrics",
               "livenessProbe", "readinessProbe"},
    "jupyter": {"name", "enabled", "rbac", "image", "serviceType", "servicePort", "password", "passwordHint", "env",
                "command", "args", "extraConfig", "resources", "mounts", "tolerations", "affinity", "nodeSelector",
                "securityContext", "serviceAccountName", "ingress", "livenessProbe", "readinessProbe"},
    "image": {"repository", "tag", "pullPolicy", "pullSecrets", "dask_worker"},
}


def test_helm_values_use_the_charts_keys_and_the_same_image():
    values = _helm()
    assert set(values) <= {"nameOverride", "fullnameOverride", "scheduler", "webUI", "worker",
                           "additional_worker_groups", "jupyter"}
    for section in ("scheduler", "webUI", "worker", "jupyter"):
        assert set(values[section]) <= CHART_KEYS[section], (section, set(values[section]) - CHART_KEYS[section])
    for group in values["additional_worker_groups"]:
        assert set(group) <= CHART_KEYS["worker"], set(group) - CHART_KEYS["worker"]
    images = {f"{g['image']['repository']}:{g['image']['tag']}"
              for g in (values["scheduler"], values["worker"], *values["additional_worker_groups"])}
    assert images == {IMAGE, GPU_IMAGE}
    for g in (values["scheduler"], values["worker"], *values["additional_worker_groups"]):
        assert set(g["image"]) <= CHART_KEYS["image"]
        assert isinstance(g["image"]["tag"], str)          # 0.1 would be read as a number
    assert values["scheduler"]["servicePort"] == SCHEDULER_PORT


def test_helm_has_a_cpu_and_a_gpu_worker_group_on_the_store_volume():
    values = _helm()
    cpu, (gpu,) = values["worker"], values["additional_worker_groups"]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] >= 1 and gpu["name"] == "gpu"
    assert gpu["image"]["tag"].endswith("-gpu") and not cpu["image"]["tag"].endswith("-gpu")
    mounts = cpu["mounts"]["volumeMounts"]                  # merged into the GPU group by the chart
    assert [m["mountPath"] for m in mounts] == [STORES]
    assert {v["name"] for v in cpu["mounts"]["volumes"]} == {m["name"] for m in mounts}
    assert "mounts" not in gpu                              # it inherits the CPU group's


# -- SLURM -----------------------------------------------------------------------------------------

def _commands(script: str) -> list[list[str]]:
    """The command lines of a bash script (continuations joined, comments and arrays left out)."""
    text = re.sub(r"\\\n\s*", " ", script)
    out = []
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        out.append(shlex.split(line.rstrip("&").strip(), posix=True))
    return out


def test_sbatch_script_runs_scheduler_workers_and_the_job():
    script = (DEPLOY / "slurm" / "bigspec.sbatch").read_text()
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / "bigspec.sbatch")], check=True)
    assert script.startswith("#!/bin/bash") and re.search(r"^#SBATCH --nodes=\d+", script, re.M)
    found = {}
    for argv in _commands(script):
        for start in range(len(argv)):
            head = argv[start:start + 2]
            if head in (["dask", "scheduler"], ["dask", "worker"], ["bigspec", "run"]):
                cmd = [a for a in argv[start:] if not a.startswith('"${')]      # "${TLS[@]}" arrays
                _check_command(cmd, "deploy/slurm/bigspec.sbatch")
                found[" ".join(head)] = cmd
                if head[0] == "dask":
                    assert argv[0] == "srun", f"{' '.join(head)} is started with srun"
    assert set(found) == {"dask scheduler", "dask worker", "bigspec run"}
    for cmd in found.values():                                  # all three meet through one scheduler file
        assert cmd[cmd.index("--scheduler-file") + 1] == "$SCHEDULER_FILE"
    assert found["dask scheduler"][found["dask scheduler"].index("--port") + 1] == str(SCHEDULER_PORT)
    # TLS: the flags bigspec certs' files go to
    names = file_names()
    for role in ("scheduler", "worker"):
        assert f'--tls-cert "$BIGSPEC_TLS/{names[role]}"' in script
    assert 'CLIENT_TLS=(--tls "$BIGSPEC_TLS")' in script
    # the embedded wait-for-workers program parses
    ast.parse(script.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0])


def test_jobqueue_example():
    path = DEPLOY / "slurm" / "jobqueue.py"
    tree = ast.parse(path.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "SLURMCluster"]
    assert len(calls) == 1
    used = {k.arg for k in calls[0].keywords}
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    import inspect

    from dask_jobqueue.core import Job

    known = set(inspect.signature(dask_jobqueue.slurm.SLURMJob.__init__).parameters) | \
        set(inspect.signature(Job.__init__).parameters) | {"protocol", "security", "interface"}
    assert used <= known, used - known
    r = subprocess.run([sys.executable, str(path), "examples/job.yaml", "--print-job-script", "--cores", "4",
                        "--memory", "8GB", "--processes", "2"], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --cpus-per-task=4" in r.stdout and "distributed.cli.dask_worker" in r.stdout
    assert "--nworkers 2" in r.stdout


# -- the guide --------------------------------------------------------------------------------------

def test_readme_names_every_file_and_real_commands():
    text = (DEPLOY / "README.md").read_text()
    for name in ("deploy/Dockerfile", "deploy/Dockerfile.gpu", "docker-compose.yml", "deploy/helm/values.yaml",
                 "deploy/slurm/bigspec.sbatch", "deploy/slurm/jobqueue.py"):
        assert f"`{name}`" in text and (ROOT / name).exists(), name
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split("  #")[0].strip()
            for part in re.split(r"&&|;|\|", line):
                argv = shlex.split(part.replace("$(", "").replace(")", ""))
                while argv and "=" in argv[0] and not argv[0].startswith("-"):     # VAR=value cmd
                    argv = argv[1:]
                if argv[:1] == ["bigspec"] and len(argv) > 1:
                    _check_command(argv, "deploy/README.md")
                if argv[:2] in (["dask", "scheduler"], ["dask", "worker"]):
                    _check_command([a.rstrip("&") for a in argv if a != "&"], "deploy/README.md")
                if argv[:3] == ["docker", "compose", "--profile"]:
                    assert argv[3] in {"gpu", "secure"}


def test_bigspec_commands_the_deployment_uses_exist():
    assert {"run", "certs", "logdet", "info"} <= set(cli.commands)
    assert "--tls" in _click_options(cli.commands["run"]) and "--tls" in _click_options(cli.commands["logdet"])
