"""Parity: official-layout files written by hand-built PyTorch nets -> converter -> orbax -> Flax.

Random weights and random BN running statistics, eval mode, float32 on both sides; outputs agree
to 1e-4 relative. Images are 64x64 (the ResNets are size-agnostic); the decoder is always 256.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxdeca import convert
from jaxdeca.models import (VGG19Features, coarse_encoder, decompose_code, detail_decoder,
                            detail_encoder, detail_latent, vggface2_preprocess, vggface2_resnet50)
from jaxdeca.models.resnet import ResNet50
from torch_refs import (VGG19, Generator, ResNet, ResnetEncoder, randomize, save_deca_tar, save_vggface2_pkl,
                        to_nchw)

torch.set_num_threads(2)


def assert_close(ours, ref, rtol=1e-4):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = max(np.abs(ref).max(), 1e-12)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def deca_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("deca")
    nets = (randomize(ResnetEncoder(236), 1), randomize(ResnetEncoder(128), 2),
            randomize(Generator(), 3))
    src = str(d / "deca_model.tar")
    save_deca_tar(src, *nets)
    out = convert.save_variables(convert.convert_deca(src), str(d / "flax"))
    return nets, src, convert.load_variables(out)


def test_deca_codes_and_displacement_match_pytorch(deca_case, images):
    (e_flame, e_detail, d_detail), _, variables = deca_case
    x = to_nchw(images)
    with torch.no_grad():
        ref_code = e_flame(x).numpy()
        ref_detail = e_detail(x).numpy()
    code = coarse_encoder().apply(variables["E_flame"], images)
    detail = detail_encoder().apply(variables["E_detail"], images)
    assert_close(code, ref_code)
    assert_close(detail, ref_detail)
    # DECA's decode: D_detail(cat([pose[:, 3:], exp, detail])), each side on its own codes.
    with torch.no_grad():
        ref_latent = torch.cat([torch.from_numpy(ref_code[:, 203:206]),
                                torch.from_numpy(ref_code[:, 150:200]),
                                torch.from_numpy(ref_detail)], dim=1)
        ref_disp = d_detail(ref_latent).numpy().transpose(0, 2, 3, 1)
    parts = decompose_code(code)
    disp = detail_decoder().apply(variables["D_detail"],
                                  detail_latent(parts["pose"], parts["exp"], detail))
    assert disp.shape == (2, 256, 256, 1)
    assert_close(disp, ref_disp)


def test_deca_cli_writes_loadable_directory(deca_case, tmp_path):
    _, src, variables = deca_case
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "jaxdeca.convert", "deca", "--src", src,
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    again = convert.load_variables(str(out))
    a, b = jax.tree.leaves(again), jax.tree.leaves(variables)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_vgg19_features_match_deca_feat_layer(tmp_path, images):
    net = randomize(VGG19(), 4)
    src = str(tmp_path / "vgg19.pth")
    torch.save(net.state_dict(), src)
    variables = convert.load_variables(
        convert.save_variables(convert.convert_vgg19(src), str(tmp_path / "flax")))
    layers = ("relu1_2", "relu3_2", "relu4_2", "pool_5")
    ours = VGG19Features(layers=layers).apply(variables, images)
    with torch.no_grad():
        ref = net.deca_feats(to_nchw(images))
    for name in layers:
        assert_close(ours[name], ref[name].numpy().transpose(0, 2, 3, 1))


def test_vggface2_pkl_matches_caffe_resnet(tmp_path):
    # 64x64: conv1 gives 32 x 32, which the ceil-mode max-pool (3, stride 2) takes to 16 x 16 by
    # adding a padded row and column (floor mode: 15). (65 gave 33, which needs no padding.)
    images = np.random.default_rng(1).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    net = randomize(ResNet(caffe=True, with_fc=True, num_classes=10), 5)
    src = str(tmp_path / "resnet50_ft_weight.pkl")
    save_vggface2_pkl(src, net)
    variables = convert.convert_vggface2(src)
    x = vggface2_preprocess(jnp.asarray(images))
    ours = vggface2_resnet50().apply(variables, x)
    with torch.no_grad():
        ref = net(to_nchw(x)).numpy()
    assert ours.shape == (2, 2048)
    assert_close(ours, ref)


def test_torchvision_resnet50_init_matches(tmp_path, images):
    net = randomize(ResNet(with_fc=True), 6)
    src = str(tmp_path / "resnet50.pth")
    torch.save(net.state_dict(), src)
    variables = convert.convert_resnet50(src)
    with torch.no_grad():
        ref = net(to_nchw(images)).numpy()
    assert_close(ResNet50().apply(variables, images), ref)


def test_detail_decoder_train_mode_matches_pytorch_train_mode():
    # Training mode: normalisation by batch statistics with eps 0.8 (and 1e-5 for conv_blocks.0),
    # running means moved by momentum 0.1. Running variances differ by the documented n/(n-1)
    # (Flax: biased); at 256x256 that is invisible, so only conv_blocks.19's is compared.
    from jaxdeca.convert.core import init_template, torch_to_flax

    net = randomize(Generator(), 7)
    state = {k: v.clone().numpy() for k, v in net.state_dict().items()}
    dec = detail_decoder()
    variables = torch_to_flax(state, init_template(dec, jnp.zeros((1, 181))), "D_detail")
    z = np.random.default_rng(2).normal(size=(3, 181)).astype(np.float32)
    net.train()
    with torch.no_grad():
        ref = net(torch.from_numpy(z)).numpy().transpose(0, 2, 3, 1)
    out, new = jax.jit(lambda v, z: dec.apply(v, z, train=True, mutable=["batch_stats"]))(
        variables, z)
    assert_close(out, ref)
    for i in (0, 3, 7, 11, 15, 19):
        assert_close(new["batch_stats"][f"conv_blocks_{i}"]["mean"],
                     net.conv_blocks[i].running_mean.numpy())
    assert_close(new["batch_stats"]["conv_blocks_19"]["var"],
                 net.conv_blocks[19].running_var.numpy())
