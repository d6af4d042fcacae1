"""The renderer on a device mesh: under a context mesh (as the training steps trace their
loss) each device rasterizes, blends (soft_blend), interpolates and samples textures only for its
own images, with 4 forced host devices in a subprocess."""
import textwrap


def test_each_device_renders_its_own_images(run_on_four_devices):
    # Without a context mesh, XLA cannot split the data-dependent windows by image: it gathers
    # the whole batch onto every device (all-gather) and each device rasterizes all 8 images.
    # Under the mesh (directly, and inside a train step) there is no all-gather, and losses
    # and gradients equal one device's. interpolate's and grid_sample's backward passes loop
    # over the images on one CPU device, and are vmapped under the mesh (a loop over a split
    # batch would gather it too).
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np, optax
        from test_render_raster_windows import four_scenes
        from jaxdeca.render import grid_sample, interpolate, rasterize, soft_blend
        from jaxdeca.train import parallel, state as state_lib, steps
        mesh = parallel.make_mesh()
        assert mesh.devices.size == 4
        vs, faces = four_scenes()
        vs = np.concatenate([vs, vs[:, :, [1, 0, 2]]])  # 8 images
        rng = np.random.default_rng(3)
        w = jnp.asarray(rng.normal(size=(8, 20, 17)), jnp.float32)
        tex = jnp.asarray(rng.normal(size=(8, 6, 5, 3)), jnp.float32)

        def loss(v, f):  # f: the faces, traced like any jit argument
            fr = rasterize(v, f, (20, 17), sigma=1.0)
            n = interpolate(v * v, f, fr)  # take_rows
            s = grid_sample(tex, v[:, None, :, :2])  # [8, 1, V, 3]
            b = soft_blend(v, f, v * 0.5, (20, 17), sigma=1.0, gamma=0.1)
            return jnp.sum(w * (fr.alpha + fr.depth + b[..., 0])) + jnp.sum(n) + jnp.sum(s ** 2)

        def in_mesh(v, f):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                return loss(v, f)

        f = jnp.asarray(faces)
        ref_l, ref_g = jax.jit(jax.value_and_grad(loss))(jnp.asarray(vs), f)
        x = parallel.shard_batch(vs, mesh)
        for fn, gathers in ((loss, True), (in_mesh, False)):
            run = jax.jit(jax.value_and_grad(fn))
            assert ("all-gather" in run.lower(x, f).compile().as_text()) == gathers, fn
            l, g = run(x, f)
            np.testing.assert_allclose(l, ref_l, rtol=1e-5)
            np.testing.assert_allclose(g, ref_g, rtol=1e-4, atol=1e-3)

        def loss_fn(params, batch_stats, frozen, batch, rng):
            l = loss(batch * params["scale"], faces)
            return l, ({"render": l}, batch_stats)

        opt = optax.sgd(1e-3)
        st = parallel.replicate(state_lib.create({"scale": jnp.ones(())}, {}, {}, opt, 0), mesh)
        step = steps.make_train_step(loss_fn, opt, mesh)
        assert "all-gather" not in step.lower(st, x).compile().as_text()
        _, terms = step(st, x)
        np.testing.assert_allclose(terms["loss"], ref_l, rtol=1e-5)
        print("OK")
    """)
    run_on_four_devices(code)
