"""DECA pretrain stage (landmark/eye/lip + regularisers; photo 0, id 0, no shape consistency)."""
from configs import coarse


def get_config():
    return coarse.get_config("pretrain")
