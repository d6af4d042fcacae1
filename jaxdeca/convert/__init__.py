"""jaxdeca.convert: official PyTorch/Caffe weights -> Flax variables in orbax directories.

Python API (each returns a variables dict; ``save_variables``/``load_variables`` round-trip it):

    convert_deca('deca_model.tar')      -> {'E_flame': vars, 'E_detail': vars, 'D_detail': vars}
    convert_vgg19('vgg19.pth')           -> VGG19Features vars
    convert_vggface2('resnet50_ft_weight.pkl') -> vggface2_resnet50() vars
    convert_resnet50('resnet50.pth')     -> ResNet50 vars (DECA encoder init)

CLI: ``python -m jaxdeca.convert {deca,vgg19,vggface2,resnet50} --src FILE --out DIR``.
"""

from jaxdeca.convert.backbones import convert_resnet50, convert_vgg19, convert_vggface2
from jaxdeca.convert.core import load_variables, save_variables, torch_to_flax
from jaxdeca.convert.deca import convert_deca
from jaxdeca.convert.torch_io import ConversionError

CONVERTERS = {"deca": convert_deca, "vgg19": convert_vgg19, "vggface2": convert_vggface2,
              "resnet50": convert_resnet50}

__all__ = ["CONVERTERS", "ConversionError", "convert_deca", "convert_resnet50", "convert_vgg19",
           "convert_vggface2", "load_variables", "save_variables", "torch_to_flax"]
