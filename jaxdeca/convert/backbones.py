"""Converters for the auxiliary networks: torchvision VGG19 and ResNet-50, VGGFace2 ResNet-50.

* ``convert_vgg19(src)``: torchvision ``vgg19`` state dict (.pth) -> VGG19Features variables;
  ``classifier.*`` dropped explicitly.
* ``convert_resnet50(src)``: torchvision ``resnet50`` state dict (.pth) -> ResNet50 variables
  (the ``encoder`` sub-tree of DECA's encoders, for an ImageNet start: config.init.imagenet);
  ``fc.*`` dropped.
* ``convert_vggface2(src)``: ``resnet50_ft_weight.pkl`` (pickled numpy, no torch needed) ->
  Caffe ResNet50 variables; ``fc.*`` (the 8631-way classifier) dropped.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdeca.convert.core import init_template, torch_to_flax
from jaxdeca.convert.torch_io import load_pickle_arrays, load_torch_file, state_dict_to_numpy
from jaxdeca.models.face_id import vggface2_resnet50
from jaxdeca.models.resnet import ResNet50
from jaxdeca.models.vgg19 import VGG19Features


def _state(src):
    state = load_torch_file(src)
    if hasattr(state, "keys") and "state_dict" in state:  # some re-saves wrap it
        state = state["state_dict"]
    return state_dict_to_numpy(state, src, "the file")


def vgg19_template() -> dict:
    """Variable shapes of what convert_vgg19 writes (VGG19Features, all 16 convs)."""
    return init_template(VGG19Features(layers=("pool_5",)), jnp.zeros((1, 32, 32, 3)))


def vggface2_template() -> dict:
    """Variable shapes of what convert_vggface2 writes (the Caffe ResNet-50, params and batch_stats)."""
    return init_template(vggface2_resnet50(), jnp.zeros((1, 64, 64, 3)))


def convert_vgg19(src: str) -> dict:
    """torchvision vgg19 .pth -> {'params': {'features_N': {kernel, bias}}}."""
    return torch_to_flax(_state(src), vgg19_template(), src, ignore=("classifier.",))


def convert_resnet50(src: str) -> dict:
    """torchvision resnet50 .pth -> ResNet50(caffe=False) {'params', 'batch_stats'}."""
    template = init_template(ResNet50(caffe=False), jnp.zeros((1, 64, 64, 3)))
    return torch_to_flax(_state(src), template, src, ignore=("fc.",))


def convert_vggface2(src: str) -> dict:
    """resnet50_ft_weight.pkl -> ResNet50(caffe=True) {'params', 'batch_stats'}."""
    return torch_to_flax(load_pickle_arrays(src), vggface2_template(), src, ignore=("fc.",))
