"""libcom's FOPA heat-map inference (bcmi/libcom, commit fe5b5b1fa4ddcbc7af8f6d6741f4dd11736717e4),
vendored for tests/test_fopa_upstream.py: the reference that pipeline.fopa must match.

Copyright BCMI Lab, licensed under the Apache License 2.0 (LICENSE-libcom beside this file).
Each section below is the named upstream file with its import lines gathered here; the only
modifications are marked ``CHANGED`` (weights are given, not downloaded; no GPU is required;
the float heat maps are kept beside the JPEG files upstream writes). Not used at run time.
"""
import csv
import os
import random
import shutil

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.model_zoo as model_zoo
import torchvision.transforms as transforms
from PIL import Image


# ---- libcom/fopa_heat_map/source/backbone/ResNet.py (libcom @ fe5b5b1) imports moved up; one change marked CHANGED ----
# import torchvision.models as models
# import torch.nn as nn
# # https://pytorch.org/docs/stable/torchvision/models.html#id3
#


model_urls = {
    "resnet18": "https://download.pytorch.org/models/resnet18-5c106cde.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-333f7ec4.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-19c8e357.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-b121ed2d.pth",
}

def conv3x3(in_planes, out_planes, stride=1):
    """3x3 convolution with padding"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    """1x1 convolution"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super(BasicBlock, self).__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super(Bottleneck, self).__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class ResNet(nn.Module):
    def __init__(self, block, layers, zero_init_residual=False):
        super(ResNet, self).__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)  # 6
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)  # 3

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

        # Zero-initialize the last BN in each residual branch,
        # so that the residual branch starts with zeros, and each residual block behaves like an identity.
        # This improves the model by 0.2~0.3% according to https://arxiv.org/abs/1706.02677
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion),
            )

        layers = []
        layers.append(block(self.inplanes, planes, stride, downsample))
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))

        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)

        return x

def resnet18(pretrained=False, **kwargs):
    """Constructs a ResNet-18 model.

    Args:
        pretrained (bool): If True, returns a model pre-trained on ImageNet
    """
    model = ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)
    if pretrained:
        pretrained_dict = model_zoo.load_url(model_urls["resnet18"])

        model_dict = model.state_dict()
        # 1. filter out unnecessary keys
        pretrained_dict = {k: v for k, v in pretrained_dict.items() if k in model_dict}
        # 2. overwrite entries in the existing state dict
        model_dict.update(pretrained_dict)
        # 3. load the new state dict
        model.load_state_dict(model_dict)
    return model


def Backbone_ResNet18_in3(pretrained=True, weight_path=None):
    if pretrained:
        print("The backbone model loads the pretrained parameters...")
    net = pretrained_resnet18_4ch(pretrained=pretrained, weight_path=weight_path)  # CHANGED: was pretrained=True (loads SOPA.pth)
    div_2 = nn.Sequential(*list(net.children())[:3])
    div_4 = nn.Sequential(*list(net.children())[3:5])
    div_8 = net.layer2
    div_16 = net.layer3
    div_32 = net.layer4

    return div_2, div_4, div_8, div_16, div_32


def Backbone_ResNet18_in3_1(pretrained=True):
    if pretrained:
        print("The backbone model loads the pretrained parameters...")
    net = resnet18(pretrained=pretrained)

    model_dict = net.state_dict()
    conv1 = model_dict['conv1.weight']
    new = torch.zeros(64, 1, 7, 7)
    for i, output_channel in enumerate(conv1):
        new[i] = 0.299 * output_channel[0] + 0.587 * output_channel[1] + 0.114 * output_channel[2]
    net.conv1 = nn.Conv2d(4, 64, kernel_size=(7, 7), stride=(2, 2), padding=3, bias=False)
    model_dict['conv1.weight'] = torch.cat((conv1, new), dim=1)
    net.load_state_dict(model_dict)

    div_1 = nn.Sequential(*list(net.children())[:1])
    div_2 = nn.Sequential(*list(net.children())[1:3])
    div_4 = nn.Sequential(*list(net.children())[3:5])
    div_8 = net.layer2
    div_16 = net.layer3
    # div_32 = make_layer_4(BasicBlock, 448, 2, stride=2)
    div_32 = net.layer4
    return div_1, div_2, div_4, div_8, div_16, div_32



def pretrained_resnet18_4ch(pretrained=True, weight_path=None, **kwargs):
    model = ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)
    model.conv1 = nn.Conv2d(4, 64, kernel_size=(7, 7), stride=(2, 2), padding=3, bias=False)
    
    if pretrained:
        # load the pretrained binary classification model for slow object placement assessment (SOPA)
        # checkpoint = torch.load('./pretrained_models/SOPA.pth.tar')
        current_directory = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        checkpoint = torch.load(weight_path)
        model.load_state_dict(checkpoint['state_dict'], strict=False)

    return model


# ---- libcom/fopa_heat_map/source/network/BaseBlocks.py (libcom @ fe5b5b1) ----
class BasicConv2d(nn.Module):
    def __init__(
        self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=False,
    ):
        super(BasicConv2d, self).__init__()

        self.basicconv = nn.Sequential(
            nn.Conv2d(
                in_planes,
                out_planes,
                kernel_size=kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=bias,
            ),
            nn.BatchNorm2d(out_planes),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.basicconv(x)


# ---- libcom/fopa_heat_map/source/network/DynamicModules.py (libcom @ fe5b5b1) ----
class simpleDFN(nn.Module):
    def __init__(self, in_xC, in_yC, out_C, kernel_size=3, down_factor=4):
        """use nn.Unfold to realize dynamic convolution

        Args:
            in_xC (int): channel number of first input
            in_yC (int): channel number of second input
            out_C (int): channel number of output
            kernel_size (int): the size of generated conv kernel
            down_factor (int): reduce the model parameters when generating conv kernel
        """
        super(simpleDFN, self).__init__()
        self.kernel_size = kernel_size
        self.fuse = nn.Conv2d(in_xC, out_C, 3, 1, 1)
        self.out_C = out_C
        self.gernerate_kernel = nn.Sequential(
            # nn.Conv2d(in_yC, in_yC, 3, 1, 1),
            # DenseLayer(in_yC, in_yC, k=down_factor),
            nn.Conv2d(in_yC, in_xC, 1),
        )
        self.unfold = nn.Unfold(kernel_size=3, dilation=1, padding=1, stride=1)
        self.pool = nn.AdaptiveAvgPool2d(self.kernel_size)
        self.in_planes = in_yC

    def forward(self, x, y):  # x:bg y:fg
        kernel = self.gernerate_kernel(self.pool(y))
        batch_size, in_planes, height, width = x.size()
        x = x.view(1, -1, height, width)
        kernel = kernel.view(-1, 1, self.kernel_size, self.kernel_size)
        if self.kernel_size == 3:
            output = F.conv2d(x, kernel, bias=None, stride=1, padding=1, groups=self.in_planes * batch_size)
        elif self.kernel_size == 1:
            output = F.conv2d(x, kernel, bias=None, stride=1, padding=0, groups=self.in_planes * batch_size)
        elif self.kernel_size == 5:
            output = F.conv2d(x, kernel, bias=None, stride=1, padding=2, groups=self.in_planes * batch_size)
        else:
            output = F.conv2d(x, kernel, bias=None, stride=1, padding=3, groups=self.in_planes * batch_size)
        output = output.view(batch_size, -1, height, width)
        return self.fuse(output)


# ---- libcom/fopa_heat_map/source/network/tensor_ops.py (libcom @ fe5b5b1) ----
def cus_sample(feat, **kwargs):
    assert len(kwargs.keys()) == 1 and list(kwargs.keys())[0] in ["size", "scale_factor"]
    return F.interpolate(feat, mode="bilinear", align_corners=True,**kwargs)


def upsample_add(*xs):
    y = xs[-1]
    for x in xs[:-1]:
        y = y + F.interpolate(x, size=y.size()[2:], mode="bilinear", align_corners=False)
    return y


def upsample_cat(*xs):
    y = xs[-1]
    out = []
    for x in xs[:-1]:
        out.append(F.interpolate(x, size=y.size()[2:], mode="bilinear", align_corners=False))
    return torch.cat([out, y], dim=1)


def upsample_reduce(b, a):
    _, C, _, _ = b.size()
    N, _, H, W = a.size()

    b = F.interpolate(b, size=(H, W), mode="bilinear", align_corners=False)
    a = a.reshape(N, -1, C, H, W).mean(1)

    return b + a


def shuffle_channels(x, groups):
    N, C, H, W = x.size()
    x = x.reshape(N, groups, C // groups, H, W).permute(0, 2, 1, 3, 4)
    return x.reshape(N, C, H, W)


# ---- libcom/fopa_heat_map/source/network/ObPlaNet_simple.py (libcom @ fe5b5b1) ----
class ObPlaNet_resnet18(nn.Module):
    def __init__(self, pretrained=True, ks=3, scale=3, weight_path=None):
        super(ObPlaNet_resnet18, self).__init__()
        self.Eiters = 0
        self.upsample_add = upsample_add
        self.upsample = cus_sample
        self.to_pil = transforms.ToPILImage()
        self.scale = scale

        self.add_mask = True

        (
            self.bg_encoder1,
            self.bg_encoder2,
            self.bg_encoder4,
            self.bg_encoder8,
            self.bg_encoder16,
        ) = Backbone_ResNet18_in3(pretrained, weight_path)
        
        # freeze background encoder
        for p in self.parameters():
            p.requires_grad = False

        (
            self.fg_encoder1,
            self.fg_encoder2,
            self.fg_encoder4,
            self.fg_encoder8,
            self.fg_encoder16,
            self.fg_encoder32,
        ) = Backbone_ResNet18_in3_1(pretrained=pretrained)

        if self.add_mask:
            self.mask_conv = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)

        # dynamic conv
        self.fg_trans16 = nn.Conv2d(512, 64, 1)
        self.fg_trans8 = nn.Conv2d(256, 64, 1)
        self.selfdc_16 = simpleDFN(64, 64, 512, ks, 4)
        self.selfdc_8 = simpleDFN(64, 64, 512, ks, 4)

        self.upconv16 = BasicConv2d(512, 256, kernel_size=3, stride=1, padding=1)
        self.upconv8 = BasicConv2d(256, 128, kernel_size=3, stride=1, padding=1)
        self.upconv4 = BasicConv2d(128, 64, kernel_size=3, stride=1, padding=1)
        self.upconv2 = BasicConv2d(64, 64, kernel_size=3, stride=1, padding=1)
        self.upconv1 = BasicConv2d(64, 64, kernel_size=3, stride=1, padding=1)

        self.classifier = nn.Conv2d(512, 2, 1)

    def forward(self, bg_in_data, fg_in_data, mask_in_data=None, mode='test'):
        """
        Args:
            bg_in_data: (batch_size * 3 * H * W) background image
            fg_in_data: (batch_size * 3 * H * W) scaled foreground image
            mask_in_data: (batch_size * 1 * H * W) scaled foreground mask
            mode: "train" or "test"
        """
        if ('train' == mode):
            self.Eiters += 1
            
        # extract background and foreground features
        black_mask = torch.zeros(mask_in_data.size()).to(mask_in_data.device)
        bg_in_data_ = torch.cat([bg_in_data, black_mask], dim=1)
        bg_in_data_1 = self.bg_encoder1(bg_in_data_)  # torch.Size([2, 64, 128, 128])
        fg_cat_mask = torch.cat([fg_in_data, mask_in_data], dim=1)
        fg_in_data_1 = self.fg_encoder1(fg_cat_mask)  # torch.Size([2, 64, 128, 128])
  

        bg_in_data_2 = self.bg_encoder2(bg_in_data_1)  # torch.Size([2, 64, 64, 64])
        fg_in_data_2 = self.fg_encoder2(fg_in_data_1)  # torch.Size([2, 64, 128, 128])
        bg_in_data_4 = self.bg_encoder4(bg_in_data_2)  # torch.Size([2, 128, 32, 32])
        fg_in_data_4 = self.fg_encoder4(fg_in_data_2)  # torch.Size([2, 64, 64, 64])
        del fg_in_data_1, fg_in_data_2

        bg_in_data_8 = self.bg_encoder8(bg_in_data_4)  # torch.Size([2, 256, 16, 16])
        fg_in_data_8 = self.fg_encoder8(fg_in_data_4)  # torch.Size([2, 128, 32, 32])
        bg_in_data_16 = self.bg_encoder16(bg_in_data_8)  # torch.Size([2, 512, 8, 8])
        fg_in_data_16 = self.fg_encoder16(fg_in_data_8)  # torch.Size([2, 256, 16, 16])
        fg_in_data_32 = self.fg_encoder32(fg_in_data_16)  # torch.Size([2, 512, 8, 8])

        in_data_8_aux = self.fg_trans8(fg_in_data_16)  # torch.Size([2, 64, 16, 16])
        in_data_16_aux = self.fg_trans16(fg_in_data_32)  # torch.Size([2, 64, 8, 8])

        # Unet decoder
        bg_out_data_16 = bg_in_data_16  # torch.Size([2, 512, 8, 8])

        bg_out_data_8 = self.upsample_add(self.upconv16(bg_out_data_16), bg_in_data_8)  # torch.Size([2, 256, 16, 16])
        bg_out_data_4 = self.upsample_add(self.upconv8(bg_out_data_8), bg_in_data_4)  # torch.Size([2, 128, 32, 32])
        bg_out_data_2 = self.upsample_add(self.upconv4(bg_out_data_4), bg_in_data_2)  # torch.Size([2, 64, 64, 64])
        bg_out_data_1 = self.upsample_add(self.upconv2(bg_out_data_2), bg_in_data_1)  # torch.Size([2, 64, 128, 128])
        del bg_out_data_2, bg_out_data_4, bg_out_data_8, bg_out_data_16

        bg_out_data = self.upconv1(self.upsample(bg_out_data_1, scale_factor=2))  # torch.Size([2, 64, 256, 256])

        # fuse foreground and background features using dynamic conv
        fuse_out = self.upsample_add(self.selfdc_16(bg_out_data_1, in_data_8_aux), \
                                     self.selfdc_8(bg_out_data, in_data_16_aux))  # torch.Size([2, 64, 256, 256])

        out_data = self.classifier(fuse_out)  # torch.Size([2, 2, 256, 256])

        return out_data, fuse_out


# ---- libcom/fopa_heat_map/source/data/all_transforms.py (libcom @ fe5b5b1) ----
class JointResize(object):
    def __init__(self, size):
        if isinstance(size, int):
            self.size = (size, size)
        elif isinstance(size, tuple):
            self.size = size
        else:
            raise RuntimeError("size should be int or tuple")

    def __call__(self, bg, fg, mask):
        bg = bg.resize(self.size, Image.BILINEAR)
        fg = fg.resize(self.size, Image.BILINEAR)
        mask = mask.resize(self.size, Image.NEAREST)
        return bg, fg, mask

class Compose(object):
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, bg, fg, mask):
        for t in self.transforms:
            bg, fg, mask = t(bg, fg, mask)
        return bg, fg, mask


# ---- libcom/fopa_heat_map/source/data/OBdataset.py (libcom @ fe5b5b1) make_composite_PIL only ----
def make_composite_PIL(fg_img, mask_img, bg_img, pos, return_mask=False):
    x, y, w, h = pos
    bg_h = bg_img.height
    bg_w = bg_img.width
  
    top = max(y, 0)
    bottom = min(y + h, bg_h)
    left = max(x, 0)
    right = min(x + w, bg_w)
    fg_img_ = fg_img.resize((w,h))
    mask_img_ = mask_img.resize((w,h))
    
    fg_img_ = np.array(fg_img_)
    mask_img_ = np.array(mask_img_, dtype=np.float64)/255
    bg_img = np.array(bg_img)
    
    fg_img = np.zeros((bg_h, bg_w, 3), dtype=np.uint8) 
    mask_img  = np.zeros((bg_h, bg_w, 3), dtype=np.float64) 
    
    fg_img[top:bottom, left:right, :] = fg_img_[top - y:bottom - y, left - x:right - x, :]
    mask_img[top:bottom, left:right, :] = mask_img_[top - y:bottom - y, left - x:right - x, :]
    composite_img = fg_img * mask_img + bg_img * (1 - mask_img)
    
    
    composite_img = Image.fromarray(composite_img.astype(np.uint8))
    if return_mask==False:
        return composite_img
    else:
        composite_msk = Image.fromarray((mask_img*255).astype(np.uint8))
        return composite_img, composite_msk


# ---- libcom/utils/process_image.py (libcom @ fe5b5b1) the readers only ----
def opencv_to_pil(input):
    return Image.fromarray(cv2.cvtColor(input, cv2.COLOR_BGR2RGB))

def pil_to_opencv(input):
    return cv2.cvtColor(np.asarray(input), cv2.COLOR_RGB2BGR)

def read_image_opencv(input):
    if isinstance(input, str):
        assert os.path.exists(input), input
        input = cv2.imread(input, cv2.IMREAD_COLOR)        
    elif isinstance(input, Image.Image):
        input = pil_to_opencv(input)
    return input

def read_mask_opencv(input):
    if isinstance(input, str):
        assert os.path.exists(input), input
        input = cv2.imread(input, cv2.IMREAD_GRAYSCALE)        
    elif isinstance(input, Image.Image):
        input = np.asarray(input)
    return input

def read_image_pil(input):
    if isinstance(input, str):
        assert os.path.exists(input), input
        input = Image.open(input).convert('RGB')
    elif isinstance(input, np.ndarray):
        input = opencv_to_pil(input)
    return input    

def read_mask_pil(input):
    if isinstance(input, str):
        assert os.path.exists(input), input
        input = Image.open(input).convert('L')
    elif isinstance(input, np.ndarray):
        input = Image.fromarray(input).convert('L')
    return input


# ---- libcom/fopa_heat_map/source/prepare_multi_fg_scales.py (libcom @ fe5b5b1) ----
fg_scale_num = 16

def fill_image_by_mask(image, mask, fill_pixel=0, thresh=127):
    image = np.asarray(image).copy()
    mask  = np.asarray(mask)
    fill_img = (np.ones_like(image) * fill_pixel).astype(np.uint8)
    image = np.where(mask > thresh, image, fill_img)
    return Image.fromarray(image)

def prepare_multi_fg_scales(cache_dir,fg_path,mask_path,bg_path,fg_scale_num):
    os.makedirs(cache_dir, exist_ok=True)
    fg_name   = os.path.splitext(os.path.basename(fg_path))[0]
    bg_name   = os.path.splitext(os.path.basename(bg_path))[0]
    fg_scales = list(range(1, fg_scale_num+1))
    fg_scales = [i/(1+fg_scale_num+1) for i in fg_scales]
    
    scaled_fg_dir   = os.path.join(cache_dir, f'fg_{fg_scale_num}scales')
    scaled_mask_dir = os.path.join(cache_dir, f'mask_{fg_scale_num}scales')    
    csv_file = os.path.join(cache_dir, f'{fg_scale_num}scales.csv')
    os.makedirs(scaled_fg_dir,   exist_ok=True)
    os.makedirs(scaled_mask_dir, exist_ok=True)

    file = open(csv_file, mode='w', newline='')
    writer = csv.writer(file)
    csv_head = ['fg_name', 'mask_name', 'bg_name', 'scale', 'newWidth', 'newHeight', 'pos_label', 'neg_label']
    writer.writerow(csv_head)

    bg_img = Image.open(bg_path).convert("RGB")  
    bg_img_aspect = bg_img.height / bg_img.width
    fg_tocp   = Image.open(fg_path).convert("RGB")
    mask_tocp = Image.open(mask_path).convert("RGB")
    fg_tocp   = fill_image_by_mask(fg_tocp, mask_tocp)
    fg_tocp_aspect = fg_tocp.height / fg_tocp.width
    
    for fg_scale in fg_scales:
        if fg_tocp_aspect > bg_img_aspect:
            new_height = int(bg_img.height * fg_scale)
            new_width  = int(new_height / fg_tocp.height * fg_tocp.width)
        else:
            new_width  = int(bg_img.width * fg_scale)
            new_height = int(new_width / fg_tocp.width * fg_tocp.height)
        
        top    = int((bg_img.height - new_height) / 2)
        bottom = top + new_height
        left   = int((bg_img.width - new_width) / 2)
        right  = left + new_width
        
        fg_img_ = np.asarray(fg_tocp.resize((new_width, new_height)))
        mask_   = np.asarray(mask_tocp.resize((new_width, new_height)))
        fg_img  = np.zeros((bg_img.height, bg_img.width, 3), dtype=np.uint8) 
        mask    = np.zeros((bg_img.height, bg_img.width, 3), dtype=np.uint8) 
        fg_img[top:bottom, left:right, :] = fg_img_
        mask[top:bottom, left:right, :] = mask_
        fg_img = Image.fromarray(fg_img.astype(np.uint8))
        mask = Image.fromarray(mask.astype(np.uint8))
        
        basename = f'{fg_name}_{bg_name}_{new_width}_{new_height}.jpg'
        fg_img_path = os.path.join(scaled_fg_dir, basename)
        mask_path = os.path.join(scaled_mask_dir, basename)
        fg_img.save(fg_img_path)
        mask.save(mask_path)
        writer.writerow([os.path.basename(fg_path), 
                         os.path.basename(mask_path), 
                         os.path.basename(bg_path), 
                         fg_scale, new_width, new_height, 
                         None, None])
    file.close()  
    csv_data = []
    with open(csv_file, mode='r') as file:
        reader = csv.DictReader(file)
        for row in reader:
            if row['pos_label']=="":
                row['pos_label'] = [[0,0]]
            if row['neg_label']=="":
                row['neg_label'] = [[0,0]]
            csv_data.append(row)
    return scaled_fg_dir, scaled_mask_dir, csv_file


# ---- libcom/fopa_heat_map/fopa_heat_map.py (libcom @ fe5b5b1) __init__ replaced and one line added, both marked CHANGED ----
class FOPAHeatMapModel:
    """
    Generate a heatmap for a pair of scaled foreground and background.

    Args:
        device (str | torch.device): gpu id
        model_type (str): predefined model type

    Examples:
        >>> test_set = get_test_list_fopa_heatmap()
        >>> result_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', task_name)
        >>> if os.path.exists(result_dir):
        >>>     shutil.rmtree(result_dir)
        >>> os.makedirs(result_dir, exist_ok=True)
        >>> os.makedirs(os.path.join(result_dir, 'grid'), exist_ok=True)
        >>> print(f'begin testing {task_name}...')
        >>> net = FOPAHeatMapModel(device=0)
        >>> for pair in test_set[:1]:
        >>>     fg_img, fg_mask, bg_img = pair['foreground'], pair['foreground_mask'], pair['background']
        >>>     bboxes, heatmaps = net(fg_img, fg_mask, bg_img, cache_dir=os.path.join(result_dir, 'cache'), heatmap_dir=os.path.join(result_dir, 'heatmap'))
        >>>     img_name  = os.path.basename(bg_img).replace('.png', '.jpg')
        >>>     grid_img  = make_image_grid([bg_img, fg_img, heatmaps[0]])
        >>>     res_path  = os.path.join(result_dir, 'grid', img_name)
        >>>     cv2.imwrite(res_path, grid_img)
        >>>     print('save result to ', res_path)
        >>> print(f'end testing {task_name}!') 

    Expected result:

    .. image:: _static/image/fopa_heatmap_FOPA_result1.png
        :scale: 72 %

    .. image:: _static/image/fopa_heatmap_FOPA_result3.png
        :scale: 52 %
        
    """
    def __init__(self, model, device="cpu"):  # CHANGED: takes a built ObPlaNet_resnet18 (no GPU check, no download)
        self.device = device
        self.model = model.to(device).eval()
        self.build_data_transformer()
        self.float_heatmaps = []  # CHANGED: the softmax maps before they are saved as JPEG

    def build_pretrained_model(self, sopa_weight, fopa_weight):
        model = getattr(network, "ObPlaNet_resnet18")(pretrained=False, weight_path=sopa_weight).to(self.device)
        model.load_state_dict(torch.load(fopa_weight, map_location='cpu'))
        self.model = model.to(self.device).eval()
        
    def build_data_transformer(self):
        self.triple_transform = Compose([JointResize(256)])
        self.image_transform = transforms.Compose(
            [transforms.ToTensor(),transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),]
        )
        self.mask_transform = transforms.ToTensor()
    
    def generate_heatmap(self, background_image, csv_path, scaled_fg_dir, scaled_mask_dir, heatmap_dir):
        os.makedirs(heatmap_dir, exist_ok=True)
        heatmap_list = []
        with open(csv_path, mode='r', newline='') as csv_file:
            csv_reader = csv.DictReader(csv_file)
            for row in csv_reader:
                fg_name   = '{}_{}_{}_{}.jpg'.format(row["fg_name"].split(".")[0],row["bg_name"].split(".")[0],int(row["newWidth"]),int(row["newHeight"]))
                mask_name = '{}_{}_{}_{}.jpg'.format(row["fg_name"].split(".")[0],row["bg_name"].split(".")[0],int(row["newWidth"]),int(row["newHeight"]))
                scale     = row['scale']
                save_name = fg_name.split(".")[0] + '_' + str(scale) + '.jpg'
                
                bg_img    = read_image_pil(background_image)
                fg_img    = read_image_pil(os.path.join(scaled_fg_dir, fg_name))
                mask      = read_mask_pil(os.path.join(scaled_mask_dir, mask_name))
                bg_t, fg_t, mask_t = self.triple_transform(bg_img, fg_img, mask)
                mask_t    = self.mask_transform(mask_t).to(self.device)
                fg_t      = self.image_transform(fg_t).to(self.device)
                bg_t      = self.image_transform(bg_t).to(self.device)
                
                outs, _   = self.model(bg_t.unsqueeze(0), fg_t.unsqueeze(0), mask_t.unsqueeze(0), 'test') 
                outs      = torch.softmax(outs, dim=1)[:,1,:,:]
                self.float_heatmaps.append(outs[0].cpu().numpy())  # CHANGED: keep the float map
                outs      = transforms.ToPILImage()(outs)
                out_file  = os.path.join(heatmap_dir, save_name)
                outs.save(out_file) 
                heatmap_list.append(out_file)
        return heatmap_list
    
    def generate_bounding_box(self, foreground_image, foreground_mask, background_image, csv_path,
                              cache_dir, heatmap_dir, fg_scale_num, composite_num_choose, composite_num):
        icount = 0
        with open(csv_path, mode='r', newline='') as csv_file:
            csv_reader = csv.DictReader(csv_file)
            for row in csv_reader:
                scale = row['scale']
                w = int(row['newWidth'])
                h = int(row['newHeight'])
                save_name = row['fg_name'].split(".")[0] + '_' + str(scale) + '.jpg'
                fg_name = '{}_{}_{}_{}.jpg'.format(row["fg_name"].split(".")[0],row["bg_name"].split(".")[0],int(row["newWidth"]),int(row["newHeight"]))
                save_name = fg_name.split(".")[0] + '_' + str(scale) + '.jpg'
            
                if icount == 0:
                    bg_img     = read_image_pil(background_image)  
                    fg_tocp    = read_image_pil(foreground_image)
                    mask_tocp  = read_image_pil(foreground_mask)
                    
                    composite_dir = os.path.join(cache_dir, f'{fg_scale_num}scales_composite', f'{row["fg_name"].split(".")[0]}_{row["bg_name"].split(".")[0]}')
                    os.makedirs(composite_dir, exist_ok=True)
                    heatmap_center_list = []
                    fg_size_list = []
                
                icount += 1
                heatmap = Image.open(os.path.join(heatmap_dir, save_name))
                heatmap = np.array(heatmap)
                heatmap_center = np.zeros_like(heatmap, dtype=np.float64)
                hb = int(h / bg_img.height * heatmap.shape[0] / 2)
                wb = int(w / bg_img.width  * heatmap.shape[1] / 2)
                heatmap_center[hb:-hb, wb:-wb] = heatmap[hb:-hb, wb:-wb]
                heatmap_center_list.append(heatmap_center)
                fg_size_list.append((h,w))
                
                if icount == fg_scale_num:
                    icount = 0
                    heatmap_center_stack = np.stack(heatmap_center_list)
                    sorted_indices = np.argsort(-heatmap_center_stack, axis=None)
                    sorted_indices = np.unravel_index(sorted_indices, heatmap_center_stack.shape)
                    
                    for i in range(composite_num):
                        iscale, y_, x_ = sorted_indices[0][i], sorted_indices[1][i], sorted_indices[2][i]
                        h, w = fg_size_list[iscale]
                        x_   = x_/heatmap.shape[1]*bg_img.width
                        y_   = y_/heatmap.shape[0]*bg_img.height
                        x    = int(x_ - w / 2)
                        y    = int(y_ - h / 2)

                        composite_img, composite_msk = make_composite_PIL(fg_tocp, mask_tocp, bg_img, [x, y, w, h], return_mask=True)
                        save_img_path = os.path.join(composite_dir, f'{row["fg_name"].split(".")[0]}_{row["bg_name"].split(".")[0]}_{x}_{y}_{w}_{h}.jpg')
                        save_msk_path = os.path.join(composite_dir, f'{row["fg_name"].split(".")[0]}_{row["bg_name"].split(".")[0]}_{x}_{y}_{w}_{h}.png')
                        composite_img.save(save_img_path)
                        composite_msk.save(save_msk_path)

        source_folder = composite_dir
        composite_dir_choose = os.path.join(cache_dir, f'{fg_scale_num}scales_composite_RandomSelect_{composite_num_choose}', f'{row["fg_name"].split(".")[0]}_{row["bg_name"].split(".")[0]}')
        os.makedirs(composite_dir_choose, exist_ok=True)
        
        bbox_list = []
        image_files = [f for f in os.listdir(composite_dir) if f.endswith((".jpg"))]
        selected_images = random.sample(image_files, composite_num_choose)
        for image in selected_images:
            source_path = os.path.join(source_folder, image)
            destination_path = os.path.join(composite_dir_choose, image)
            png_source_path = source_path.replace(".jpg", ".png")
            destination_path_png = os.path.join(composite_dir_choose, image.replace(".jpg", ".png"))
            shutil.copyfile(source_path, destination_path)
            shutil.copyfile(png_source_path, destination_path_png)
            bbox_list_parts = os.path.splitext(os.path.split(source_path)[1])[0].split('_')
            x_box, y_box, w_box, h_box = int(bbox_list_parts[2]), int(bbox_list_parts[3]), int(bbox_list_parts[4]), int(bbox_list_parts[5])
            last_four_numbers = [x_box, y_box, w_box, h_box]
            bbox_list.append(last_four_numbers)
        return bbox_list


    @torch.no_grad()
    def __call__(self, foreground_image, foreground_mask, background_image, cache_dir, heatmap_dir,
                 fg_scale_num=16, composite_num_choose=3, composite_num=50):
        """
        Generate a heatmap for a pair of scaled foreground and background.
        
        Args:
            foreground_image: foreground image path
            foreground_mask: foreground mask path
            background_image: background image path
            cache_dir: folder path where scaled foreground images, scaled mask images and composite images are stored
            heatmap_dir: folder path where heatmaps are stored
            fg_scale_num: number of scales of scaled foreground images and mask images
            composite_num_choose: the number of chosen composite images
            composite_num: the number of composite images with the highest score

        Returns:
            box_list: the path of concatenated background image, foreground image and corresponding heatmap
            heatmap_list: the path of heatmaps

        """
        scaled_fg_dir, scaled_mask_dir, csv_file = prepare_multi_fg_scales(cache_dir, foreground_image, foreground_mask, background_image, fg_scale_num)
        heatmap_list = self.generate_heatmap(background_image, csv_file, 
                                             scaled_fg_dir, scaled_mask_dir, heatmap_dir)
        box_list     = self.generate_bounding_box(foreground_image, foreground_mask, background_image, csv_file,
                                                  cache_dir, heatmap_dir, fg_scale_num, composite_num_choose, composite_num)
        return box_list, heatmap_list
