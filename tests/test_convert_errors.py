"""Bad weight files give one clear ConversionError naming the file and the problem."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from jaxdeca import convert
from jaxdeca.convert import __main__ as convert_cli
from jaxdeca.convert import ConversionError
from jaxdeca.convert.core import flax_path, torch_to_flax
from torch_refs import VGG19, randomize

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def vgg_state(tmp_path_factory):
    return {k: v.clone() for k, v in randomize(VGG19(), 0).state_dict().items()}


def test_flax_path_folds_indices():
    assert flax_path("encoder.layer1.0.downsample.1") == ("encoder", "layer1_0", "downsample_1")
    assert flax_path("conv_blocks.21") == ("conv_blocks_21",)


def test_truncated_torch_file(tmp_path, vgg_state):
    src = tmp_path / "vgg19.pth"
    torch.save(vgg_state, src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"vgg19\.pth: not a readable PyTorch checkpoint"):
        convert.convert_vgg19(str(src))


def test_missing_file(tmp_path):
    with pytest.raises(ConversionError, match="nope.tar: no such file"):
        convert.convert_deca(str(tmp_path / "nope.tar"))


def test_wrong_pickle(tmp_path):
    src = tmp_path / "resnet50_ft_weight.pkl"
    src.write_bytes(b"this is not a pickle at all")
    with pytest.raises(ConversionError, match="resnet50_ft_weight.pkl: not a readable pickle"):
        convert.convert_vggface2(str(src))
    with open(src, "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ConversionError, match="expected a dict of arrays, found list"):
        convert.convert_vggface2(str(src))


def test_unconsumed_and_missing_keys_are_named(tmp_path, vgg_state):
    state = dict(vgg_state)
    del state["features.34.bias"]
    state["features.99.weight"] = torch.zeros(3, 3, 3, 3)
    src = tmp_path / "vgg19.pth"
    torch.save(state, src)
    with pytest.raises(ConversionError) as e:
        convert.convert_vgg19(str(src))
    msg = str(e.value)
    assert "vgg19.pth" in msg
    assert "unconsumed keys: features.99.weight" in msg
    assert "missing: params/features_34/bias" in msg


def test_shape_mismatch_is_named(tmp_path, vgg_state):
    state = dict(vgg_state)
    state["features.0.weight"] = torch.zeros(64, 4, 3, 3)
    src = tmp_path / "vgg19.pth"
    torch.save(state, src)
    with pytest.raises(ConversionError, match=r"features\.0\.weight: found shape \(64, 4, 3, 3\), "
                                              r"expected \(64, 3, 3, 3\)$"):
        convert.convert_vgg19(str(src))


def test_deca_file_without_parts(tmp_path, vgg_state):
    src = tmp_path / "deca_model.tar"
    torch.save({"E_flame": {}, "opt": {}, "something": 1}, src)
    with pytest.raises(ConversionError, match=r"missing parts \['E_detail', 'D_detail'\], "
                                              r"unexpected entries \['something'\]"):
        convert.convert_deca(str(src))


def test_deca_trainer_bookkeeping_is_not_unexpected(tmp_path):
    # DECA's decalib/trainer.py saves opt, global_step and batch_size next to the three parts.
    src = tmp_path / "deca_model.tar"
    torch.save({"E_flame": {}, "opt": {}, "global_step": 1000, "batch_size": 2, "something": 1}, src)
    with pytest.raises(ConversionError, match=r"missing parts \['E_detail', 'D_detail'\], "
                                              r"unexpected entries \['something'\]$"):
        convert.convert_deca(str(src))


def test_torch_to_flax_round_trip_layouts():
    template = {"params": {"lin": {"kernel": np.zeros((3, 2)), "bias": np.zeros(2)},
                           "conv": {"kernel": np.zeros((1, 2, 3, 4))},
                           "bn": {"scale": np.zeros(4), "bias": np.zeros(4)}},
                "batch_stats": {"bn": {"mean": np.zeros(4), "var": np.zeros(4)}}}
    w = np.arange(6.0).reshape(2, 3)
    conv = np.arange(24.0).reshape(4, 3, 1, 2)
    out = torch_to_flax({"lin.weight": w, "lin.bias": np.ones(2), "conv.weight": conv,
                         "bn.weight": np.full(4, 2.0), "bn.bias": np.zeros(4),
                         "bn.running_mean": np.arange(4.0), "bn.running_var": np.ones(4),
                         "bn.num_batches_tracked": np.array(3)}, template, "x")
    np.testing.assert_array_equal(out["params"]["lin"]["kernel"], w.T)
    np.testing.assert_array_equal(out["params"]["conv"]["kernel"][0, 1, 2, 3], conv[3, 2, 0, 1])
    np.testing.assert_array_equal(out["batch_stats"]["bn"]["mean"], np.arange(4.0))
    np.testing.assert_array_equal(out["params"]["bn"]["scale"], np.full(4, 2.0))


def test_cli_reports_error_in_one_line(tmp_path):
    bad = tmp_path / "deca_model.tar"
    bad.write_bytes(b"PK\x03\x04garbage")
    proc = subprocess.run([sys.executable, "-m", "jaxdeca.convert", "deca", "--src", str(bad),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "deca_model.tar" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_out_that_cannot_be_written_is_a_conversion_error(tmp_path, vgg_state, capsys):
    """An --out whose parent is a file (or unwritable, or on a full disk) was orbax's OSError
    traceback after the whole conversion; it is one ConversionError naming --out."""
    src = tmp_path / "vgg19.pth"
    torch.save(vgg_state, src)
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "vgg19"
    assert convert_cli.main(["vgg19", "--src", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: cannot write: Not a directory"), err


def test_out_on_a_full_disk_is_a_conversion_error(tmp_path):
    """A disk that fills up while orbax writes the arrays is tensorstore's ValueError (not an
    OSError: 'OUT_OF_RANGE: Error writing ... File too large [os_error_code=27]'), which passed
    save_variables' OSError handler as a traceback after the whole conversion, and left orbax's
    temporary '<out>.orbax-checkpoint-tmp' folder beside --out. It is one ConversionError naming
    --out, nothing left behind."""
    import os
    import re
    import signal
    from jaxdeca.convert.core import save_variables
    resource = pytest.importorskip("resource")
    if signal.getsignal(signal.SIGXFSZ) != signal.SIG_IGN:
        pytest.skip("SIGXFSZ is not ignored: a write past RLIMIT_FSIZE would kill the process")
    variables = {"conv": {"kernel": np.random.default_rng(0).random((300, 300), np.float32)}}
    out = tmp_path / "out"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, hard))  # each file may have 64 KiB; the array is 360 KB
    try:
        with pytest.raises(ConversionError, match=rf"^{re.escape(str(out))}: cannot write: .*File too large"):
            save_variables(variables, str(out))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert os.listdir(tmp_path) == []


def test_load_variables_bad_dir(tmp_path):
    with pytest.raises(ConversionError, match="no such checkpoint directory"):
        convert.load_variables(str(tmp_path / "missing"))


BLOCK_TORCH = "import sys; sys.modules['torch'] = None\nfrom jaxdeca import convert\n"


def test_vggface2_pkl_needs_no_torch_and_pth_names_the_extra(tmp_path):
    from torch_refs import ResNet, save_vggface2_pkl

    pkl = tmp_path / "resnet50_ft_weight.pkl"
    save_vggface2_pkl(str(pkl), ResNet(caffe=True, with_fc=True, num_classes=3))
    pth = tmp_path / "vgg19.pth"
    pth.write_bytes(b"anything")
    code = BLOCK_TORCH + (
        f"v = convert.convert_vggface2({str(pkl)!r})\n"
        "assert v['params']['layer4_2']['conv3']['kernel'].shape == (1, 1, 512, 2048)\n"
        "try:\n"
        f"    convert.convert_vgg19({str(pth)!r})\n"
        "except convert.ConversionError as e:\n"
        "    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "vgg19.pth: reading PyTorch files needs torch; pip install jaxdeca[torch]" in proc.stdout


def test_half_precision_checkpoint_converts_to_float32(tmp_path, vgg_state):
    # A state dict saved after model.bfloat16() / .half(): numpy has no bfloat16, so the tensors
    # must be widened in torch before leaving it; the variables are float32 as always.
    for dtype in (torch.bfloat16, torch.float16):
        state = {k: v.to(dtype) for k, v in vgg_state.items()}
        src = tmp_path / f"vgg19_{str(dtype)[6:]}.pth"
        torch.save(state, src)
        out = convert.convert_vgg19(str(src))
        kernel = out["params"]["features_0"]["kernel"]
        assert kernel.dtype == np.float32
        np.testing.assert_array_equal(
            kernel, state["features.0.weight"].float().numpy().transpose(2, 3, 1, 0))


def test_deca_part_with_wrong_shape_or_foreign_keys_names_them_in_the_files_layout(tmp_path):
    """A wrong-shaped entry of deca_model.tar is reported once, in the file's (torch) layout,
    not as the transposed Flax shape plus the Flax variable it would have filled; a part whose
    every key is foreign (here a DataParallel 'module.' prefix) gives a short message, not a
    list of all 322 keys twice."""
    from torch_refs import Generator, ResnetEncoder, save_deca_tar

    nets = (ResnetEncoder(236), ResnetEncoder(128), Generator())
    src = tmp_path / "deca_model.tar"
    save_deca_tar(str(src), *nets)
    ckpt = torch.load(src, weights_only=True)
    ckpt["E_flame"]["layers.2.weight"] = torch.zeros(200, 1024)
    torch.save(ckpt, src)
    with pytest.raises(ConversionError) as e:
        convert.convert_deca(str(src))
    msg = str(e.value)
    assert msg.startswith(f"{src} [E_flame]: weights do not match the network")
    assert "layers.2.weight: found shape (200, 1024), expected (236, 1024)" in msg
    assert "missing" not in msg and "params/layers_2/kernel" not in msg
    ckpt["E_flame"] = {"module." + k: v for k, v in nets[0].state_dict().items()}
    torch.save(ckpt, src)
    with pytest.raises(ConversionError) as e:
        convert.convert_deca(str(src))
    msg = str(e.value)
    assert len(msg) < 1500, len(msg)
    assert "unconsumed keys: module.encoder.bn1.bias, " in msg and " more" in msg
    assert "missing: batch_stats/encoder/bn1/mean, " in msg


def test_writing_an_official_deca_tar_imports_neither_torch_dynamo_nor_triton(tmp_path, run_python):
    """torch_refs.save_deca_tar built the file's 'opt' entry with a torch.optim.Adam, whose
    constructor imports torch._dynamo and with it triton. In a pytest worker that had loaded
    TensorFlow (the tfds tests) that import segfaulted and took the worker down, wherever pip
    installs PyPI's torch for Linux, which ships triton (python3.12 here: 2 workers lost). Run in
    a fresh interpreter (conftest's run_python) so that no other test's imports count."""
    code = textwrap.dedent(f"""
        import sys
        import torch
        import torch_refs
        layer = torch.nn.Linear(2, 2)
        torch_refs.save_deca_tar({str(tmp_path / "deca_model.tar")!r}, layer, layer, layer)
        late = sorted(m for m in ("torch._dynamo", "triton") if m in sys.modules)
        assert not late, late
        assert sorted(torch.load({str(tmp_path / "deca_model.tar")!r}, weights_only=True)["opt"]) == [
            "param_groups", "state"]
    """)
    run_python(code, os.environ.get("XLA_FLAGS", ""))
