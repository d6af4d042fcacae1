"""jaxdeca.models: DECA's networks in Flax linen (NHWC, float32 params, ``dtype`` = compute).

* ``ResnetEncoder`` / ``coarse_encoder`` / ``detail_encoder`` and ``decompose_code``
* ``Generator`` / ``detail_decoder`` / ``detail_latent`` (displacement maps)
* ``VGG19Features`` (ID-MRF), ``vggface2_resnet50`` + ``vggface2_preprocess`` (identity loss)
* ``ResNet50`` (both the torchvision v1.5 and the Caffe variants)
* ``jit_init``: a network's ``init`` as one compiled program
* ``torch_init``: PyTorch's initialisers, which fresh encoders and detail decoders draw from, as DECA's
"""

from jaxdeca.models.decoders import DETAIL_LATENT_SIZE, Generator, detail_decoder, detail_latent
from jaxdeca.models.encoders import (COARSE_CODE_SIZE, CODE_SIZES, DETAIL_CODE_SIZE, ResnetEncoder,
                                     coarse_encoder, decompose_code, detail_encoder)
from jaxdeca.models.face_id import VGGFACE2_MEAN_BGR, vggface2_preprocess, vggface2_resnet50
from jaxdeca.models.initialize import jit_init
from jaxdeca.models.resnet import ResNet50
from jaxdeca.models.vgg19 import VGG19Features, deca_layer_names

__all__ = [
    "COARSE_CODE_SIZE", "CODE_SIZES", "DETAIL_CODE_SIZE", "DETAIL_LATENT_SIZE", "Generator",
    "ResNet50", "ResnetEncoder", "VGG19Features", "VGGFACE2_MEAN_BGR", "coarse_encoder",
    "deca_layer_names", "decompose_code", "detail_decoder", "detail_encoder", "detail_latent", "jit_init",
    "vggface2_preprocess", "vggface2_resnet50",
]
