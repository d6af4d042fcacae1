"""DECA pretrain stage (configs/release_version/deca_pretrain.yml): the coarse encoder on
landmark, eye/lip closure and the shape/expression regularisers only (photo 0, id 0, useSeg
off, reg_tex 0, reg_light 0, no shape consistency), 64 identities x K=1 images per step. The
shape/expression weights are 2e-4: DECA's trainer duplicates this batch (see configs/coarse.py),
doubling its summed regularisers at 1e-4. Same fields as configs/coarse.py."""
from configs import coarse


def get_config():
    return coarse.get_config("pretrain")
