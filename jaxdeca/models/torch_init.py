"""PyTorch's initialisations, so that a fresh network starts from the distribution DECA's does.

DECA builds its trainable networks with PyTorch's defaults and copies an untrained torchvision
ResNet-50 into both encoders (``resnet.load_ResNet50Model``: ``torchvision.models.resnet50(
pretrained = False)``; its ResNet-101/152 loaders take pretrained ones):

* ResNet convolutions: torchvision's ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``,
  N(0, 2 / fan_out) with fan_out = out channels x kernel area (`resnet_conv_kernel`);
* ``nn.Linear`` and ``nn.Conv2d`` defaults (the encoders' MLP head, the detail decoder): weights
  and biases uniform in [-b, b], b = 1 / sqrt(fan_in), fan_in = in features (x kernel area)
  (`linear_kernel`, `linear_bias`);
* BatchNorm scale 1 and bias 0, as Flax's defaults.

Flax's own defaults (LeCun normal weights, zero biases) would start the head's outputs, such as
the camera and pose codes, with sqrt(3) times the spread and no bias, and the ResNet's
convolutions at another scale. A checkpoint or converted weights replace all of this.
"""
import jax
import jax.numpy as jnp
from jax.nn import initializers

resnet_conv_kernel = initializers.variance_scaling(2.0, "fan_out", "normal")
# uniform variance_scaling draws from [-sqrt(3 scale / fan_in), +...]: scale 1/3 gives 1 / sqrt(fan_in)
linear_kernel = initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear_bias(fan_in: int):
    """Bias init of PyTorch's nn.Linear / nn.Conv2d with `fan_in` inputs per output (features,
    or in channels x kernel area): uniform in [-1 / sqrt(fan_in), 1 / sqrt(fan_in)]."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
