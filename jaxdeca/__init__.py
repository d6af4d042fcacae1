"""jaxdeca: DECA (Detailed Expression Capture and Animation) in JAX/Flax.

Packages, one job each:
  flame       FLAME head model: skinning, landmarks, albedo, official-file loaders, demo head.
  render      differentiable rasterizer and shading in jax.numpy.
  models      Flax networks (encoders, detail decoder, VGG19, VGGFace2 ResNet-50).
  convert     official PyTorch weights -> Flax variables.
  losses      DECA's coarse and detail training losses.
  data        dataset preparation, tfds builders, identity-grouped loading.
  train       train state, steps and loop.
  apps        reconstruct, animate, teaser, fit.
  evaluation  NoW benchmark export and metric.
  wavefront   the one OBJ reader and writer (FLAME template, NoW meshes, exports).
  xla_options the compile options of jaxdeca's jitted programs (`jit`), for XLA:CPU.
"""

__version__ = "0.1.0"
