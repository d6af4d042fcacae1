"""Hand-written PyTorch reference networks with the official module names (a helper of the tests and
benchmarks/networks.py; it holds no tests).

Written from DECA's ``decalib/models/{resnet,encoders,decoders}.py``, torchvision's VGG19 and
ResNet-50, and the Caffe ResNet-50 of VGGFace2-pytorch, so ``state_dict()`` keys equal the keys
in the official files. Independent of jaxdeca: nothing here imports it.
"""

import pickle

import numpy as np
import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, caffe=False):
        super().__init__()
        s1, s3 = (stride, 1) if caffe else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=s3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class ResNet(nn.Module):
    """ResNet-50 trunk; global mean pooling (== AvgPool2d(7) at 224) and optional fc."""

    def __init__(self, caffe=False, with_fc=False, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.caffe = caffe
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        if caffe:
            self.maxpool = nn.MaxPool2d(3, 2, padding=0, ceil_mode=True)
        else:
            self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, 2)
        self.layer3 = self._make_layer(256, 6, 2)
        self.layer4 = self._make_layer(512, 3, 2)
        if with_fc:
            self.fc = nn.Linear(2048, num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.caffe)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, caffe=self.caffe) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


class ResnetEncoder(nn.Module):
    """DECA's encoders.ResnetEncoder with last_op=None."""

    def __init__(self, outsize):
        super().__init__()
        self.encoder = ResNet()
        self.layers = nn.Sequential(nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, outsize))

    def forward(self, x):
        return self.layers(self.encoder(x))


class Generator(nn.Module):
    """DECA's decoders.Generator(latent_dim=181, out_channels=1, out_scale=0.01, 'bilinear')."""

    def __init__(self, latent_dim=181, out_channels=1, out_scale=0.01, sample_mode="bilinear"):
        super().__init__()
        self.out_scale = out_scale
        self.init_size = 32 // 4
        self.l1 = nn.Sequential(nn.Linear(latent_dim, 128 * self.init_size ** 2))
        up = lambda: nn.Upsample(scale_factor=2, mode=sample_mode)  # noqa: E731
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(128),
            up(), nn.Conv2d(128, 128, 3, stride=1, padding=1), nn.BatchNorm2d(128, 0.8),
            nn.LeakyReLU(0.2, inplace=True),
            up(), nn.Conv2d(128, 64, 3, stride=1, padding=1), nn.BatchNorm2d(64, 0.8),
            nn.LeakyReLU(0.2, inplace=True),
            up(), nn.Conv2d(64, 64, 3, stride=1, padding=1), nn.BatchNorm2d(64, 0.8),
            nn.LeakyReLU(0.2, inplace=True),
            up(), nn.Conv2d(64, 32, 3, stride=1, padding=1), nn.BatchNorm2d(32, 0.8),
            nn.LeakyReLU(0.2, inplace=True),
            up(), nn.Conv2d(32, 16, 3, stride=1, padding=1), nn.BatchNorm2d(16, 0.8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(16, out_channels, 3, stride=1, padding=1),
            nn.Tanh(),
        )

    def forward(self, noise):
        out = self.l1(noise)
        out = out.view(out.shape[0], 128, self.init_size, self.init_size)
        return self.conv_blocks(out) * self.out_scale


VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
             512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG19(nn.Module):
    """torchvision vgg19 layout: features Sequential + classifier."""

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(8, 4), nn.ReLU(True), nn.Linear(4, 2))

    def deca_feats(self, x):
        """DECA's VGG19FeatLayer.forward (normalisation + its layer naming)."""
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x = (x - mean) / std
        out, ci, ri = {}, 1, 0
        for layer in self.features.children():
            if isinstance(layer, nn.Conv2d):
                ri += 1
                name = f"conv{ci}_{ri}"
            elif isinstance(layer, nn.ReLU):
                ri += 1
                name = f"relu{ci}_{ri}"
                layer = nn.ReLU(inplace=False)
            else:
                ri = 0
                name = f"pool_{ci}"
                ci += 1
            x = layer(x)
            out[name] = x
        return out


def randomize(module, seed=0):
    """Random weights and non-trivial BN running statistics; returns module in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.4 + 0.8)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.0 + 0.5)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
        for m in module.modules():  # tame residual growth so features stay O(1)
            if isinstance(m, Bottleneck):
                m.bn3.weight.mul_(0.2)
                m.bn3.bias.mul_(0.2)
    return module.eval()


def save_deca_tar(path, e_flame, e_detail, d_detail):
    """Write a file in the official deca_model.tar layout (DECA's decalib/trainer.py: the three
    state dicts plus 'opt', 'global_step' and 'batch_size').

    'opt' is the state_dict of a fresh torch.optim.Adam over two parameters as DECA's torch wrote
    it, written out: constructing a torch optimizer imports torch._dynamo and with it triton,
    which segfaults in a process that has loaded TensorFlow (tfds tests run before in the same
    worker) wherever pip installed PyPI's torch build for Linux, which ships triton (torch
    2.13.0, triton 3.7.1, tensorflow-cpu 2.21.0; not the +cpu wheel, which has no triton)."""
    opt = {"state": {}, "param_groups": [dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                                              params=[0, 1])]}
    torch.save({"E_flame": e_flame.state_dict(), "E_detail": e_detail.state_dict(),
                "D_detail": d_detail.state_dict(), "opt": opt,
                "global_step": 123, "batch_size": 2}, path)


def save_vggface2_pkl(path, net):
    """Write resnet50_ft_weight.pkl's layout: pickle of {name: numpy array} incl. fc."""
    state = {k: v.numpy() for k, v in net.state_dict().items() if "num_batches" not in k}
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=2)


def to_nchw(images_nhwc):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(images_nhwc).transpose(0, 3, 1, 2)))
