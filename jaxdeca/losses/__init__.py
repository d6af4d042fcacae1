"""DECA's training losses in JAX.

coarse.py       landmarks, eye/lip closure, photometric, regularisers, ``coarse_losses``
detail.py       UV photometric + ID-MRF on the face crop, displacement regularisers,
                ``detail_losses``
idmrf.py        ID-MRF on VGG19 feature dicts
identity.py     VGGFace2 cosine identity loss over any feature function
consistency.py  shape / detail code swapping within identities (batch doubling)
image.py        torch-exact bilinear resize, scipy-exact binary erosion
defaults.py     DECA's default weights (``default_loss_config``)
"""

from jaxdeca.losses.coarse import (batch_kp_2d_l1_loss, code_reg, coarse_losses,
                                   coarse_photo_mask, eyed_loss, landmark_loss, landmark_weights,
                                   light_reg, lipd_loss, photometric_loss, weighted_landmark_loss)
from jaxdeca.losses.consistency import (consistency_order, detail_consistency, shape_consistency,
                                        swap_codes, tile_batch)
from jaxdeca.losses.defaults import default_loss_config
from jaxdeca.losses.detail import (detail_losses, face_attr_box, face_patch, photo_detail_loss,
                                   shading_smooth_loss, uv_visibility_mask, z_reg_loss, z_sym_loss)
from jaxdeca.losses.identity import (id_overlay, identity_loss, identity_loss_from_features,
                                     reg_input, vggface2_transform)
from jaxdeca.losses.idmrf import idmrf_loss, idmrf_loss_from_features, mrf_loss
from jaxdeca.losses.image import binary_erosion, resize_bilinear
