"""Mesh and batch sharding, with 4 forced host devices in a subprocess."""
import os
import textwrap

import pytest


def test_batch_split_over_four_devices(run_on_four_devices):
    code = textwrap.dedent("""
        import jax, numpy as np
        from jaxdeca.train import parallel
        mesh = parallel.make_mesh()
        assert mesh.devices.size == 4, mesh
        assert parallel.local_batch_size(8, mesh) == 8
        x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
        g = parallel.shard_batch({"x": x}, mesh)["x"]
        shards = sorted(g.addressable_shards, key=lambda s: s.index[0].start)
        assert [s.data.shape for s in shards] == [(2, 3)] * 4
        np.testing.assert_array_equal(np.asarray(shards[1].data), x[2:4])
        try:
            parallel.local_batch_size(6, mesh)
        except ValueError as e:
            assert "not divisible" in str(e)
        else:
            raise AssertionError("expected ValueError")
        print("OK")
    """)
    run_on_four_devices(code)


def test_batch_not_divisible_by_the_devices_is_a_config_error(run_on_four_devices, tmp_path):
    # a config whose global batch does not split over the devices (DECA's detail batch of 18 on
    # 4 GPUs) is a config error (`jaxdeca.main` prints it as one line, exit 2) naming the field
    code = textwrap.dedent(f"""
        from configs import test_toy
        from jaxdeca.train import loop, paths, toy
        config = test_toy.get_config()
        config.train.batch_size = 6
        try:
            loop.train(config, {str(tmp_path / "w")!r}, toy.ToyTask(config))
        except paths.ConfigError as e:
            assert "config.train.batch_size=6" in str(e) and "4 devices" in str(e), e
        else:
            raise AssertionError("expected ConfigError")
        print("OK")
    """)
    run_on_four_devices(code)


_SRUN_TASK = dict(SLURM_JOB_ID="123", SLURM_STEP_NODELIST="node[01-02]", SLURM_NTASKS="16", SLURM_PROCID="3",
                  SLURM_LOCALID="3")


@pytest.fixture
def cluster_env(monkeypatch):
    """`set(**env)`: a process environment with only the given SLURM_* / TPU_* variables, not on a
    Cloud TPU VM unless `tpu_vm=True`; jax.distributed.initialize is recorded (list of kwargs),
    never run."""
    from jax._src import clusters
    from jaxdeca.train import parallel
    calls = []
    monkeypatch.setattr(parallel.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for k in list(os.environ):
        if k.startswith(("SLURM_", "TPU_", "MEGASCALE_")):
            monkeypatch.delenv(k)

    def set_env(tpu_vm=False, **env):
        # on a TPU VM JAX finds a GKE cluster by TPU_WORKER_HOSTNAMES, else a GCE one by its metadata
        gke = "TPU_WORKER_HOSTNAMES" in env
        monkeypatch.setattr(clusters.GkeTpuCluster, "is_env_present", classmethod(lambda cls: tpu_vm and gke))
        monkeypatch.setattr(clusters.GceTpuCluster, "is_env_present", classmethod(lambda cls: tpu_vm and not gke))
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return calls
    return set_env


def test_distributed_started_by_srun_tasks_only(cluster_env):
    from jaxdeca.train import parallel
    # no cluster, and one SLURM task with all the node's GPUs (srun -n1 / sbatch --ntasks=1): one process
    calls = cluster_env(SLURM_JOB_ID="1", SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0")
    parallel.maybe_initialize_distributed()
    assert calls == []
    # explicit arguments win
    parallel.maybe_initialize_distributed("10.0.0.1:1234", 2, 1)
    assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)]
    calls.clear()
    # a task of `srun` with several tasks: JAX's SLURM detection
    cluster_env(**_SRUN_TASK)
    parallel.maybe_initialize_distributed()
    assert calls == [{}]


@pytest.mark.parametrize("hosts", ["", "w-0", "w-0,w-1,w-2,w-3"])
def test_distributed_started_on_every_cloud_tpu_vm(cluster_env, hosts):
    # a GCE TPU VM names its workers in the metadata server, not in TPU_WORKER_HOSTNAMES (a GKE
    # variable): a pod slice must start jax.distributed whatever that variable says; one host
    # starts it too (one process: harmless, and JAX recommends it on TPU)
    from jaxdeca.train import parallel
    calls = cluster_env(tpu_vm=True, **({"TPU_WORKER_HOSTNAMES": hosts} if hosts else {}))
    parallel.maybe_initialize_distributed()
    assert calls == [{}]


def test_several_slurm_tasks_outside_srun_is_a_clear_error(cluster_env):
    # `sbatch --ntasks=16` whose script runs python itself (no srun): SLURM_NTASKS=16 but one
    # process, and no step variables. JAX's detection needs SLURM_STEP_NODELIST, so a bare
    # initialize() failed ('coordinator_address should be defined'); with them it would wait
    # for 15 processes that never start.
    from jaxdeca.train import parallel, paths
    calls = cluster_env(**{k: v for k, v in _SRUN_TASK.items() if k != "SLURM_STEP_NODELIST"})
    with pytest.raises(paths.ConfigError, match=r"SLURM_NTASKS=16.*srun"):
        parallel.maybe_initialize_distributed()
    assert calls == []
