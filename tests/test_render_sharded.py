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


def test_under_an_explicit_axes_mesh_decode_render_and_losses_run_split(run_on_four_devices):
    # jax.make_mesh's axes are Explicit: a sharding is part of an array's type, and JAX refuses
    # to concatenate, vmap or gather a split batch with a replicated one. FLAME (its zero neck
    # and eye poses, contour tables), the renderer (its UV grid, face gathers, background) and the
    # consistency swap made such arrays; now they follow their inputs' split. The results equal
    # those without a mesh, stay split over `data`, and the rasterizer runs no all-gather.
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jaxdeca import flame, losses, render
        arrays = flame.load_arrays()
        model = flame.from_arrays(arrays)
        topo = render.make_topology(arrays, uv_size=16)
        rng = np.random.default_rng(0)
        B = 4
        args = [jnp.asarray(a, jnp.float32) for a in (
            rng.normal(size=(B, 100)) * 0.3, rng.normal(size=(B, 50)) * 0.3, rng.normal(size=(B, 6)) * 0.1,
            np.tile([[8.0, 0.0, 0.0]], (B, 1)), rng.normal(size=(B, 50)), rng.normal(size=(B, 9, 3)) * 0.3 + 1.0,
            rng.normal(size=(B, 16, 16, 1)) * 1e-3, rng.uniform(size=(B, 20, 20, 3)), rng.uniform(-1, 1, (B, 68, 3)))]
        mean_albedo = jnp.full((B, 16, 16, 3), 0.5)  # made without the mesh: replicated

        def terms(shape, exp, pose, cam, tex, light, uv_z, image, lmk, mean_albedo=mean_albedo):
            out = model(shape, exp, pose)
            tv = render.orth_proj(out["vertices"], cam)
            albedo = flame.texture.albedo_from_arrays(arrays, tex, size=16)
            r = render.render(out["vertices"], tv, albedo, light, topo, image_size=(20, 20), uv_z=uv_z)
            lm = render.orth_proj(out["landmarks2d"], cam)[..., :2]
            persp = render.rasterize(out["vertices"].at[..., 2].add(3.0), topo.faces, (12, 12), perspective=True)
            swapped = losses.shape_consistency(jax.random.PRNGKey(1), dict(shape=shape, exp=exp), 2, 2)
            return dict(images=r["images"], alpha=r["alpha"], detail=r["shape_detail_images"], persp=persp.depth,
                        blend=render.soft_blend(tv, topo.faces, out["vertices"], (12, 12)),
                        mean=render.grid_sample(mean_albedo * jnp.mean(light), r["grid"]), swapped=swapped["shape"],
                        lmk=losses.weighted_landmark_loss(lm, lmk),
                        photo=losses.photometric_loss(r["images"], image, r["mask"]),
                        detail_loss=losses.detail_losses(
                            uv_texture=r["uv_texture"], uv_texture_gt=render.extract_texture(image, r["uv_pverts"]),
                            uv_vis_mask=r["uv_texture"][..., :1], uv_z=uv_z, uv_shading=r["uv_shading"],
                            weights=dict(mrf=0.0))[0])

        def total(*a):
            return sum(jnp.sum(v) for v in terms(*a).values())

        grads = jax.grad(total, argnums=tuple(range(7)) + (9,))  # and the replicated albedo's
        ref, gref = jax.jit(terms)(*args), jax.jit(grads)(*args, mean_albedo)
        ref_verts = model(*args[:3])["vertices"]
        mesh = jax.make_mesh((4,), ("data",))
        assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
        with jax.set_mesh(mesh):
            split = [jax.device_put(a, jax.NamedSharding(mesh, jax.P("data"))) for a in args]
            got, g = jax.jit(terms)(*split), jax.jit(grads)(*split, mean_albedo)
            raster = jax.jit(lambda v: render.rasterize(v, topo.faces, (20, 20)).alpha)
            tv = jax.device_put(render.orth_proj(ref_verts, args[3]), jax.NamedSharding(mesh, jax.P("data")))
            assert "all-gather" not in raster.lower(tv).compile().as_text()
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
            if ref[k].ndim:
                assert got[k].sharding.spec[0] == "data", (k, got[k].sharding)
        for a, b in zip(g, gref):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
        print("OK")
    """)
    run_on_four_devices(code)
