"""Fresh networks start from DECA's distributions: PyTorch's own initialisers are the reference.

DECA's encoders copy an untrained torchvision ResNet-50 (convolutions kaiming_normal_, fan_out,
relu) and build their MLP head, like the detail decoder, from nn.Linear / nn.Conv2d with their
default initialisation (weights and biases uniform in +-1 / sqrt(fan_in)). Each fresh leaf of our
networks is compared with a tensor of the same shape that torch initialises so.
"""
import math

import jax
import numpy as np
import pytest
from flax import traverse_util

from jaxdeca.models import coarse_encoder, detail_decoder, jit_init

torch = pytest.importorskip("torch")


def _torch_reference(kind, shape):
    """torch's initialisation of a tensor of our leaf's shape (Flax layout) -> numpy, flattened.
    kind: 'resnet_conv' (torchvision's ResNet), 'linear' / 'conv' (nn.Linear / nn.Conv2d kernels),
    'linear_bias' / 'conv_bias' with `shape` the kernel's (the bias is the module's own)."""
    if kind == "resnet_conv":  # Flax [kh, kw, in, out] -> torch [out, in, kh, kw]
        t = torch.empty(shape[3], shape[2], shape[0], shape[1])
        torch.nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu")
        return t.numpy().ravel()
    if kind.startswith("linear"):
        m = torch.nn.Linear(shape[0], shape[1])
    else:
        m = torch.nn.Conv2d(shape[2], shape[3], (shape[0], shape[1]))
    return (m.bias if kind.endswith("bias") else m.weight).detach().numpy().ravel()


def _fresh_leaves():
    """{network/path: (leaf, kind, kernel shape)} of a narrow coarse encoder and a 64 px detail
    decoder (the initialisers depend on each layer's shape only)."""
    import jax.numpy as jnp
    enc = jit_init(coarse_encoder(width=0.25, blocks=(1, 1, 1, 1), hidden=256), jax.random.PRNGKey(1),
                   jnp.zeros((1, 64, 64, 3)))
    dec = jit_init(detail_decoder(uv_size=64), jax.random.PRNGKey(2), jnp.zeros((1, 181)))
    out = {}
    for net, v in (("E_flame", enc), ("D_detail", dec)):
        flat = traverse_util.flatten_dict(v["params"], sep="/")
        for path, leaf in flat.items():
            stem = path.rsplit("/", 1)[0] + "/"
            if stem + "kernel" not in flat:  # BatchNorm's scale and bias
                kind, shape = "bn", None
            elif path.endswith("kernel"):
                kind = "resnet_conv" if path.startswith("encoder/") else ("linear" if leaf.ndim == 2 else "conv")
                shape = leaf.shape
            else:  # a Dense's or a Conv's bias: its module's fan_in
                shape = flat[stem + "kernel"].shape
                kind = ("linear" if len(shape) == 2 else "conv") + "_bias"
            out[f"{net}/{path}"] = (np.asarray(leaf), kind, shape)
    return out


def test_fresh_networks_are_initialised_as_pytorch_initialises_deca():
    leaves = _fresh_leaves()
    kinds = {kind for _, kind, _ in leaves.values()}
    assert kinds == {"bn", "resnet_conv", "linear", "linear_bias", "conv", "conv_bias"}, kinds
    torch.manual_seed(0)
    for name, (leaf, kind, shape) in leaves.items():
        if kind == "bn":  # BatchNorm: scale 1, bias 0 in both
            np.testing.assert_array_equal(leaf, np.ones_like(leaf) if name.endswith("scale") else 0.0, err_msg=name)
            continue
        ours = leaf.ravel().astype(np.float64)
        # enough torch draws for its figures to be exact to well under our tolerance
        ref = np.concatenate([_torch_reference(kind, shape) for _ in range(max(1, 20000 // ours.size))])
        if kind != "resnet_conv":  # uniform in +-1 / sqrt(fan_in): the same bound
            bound = np.abs(ref).max()
            assert np.abs(ours).max() <= bound * 1.01, (name, np.abs(ours).max(), bound)
            assert np.abs(ours).max() >= bound * (0.5 if ours.size < 8 else 0.9), (name, np.abs(ours).max(), bound)
        if ours.size >= 128:  # the spread: within 6 standard errors of the sample std
            rel = ours.std() / ref.std()
            assert abs(rel - 1.0) < 6 * math.sqrt(0.5 / ours.size), (name, kind, ours.size, rel)
        assert abs(ours.mean()) < 6 * ref.std() / math.sqrt(ours.size), (name, ours.mean())
