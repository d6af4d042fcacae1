"""DECA detail stage: detail encoder + detail decoder, coarse encoder frozen.

Defaults as DECA's release: image 224, UV 256, Adam 1e-4, 6 identities x K=3, detail loss
weights (photo_D 2, ID-MRF 0.05 x photo_D, reg_z / reg_diff / reg_sym 0.005) with detail
consistency. Extra paths over configs/coarse.py:
  init.coarse_checkpoint   the coarse stage's workdir (required; its encoder is frozen)
  weights.vgg19            python -m jaxdeca.convert vgg19 --src vgg19.pth --out DIR (ID-MRF)
  init.imagenet            E_detail's ResNet-50 starts from it (optional; unset: random, as DECA's;
                           configs/coarse.py)
DECA's detail data is VGGFace2 + VoxCeleb2 (deca_detail.yml's training_data ['vggface2', 'vox2']):
build both in data.data_dir and add --config.data.config=vggface2,voxceleb2 (default VGGFace2 alone).

    python -m jaxdeca.main --config=configs/detail.py --workdir=runs/detail \
        --config.data.data_dir=/data/tfds --config.weights.vgg19=/weights/vgg19 \
        --config.flame.path=/models/flame.npz --config.init.coarse_checkpoint=runs/coarse
"""
from configs import coarse


def get_config():
    c = coarse.get_config("detail")
    c.task = "detail"
    return c
