"""jaxdeca.data: face datasets for DECA training and the test-time crop.

    prepare      python -m jaxdeca.data.prepare: dlib landmarks / .pts, skin masks, identities
    tfds_faces   tfds builders (identity_faces: vggface2/voxceleb2/bupt/celeba/folders; synthetic_faces)
                 written as array_record, identity groups in metadata
    loader       identity-grouped, deterministic, resumable batches (grain), sharding to devices
    preprocess   DECA's inference crop and the inverse mapping to original pixels
    crop, detect, images, masks, synthetic: the pieces above are made of

Submodules are imported on use (tensorflow_datasets and dlib are heavy).
"""


class DatasetError(ValueError):
    """A built dataset cannot be read as it is (a file missing, cut short or damaged, metadata
    without identity groups); the message names the file or dataset and how to rebuild it."""
