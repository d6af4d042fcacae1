"""Mesh and batch sharding, with 4 forced host devices in a subprocess."""
import textwrap


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
