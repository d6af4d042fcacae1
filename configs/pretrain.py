"""DECA pretrain stage: the coarse encoder on landmark, eye/lip closure and regularisers only
(photo 0, id 0, no shape consistency). Same fields as configs/coarse.py."""
from configs import coarse


def get_config():
    return coarse.get_config("pretrain")
