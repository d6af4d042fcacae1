"""The apps' pipeline on several devices: each batch is padded to a multiple of the device count,
split over the devices and cut back, with the results of one device (encode, decode, run, fit);
4 forced host devices in a subprocess, a narrow model with random weights."""
import textwrap


def test_pipeline_splits_batches_over_all_local_devices(run_on_four_devices):
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jaxdeca import flame, models, render
        from jaxdeca.apps import animate, pipeline
        from jaxdeca.train.deca_common import build_networks

        model = dict(width=0.125, blocks=(1, 1, 1, 1), hidden=32, uv_size=32)
        arrays = flame.load_arrays()
        nets = build_networks(dict(pipeline.DEFAULT_MODEL, **model))
        k = jax.random.split(jax.random.PRNGKey(0), 3)
        img = jnp.zeros((1, 64, 64, 3))
        variables = {"E_flame": models.jit_init(nets["E_flame"], k[0], img),
                     "E_detail": models.jit_init(nets["E_detail"], k[1], img),
                     "D_detail": models.jit_init(nets["D_detail"], k[2], jnp.zeros((1, models.DETAIL_LATENT_SIZE)))}

        def make(devices):
            return pipeline.Pipeline(arrays=arrays, flame=flame.from_arrays(arrays),
                                     topo=render.make_topology(arrays, uv_size=32), variables=variables,
                                     model=model, net_size=64, devices=devices)

        one, four = make(jax.devices()[:1]), make(None)
        assert one.n_devices == 1 and four.n_devices == 4
        rng = np.random.default_rng(0)
        images = rng.random((6, 224, 224, 3)).astype(np.float32)  # 6: padded to 8, 2 per device

        def same(a, b, what):
            assert jax.tree.structure(a) == jax.tree.structure(b), what
            for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
                assert x.shape == y.shape, (what, path, x.shape, y.shape)
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=2e-4,
                                           err_msg=f"{what} {jax.tree_util.keystr(path)}")

        codes1, out1 = one.run(images)
        codes4, out4 = four.run(images)
        assert codes4["shape"].shape[0] == 6 and out4["images"].shape[0] == 6
        same(codes4, codes1, "run codes")
        same(out4, out1, "run outputs")
        ident = four.encode(images[:1])
        same(ident, one.encode(images[:1]), "encode of one image")

        # the animate app's path on the devices' own codes: the identity (1 image, padded) driven
        # by the batch; the identity's camera puts the heads in view, so the renders compared are
        # not empty
        drv = animate.animate_codes(dict(ident, cam=jnp.asarray([[7.0, 0.0, 0.0]])), codes4)
        out4 = four.decode(drv)
        out1 = one.decode(jax.tree.map(np.asarray, drv))
        assert out1["mask"].sum(axis=(1, 2)).min() > 5000
        same(out4, out1, "decode")

        # each device runs its own share: the rasterizer is split, no batch is all-gathered
        x, B = four.split_batch(images)
        assert B == 6 and x.shape[0] == 8 and len(x.sharding.device_set) == 4
        assert "all-gather" not in four._both.lower(four.variables, x).compile().as_text()

        # fit: the 6 faces of these renders (padded to 8, two per device) fitted to their
        # landmarks move where the one-device fit moves them, and the photometric stage renders
        # each device's own faces; 6, as above: their landmarks are read with the decodes above
        from jaxdeca.apps import fit
        target = np.asarray(out1["landmarks2d"][..., :2])
        mask = np.stack([fit.hull_mask(t) for t in target])
        start = fit.mean_codes(one, target)
        lmk = lambda p, c: np.asarray(p.decode(c)["landmarks2d"][..., :2])
        fitted = {p.n_devices: lmk(p, fit.fit(p, start, target, np.asarray(out1["images"]), mask, (20, 20, 2)))
                  for p in (one, four)}
        assert fitted[4].shape == (6, 68, 2)
        assert np.abs(fitted[4] - fitted[1]).max() * 112 < 0.1
        assert np.abs(fitted[4] - lmk(one, start)).max() * 112 > 1
        photo = fit._stage_runner(four, 2, fit.WEIGHTS)
        args, _ = four.split_batch((fit._split(start), start["detail"], target, np.asarray(out1["images"]), mask))
        assert "all-gather" not in photo.lower(*args, np.int32(2), np.float32(0.1)).compile().as_text()
        print("OK")
    """)
    run_on_four_devices(code, timeout=600)


def test_pipeline_on_one_given_device_runs_there(run_on_four_devices):
    # devices=[d]: the variables and every batch live on d and the work runs there, as with
    # several devices (e.g. two pipelines, one per GPU), not on the default device
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jaxdeca import flame, models, render
        from jaxdeca.apps import pipeline
        from jaxdeca.train.deca_common import build_networks

        model = dict(width=0.125, blocks=(1, 1, 1, 1), hidden=32, uv_size=32)
        arrays = flame.load_arrays()
        nets = build_networks(dict(pipeline.DEFAULT_MODEL, **model))
        variables = {"E_flame": models.jit_init(nets["E_flame"], jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))}
        d = jax.devices()[2]
        pipe = pipeline.Pipeline(arrays=arrays, flame=flame.from_arrays(arrays),
                                 topo=render.make_topology(arrays, uv_size=32), variables=variables,
                                 model=model, net_size=64, devices=[d])
        assert pipe.n_devices == 1
        codes = pipe.encode(np.zeros((2, 224, 224, 3), np.float32))
        assert codes["shape"].shape[0] == 2
        out = pipe.decode(codes)
        for k, v in list(codes.items()) + list(out.items()):
            assert v.devices() == {d}, (k, v.devices())
        print("OK")
    """)
    run_on_four_devices(code)
