"""DECA coarse stage (DECA's released defaults, decalib/utils/config.py + configs/release_version).

Image 224, UV 256, ResNet-50 encoders, Adam 1e-4, loss weights from `default_loss_config()`
with shape consistency and the VGGFace2 identity loss. Batches and steps are those of DECA's
release recipe (configs/release_version/deca_{pretrain,coarse,detail}.yml, one GPU):
`RELEASE_BATCHES`, identities x K images per step (train.batch_size is the global batch, split
over all devices; it must be a multiple of K and of the device count).

config.seed seeds the stage's data order, the initial weights of the networks it creates and
its per-step noise. Each stage is a run of its own (as in DECA), so stages with the same seed
read the data in the same order (identities grouped by their own batch size and K); that is
harmless, every stage passes over the data many times. `--config.seed=N` changes it per stage.
The held-out eval batches do not depend on it (data.eval_seed picks their images), so runs of
several seeds are scored on the same faces; nor on the training augmentation (their crop is
data.eval_scale x the landmark box, centred, without colour jitter).

Paths the user supplies (each a config field; a missing one is one clear error at start):
  data.data_dir         tfds data dir holding identity_faces/<data.config> (build it with
                        python -m jaxdeca.data.prepare, then python -m jaxdeca.data.tfds_faces)
  weights.vggface2      python -m jaxdeca.convert vggface2 --src resnet50_ft_weight.pkl --out DIR
  flame.path            FLAME npz/folder/pkl (python -m jaxdeca.flame.convert); None = demo head
  init.checkpoint       the pretrain stage's workdir (the encoder starts from it; optional)
  init.imagenet         python -m jaxdeca.convert resnet50 --src resnet50.pth --out DIR: the
                        encoders' ResNet-50 starts from torchvision's ImageNet weights; unset, from
                        random weights drawn as DECA's (its load_ResNet50Model copies an untrained
                        torchvision resnet50, pretrained=False; jaxdeca.models.torch_init). Read
                        by the stage that creates an encoder: pretrain (or a coarse stage without
                        init.checkpoint) for E_flame, detail for E_detail

data.config is one dataset (default VGGFace2 alone) or several built in data.data_dir, read as
their concatenation. DECA's mixes (its dataset.training_data): the default, config.py's
['vggface2', 'ethnicity'] (VGGFace2 + BUPT), is `--config.data.config=vggface2,bupt`; deca_detail.yml's
['vggface2', 'vox2'] (VGGFace2 + VoxCeleb2) is `--config.data.config=vggface2,voxceleb2`.

    python -m jaxdeca.main --config=configs/coarse.py --workdir=runs/coarse \
        --config.data.data_dir=/data/tfds --config.weights.vggface2=/weights/vggface2 \
        --config.flame.path=/models/flame.npz --config.init.checkpoint=runs/pretrain
"""
import ml_collections

from jaxdeca.losses import default_loss_config
from jaxdeca.train import data as train_data
from jaxdeca.train.deca_common import DEFAULT_MODEL

placeholder = ml_collections.config_dict.placeholder


# stage -> (identities per step, K images per identity, steps): DECA's dataset.batch_size,
# dataset.K and train.max_steps in configs/release_version/deca_<stage>.yml. deca_detail.yml says
# batch_size 6, K 3 (and its header: the paper's 6 x 3), but it has a second `dataset:` key
# (training_data) further down, which replaces the first when yacs reads it (yaml.safe_load: the
# last duplicate key wins), so DECA's trainer run on that file gets config.py's 2 x K=4; we take
# the 6 x 3 the file and the paper state. Two detail terms are sums over the (consistency-doubled)
# batch in DECA, not means: z_sym and ID-MRF. At 6 x 3 (36 images) they weigh 36 / 16 = 2.25x
# more against the mean terms (photo_D, reg_z, reg_diff) than in that 2 x 4 run.
RELEASE_BATCHES = {"pretrain": (64, 1, 100_000), "coarse": (8, 2, 200_000), "detail": (6, 3, 1_000_000)}


def get_config(stage: str = "coarse"):
    """stage: "pretrain", "coarse" or "detail" (`--config=configs/coarse.py:detail`)."""
    if stage not in RELEASE_BATCHES:
        raise ValueError(f"configs/coarse.py: unknown stage {stage!r}; use one of "
                         f"{', '.join(repr(s) for s in sorted(RELEASE_BATCHES))}")
    identities, k, steps = RELEASE_BATCHES[stage]
    c = ml_collections.ConfigDict()
    c.mode = "train"
    c.task = stage
    c.stage = stage
    c.seed = 0
    c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-4, clip_norm=0.0, schedule="constant"))
    # DECA's networks (ResNet-50 encoders, hidden 1024, UV 256, float32, raw camera scale): the
    # defaults checkpoints and apps fall back on too
    c.model = ml_collections.ConfigDict(dict(DEFAULT_MODEL, init_cam_scale=placeholder(float)))
    # data.config: one identity_faces config, or several ("vggface2,bupt": DECA's mix; see above).
    # The fields that choose what source 'tfds' reads (dataset, config, data_dir, eval_split, the
    # crop and colour augmentation: DECA's scale_min 1.4, scale_max 1.8, trans_scale 0, and
    # eval_scale 1.6) come from `tfds_defaults`, which a source 'synthetic' run compares them with.
    c.data = ml_collections.ConfigDict(dict(train_data.tfds_defaults(), source="tfds", data_dir=placeholder(str),
                                            k=k, image_size=224, eval_batches=2, eval_seed=0, num_threads=4))
    c.train = ml_collections.ConfigDict(dict(num_steps=steps, batch_size=identities * k, checkpoint_every=1000,
                                             keep_checkpoints=3, log_every=50, eval_every=1000,
                                             image_every=1000, async_checkpoints=True))
    c.flame = ml_collections.ConfigDict(dict(path=placeholder(str)))
    c.weights = ml_collections.ConfigDict(dict(vggface2=placeholder(str), vgg19=placeholder(str)))
    c.init = ml_collections.ConfigDict(dict(checkpoint=placeholder(str), coarse_checkpoint=placeholder(str),
                                            imagenet=placeholder(str)))
    c.loss = default_loss_config()
    if stage == "pretrain":  # DECA's deca_pretrain.yml: landmarks, closures, shape/exp regularisers
        c.loss.photo = 0.0
        c.loss.id = 0.0
        c.loss.use_seg = False
        c.loss.reg_tex = 0.0
        c.loss.reg_light = 0.0
        c.loss.shape_consistency = False
        # DECA's trainer runs its consistency branch when shape_consistency OR detail_consistency
        # is set, and the yml leaves detail_consistency at True: with K=1 its pretrain appends
        # every image and code to itself ([x; x]), which doubles the batch-summed regularisers
        # (the landmark and closure terms are means). Twice the yml's 1e-4 on the undoubled batch
        # is that objective exactly, without running FLAME on the copies.
        c.loss.reg_shape = 2e-4
        c.loss.reg_exp = 2e-4
    c.coordinator_address = placeholder(str)
    c.num_processes = placeholder(int)
    c.process_id = placeholder(int)
    return c
