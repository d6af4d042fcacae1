"""Shape / detail consistency: permutations stay within identities, the batch doubles."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jaxdeca.losses import consistency


def test_order_permutes_within_each_identity():
    for seed in range(5):
        order = np.asarray(consistency.consistency_order(jax.random.PRNGKey(seed), 3, 4))
        assert order.shape == (12,)
        for i in range(3):
            assert sorted(order[i * 4:(i + 1) * 4]) == list(range(i * 4, (i + 1) * 4))
    a = consistency.consistency_order(jax.random.PRNGKey(0), 3, 4)
    b = consistency.consistency_order(jax.random.PRNGKey(0), 3, 4)
    np.testing.assert_array_equal(a, b)
    orders = {tuple(np.asarray(consistency.consistency_order(jax.random.PRNGKey(s), 2, 3)))
              for s in range(20)}
    assert len(orders) > 1


def test_shape_consistency_doubles_batch():
    n, k = 2, 3
    codes = {"shape": jnp.arange(6.0)[:, None] * jnp.ones((1, 4)),
             "exp": jnp.arange(6.0)[:, None] + 100, "light": jnp.ones((6, 9, 3))}
    key = jax.random.PRNGKey(1)
    out = jax.jit(consistency.shape_consistency, static_argnums=(2, 3))(key, codes, n, k)
    order = np.asarray(consistency.consistency_order(key, n, k))
    np.testing.assert_array_equal(out["shape"][:6], codes["shape"])
    np.testing.assert_array_equal(out["shape"][6:], np.asarray(codes["shape"])[order])
    np.testing.assert_array_equal(out["exp"], jnp.concatenate([codes["exp"]] * 2))
    assert out["light"].shape == (12, 9, 3)
    batch = consistency.tile_batch({"image": jnp.zeros((6, 4, 4, 3)), "lmk": jnp.ones((6, 68, 3))})
    assert batch["image"].shape == (12, 4, 4, 3) and batch["lmk"].shape == (12, 68, 3)


def test_detail_consistency_tiles_shape():
    codes = {"shape": jnp.arange(4.0)[:, None], "detail": jnp.arange(4.0)[:, None] + 10}
    out = consistency.detail_consistency(jax.random.PRNGKey(2), codes, 2, 2)
    np.testing.assert_array_equal(out["shape"][:, 0], [0, 1, 2, 3, 0, 1, 2, 3])
    assert sorted(np.asarray(out["detail"][4:6, 0]).tolist()) == [10, 11]


def test_gradient_flows_through_swap():
    codes = {"shape": jnp.ones((4, 2)), "exp": jnp.ones((4, 1))}
    g = jax.grad(lambda s: jnp.sum(consistency.shape_consistency(
        jax.random.PRNGKey(0), {**codes, "shape": s}, 2, 2)["shape"] ** 2))(codes["shape"])
    np.testing.assert_allclose(np.asarray(g), 4.0)   # each row used twice: 2 * 2 * x


def test_bad_batch_raises():
    with pytest.raises(ValueError, match="n_identities"):
        consistency.shape_consistency(jax.random.PRNGKey(0), {"shape": jnp.ones((5, 2))}, 2, 3)
    with pytest.raises(ValueError, match="detail"):
        consistency.detail_consistency(jax.random.PRNGKey(0), {"shape": jnp.ones((4, 2))}, 2, 2)
