"""launch/*.sh without a cluster: SLURM's task layout, what tpu_pod.sh ships, local.sh's checks.

The real srun and gcloud are never run: stand-ins on PATH print or record their arguments;
tpu_pod.sh is also sourced (to call its pack_tree alone) and run with --dry-run.
"""
import os
import shutil
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def _bash(args, env=None, cwd=None):
    return subprocess.run(["bash", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", ["local.sh", "slurm.sh", "tpu_pod.sh"])
def test_scripts_parse(script):
    r = _bash(["-n", os.path.join(LAUNCH, script)])
    assert r.returncode == 0, r.stderr


# --- slurm.sh ------------------------------------------------------------------------------------

def _slurm_env(tmp_path, **slurm):
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "srun").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    (fake / "srun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{fake}:{env['PATH']}", JAXDECA_VENV="/venv", **slurm)
    return env


def test_slurm_one_task_per_gpu_every_gpu_visible(tmp_path):
    env = _slurm_env(tmp_path, SLURM_GPUS_ON_NODE="8", SLURM_NTASKS_PER_NODE="8", SLURM_CPUS_ON_NODE="96")
    r = _bash([os.path.join(LAUNCH, "slurm.sh"), "configs/coarse.py", "/shared/w", "--config.batch_size=64"], env=env)
    assert r.returncode == 0, r.stderr
    args = r.stdout.splitlines()
    # JAX picks GPU SLURM_LOCALID of the node's GPUs: no per-task binding may hide them.
    assert "--gpu-bind=none" in args and "--cpus-per-task=12" in args
    assert args[args.index("/venv/bin/python"):] == ["/venv/bin/python", "-m", "jaxdeca.main",
                                                      "--config=configs/coarse.py", "--workdir=/shared/w",
                                                      "--config.batch_size=64"]


def test_slurm_refuses_tasks_not_matching_gpus(tmp_path):
    env = _slurm_env(tmp_path, SLURM_GPUS_ON_NODE="8", SLURM_NTASKS_PER_NODE="1")
    r = _bash([os.path.join(LAUNCH, "slurm.sh"), "configs/coarse.py", "/shared/w"], env=env)
    assert r.returncode == 2 and r.stdout == ""
    assert "--ntasks-per-node=8" in r.stderr


def test_slurm_passes_cpus_per_task_on(tmp_path):
    env = _slurm_env(tmp_path, SLURM_GPUS_ON_NODE="4", SLURM_NTASKS_PER_NODE="4", SLURM_CPUS_ON_NODE="64",
                     SLURM_CPUS_PER_TASK="6")
    r = _bash([os.path.join(LAUNCH, "slurm.sh"), "c.py", "w"], env=env)
    assert r.returncode == 0, r.stderr
    assert "--cpus-per-task=6" in r.stdout.splitlines()


# --- tpu_pod.sh --------------------------------------------------------------------------------

def _pack(src, out):
    r = _bash(["-c", 'source "$0" && pack_tree "$1" "$2"', os.path.join(LAUNCH, "tpu_pod.sh"), str(src), str(out)])
    assert r.returncode == 0, r.stderr
    with tarfile.open(out) as tar:  # names are "configs/a.py" from git, "./configs/a.py" from a plain tar
        members = {os.path.normpath(m.name): m for m in tar.getmembers() if m.name not in (".", "./")}
        return members, tar.extractfile(members["configs/a.py"]).read()


def _tree(root):
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "a.py").write_text("lr = 1\n")
    (root / "gone.txt").write_text("deleted later\n")
    (root / ".gitignore").write_text("workdir/\n.venv/\n")


@needs_git
def test_tpu_pod_ships_the_working_tree(tmp_path):
    repo = tmp_path / "repo"
    _tree(repo)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    (repo / "configs" / "a.py").write_text("lr = 3\n")                 # uncommitted edit
    (repo / "configs" / "new.py").write_text("x = 1\n")                # untracked, not ignored
    (repo / "workdir").mkdir(); (repo / "workdir" / "ckpt").write_text("big")  # ignored
    (repo / "gone.txt").unlink()                                        # deleted, not committed
    members, a = _pack(repo, tmp_path / "t.tar.gz")
    assert a == b"lr = 3\n"
    assert set(members) == {".gitignore", "configs/a.py", "configs/new.py"}


def test_tpu_pod_ships_a_tree_without_git(tmp_path):
    src = tmp_path / "src"
    _tree(src)
    (src / ".venv" / "bin").mkdir(parents=True); (src / ".venv" / "bin" / "python").write_text("")
    (src / "workdir").mkdir(); (src / "workdir" / "ckpt").write_text("big")
    members, a = _pack(src, tmp_path / "t.tar.gz")
    files = {n for n, m in members.items() if m.isfile()}
    assert a == b"lr = 1\n"
    assert files == {".gitignore", "configs/a.py", "gone.txt"}


def _unpack(tarball, dest):
    r = _bash(["-c", 'source "$0" && unpack_tree "$1" "$2"', os.path.join(LAUNCH, "tpu_pod.sh"), str(tarball),
               str(dest)])
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("use_git", [pytest.param(True, marks=needs_git), False])
def test_tpu_pod_unpack_drops_files_deleted_locally_and_keeps_the_rest(tmp_path, use_git):
    src, dest = tmp_path / "src", tmp_path / "worker"
    _tree(src)
    (src / "configs" / "old name.py").write_text("x = 0\n")
    if use_git:
        subprocess.run(["git", "-C", str(src), "init", "-q"], check=True)
    _pack(src, tmp_path / "1.tar.gz")
    _unpack(tmp_path / "1.tar.gz", dest)
    assert (dest / "gone.txt").exists() and (dest / "configs" / "old name.py").exists()
    (dest / ".venv").mkdir(); (dest / ".venv" / "python").write_text("")   # made on the worker
    (dest / "runs").mkdir(); (dest / "runs" / "ckpt").write_text("keep")   # a local workdir
    (src / "gone.txt").unlink()
    (src / "configs" / "old name.py").rename(src / "configs" / "new name.py")
    _pack(src, tmp_path / "2.tar.gz")
    _unpack(tmp_path / "2.tar.gz", dest)
    assert not (dest / "gone.txt").exists() and not (dest / "configs" / "old name.py").exists()
    assert (dest / "configs" / "new name.py").read_text() == "x = 0\n"
    assert (dest / "configs" / "a.py").read_text() == "lr = 1\n"
    assert (dest / ".venv" / "python").exists() and (dest / "runs" / "ckpt").read_text() == "keep"


def test_tpu_pod_dry_run_runs_no_gcloud(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "gcloud").write_text("#!/bin/sh\necho REAL GCLOUD >&2; exit 9\n")
    (fake / "gcloud").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    r = _bash([os.path.join(LAUNCH, "tpu_pod.sh"), "--dry-run", "tpu1", "zone1", "configs/coarse.py", "gs://b/w",
               "--config.name=a b"], env=env)
    assert r.returncode == 0, r.stderr
    assert "REAL GCLOUD" not in r.stderr
    assert "scp" in r.stdout and "--worker=all" in r.stdout
    assert "for c in python3.11 python3.12 python3" in r.stdout     # the worker picks a Python >= 3.11
    assert r"--workdir=gs://b/w --config.name=a\ b" in r.stdout      # flags reach the workers quoted


def test_tpu_pod_runs_gcloud_scp_then_ssh(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "gcloud.log"
    (fake / "gcloud").write_text(f'#!/bin/sh\necho "$3 $4 ${{5##*/}}" >> {log}\n')
    (fake / "gcloud").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", TMPDIR=str(tmp_path))
    r = _bash([os.path.join(LAUNCH, "tpu_pod.sh"), "tpu1", "zone1", "configs/coarse.py", "gs://b/w"], env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert log.read_text().splitlines() == ["tpu-vm scp jaxdeca.tar.gz", "tpu-vm ssh tpu1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "gcloud.log"]  # the tarball is removed


def test_tpu_pod_worker_makes_a_venv_without_pip_again(tmp_path):
    """A worker whose first run made .venv without pip (python3.11-venv not installed yet:
    Debian's venv stops after bin/python) reused it on every later run, each failing with
    `.venv/bin/pip: No such file or directory`. Run the worker script with stand-in pythons."""
    home, src, log = tmp_path / "home", tmp_path / "src", tmp_path / "calls.log"
    src.mkdir()
    (src / "setup.cfg").write_text("[metadata]\n")
    home.mkdir()
    tpu = os.path.join(LAUNCH, "tpu_pod.sh")
    packed = _bash(["-c", 'source "$0" && pack_tree "$1" "$2"', tpu, str(src), str(home / "jaxdeca.tar.gz")])
    assert packed.returncode == 0, packed.stderr
    script = _bash(["-c", 'source "$0" && remote_script "--config=c.py"', tpu]).stdout

    def stand_in(path, name, pip):  # logs its calls; `-m pip --version` fails when not pip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"""#!/bin/sh
echo "{name} $*" >> {log}
case "$*" in "-m pip --version") exit {0 if pip else 1};; esac
""")
        path.chmod(0o755)

    venv_python = home / "jaxdeca" / ".venv" / "bin" / "python"
    stand_in(venv_python, "old-venv", pip=False)
    bin_dir = tmp_path / "bin"
    # the worker's python3.11: `-m venv --clear .venv` makes a venv whose python has pip
    stand_in(bin_dir / "python3.11", "python3.11", pip=True)
    with open(bin_dir / "python3.11", "a") as f:
        f.write(f'[ "$1 $2 $3" = "-m venv --clear" ] && cp {bin_dir / "new-venv-python"} "$4/bin/python"\nexit 0\n')
    stand_in(bin_dir / "new-venv-python", "new-venv", pip=True)
    env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}:{os.environ['PATH']}")
    r = _bash(["-c", script], env=env)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert "python3.11 -m venv --clear .venv" in calls
    assert calls[-2:] == ["new-venv -m pip install -q -e . jax[tpu]==0.10.2", "new-venv -m jaxdeca.main --config=c.py"]


# --- local.sh ----------------------------------------------------------------------------------

def test_local_refuses_python_older_than_311(tmp_path):
    old = tmp_path / "python3.10"
    old.write_text('#!/bin/sh\ncase "$2" in *platform*) echo 3.10.12;; *) exit 1;; esac\n')
    old.chmod(0o755)
    venv = tmp_path / "venv"
    env = dict(os.environ, PYTHON=str(old), JAXDECA_VENV=str(venv))
    r = _bash([os.path.join(LAUNCH, "local.sh"), "run", "jaxdeca.main"], env=env)
    assert r.returncode == 1
    assert "needs Python >= 3.11" in r.stderr and "3.10.12" in r.stderr
    assert not venv.exists()


def _stand_in_venv(tmp_path, pip_ok=True, ensurepip_ok=True):
    """A venv whose python logs its arguments; `-m pip --version` succeeds when pip_ok (or once
    `-m ensurepip` ran, which succeeds when ensurepip_ok); `-m pip install` always fails."""
    venv, log = tmp_path / "venv", tmp_path / "python.log"
    (venv / "bin").mkdir(parents=True)
    pip = venv / "pip-installed"
    if pip_ok:
        pip.touch()
    (venv / "bin" / "python").write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in
  "-m pip --version") [ -e {pip} ] && exit 0; exit 1;;
  "-m ensurepip --upgrade") {"touch " + str(pip) + "; exit 0" if ensurepip_ok else "exit 1"};;
  *"pip install"*) echo "ERROR: stand-in pip" >&2; exit 1;;
esac
""")
    (venv / "bin" / "python").chmod(0o755)
    return venv, log


def test_local_failed_install_is_not_stamped(tmp_path):
    """A venv whose pip fails: local.sh stops, writes no stamp, retries next run."""
    venv, _ = _stand_in_venv(tmp_path)
    env = dict(os.environ, JAXDECA_VENV=str(venv))
    for _ in range(2):
        r = _bash([os.path.join(LAUNCH, "local.sh"), "run", "jaxdeca.main"], env=env)
        assert r.returncode == 1
        assert "installing jaxdeca into" in r.stderr and "pip could not install jaxdeca" in r.stderr
        assert not [p for p in os.listdir(venv) if p.startswith(".jaxdeca-stamp")]


@pytest.mark.parametrize("ensurepip_ok", [True, False])
def test_local_gives_a_venv_without_pip_its_pip(tmp_path, ensurepip_ok):
    """A venv left without pip (Ctrl-C while `python -m venv` ran ensurepip kills this script
    too, so it never removed it) was reused as it was: every later run failed in pip, and running
    again never helped. Now ensurepip installs pip into it first, or the run says it could not."""
    venv, log = _stand_in_venv(tmp_path, pip_ok=False, ensurepip_ok=ensurepip_ok)
    r = _bash([os.path.join(LAUNCH, "local.sh"), "run", "jaxdeca.main"], env=dict(os.environ, JAXDECA_VENV=str(venv)))
    assert r.returncode == 1
    calls = log.read_text().splitlines()
    assert calls[:2] == ["-m pip --version", "-m ensurepip --upgrade"]
    if ensurepip_ok:
        assert "pip install" in calls[2] and "pip could not install jaxdeca" in r.stderr
    else:
        assert len(calls) == 2 and f"{venv} has no pip, and ensurepip could not install it" in r.stderr


def test_local_test_runs_the_tests_it_is_given(tmp_path):
    """`local.sh test tests/test_x.py` put `tests` before the arguments: pytest ran the whole
    suite and the file too. With no path, setup.cfg's testpaths still picks tests/."""
    import configparser
    import hashlib
    venv, log = _stand_in_venv(tmp_path)
    setup = b"".join(open(os.path.join(ROOT, f), "rb").read() for f in ("setup.cfg", "pyproject.toml"))
    (venv / ".jaxdeca-stamp-test-").write_text(hashlib.sha256(setup).hexdigest()[:16] + "\n")  # installed
    env = dict(os.environ, JAXDECA_VENV=str(venv))
    r = _bash([os.path.join(LAUNCH, "local.sh"), "test", "tests/test_launch_scripts.py", "-q"], env=env)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == ["-m pytest -n 2 --dist loadfile tests/test_launch_scripts.py -q"]
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg["tool:pytest"]["testpaths"].split() == ["tests"]


def test_local_demo_and_run_pass_their_arguments_and_work_where_called(tmp_path):
    """`local.sh demo WORKDIR FLAGS` dropped the FLAGS (--config.flame_path=... never reached the
    job), and demo and run took relative paths from the repository root, where local.sh goes to
    set up the venv: a relative WORKDIR landed in the checkout, inputs were looked up there. A
    stand-in venv python prints where it runs and its arguments."""
    import hashlib
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text('#!/bin/sh\necho "PWD:$(pwd)"\nprintf "ARG:%s\\n" "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    setup = b"".join(open(os.path.join(ROOT, f), "rb").read() for f in ("setup.cfg", "pyproject.toml"))
    (venv / ".jaxdeca-stamp").write_text(hashlib.sha256(setup).hexdigest()[:16] + "\n")  # installed: no pip
    here = tmp_path / "here"
    here.mkdir()
    env = dict(os.environ, JAXDECA_VENV=str(venv))
    r = _bash([os.path.join(LAUNCH, "local.sh"), "demo", "my run", "--config.flame_path=flame.npz"], env=env, cwd=here)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"PWD:{here}", "ARG:-m", "ARG:jaxdeca.main",
                                     f"ARG:--config={ROOT}/configs/demo.py", "ARG:--workdir=my run",
                                     "ARG:--config.flame_path=flame.npz"]
    r = _bash([os.path.join(LAUNCH, "local.sh"), "demo"], env=env, cwd=here)
    assert r.stdout.splitlines()[-1] == "ARG:--workdir=workdir/demo"
    r = _bash([os.path.join(LAUNCH, "local.sh"), "run", "jaxdeca.apps.reconstruct", "--input", "photos"], env=env,
              cwd=here)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"PWD:{here}", "ARG:-m", "ARG:jaxdeca.apps.reconstruct", "ARG:--input",
                                     "ARG:photos"]
