"""torchvision's CLIP preprocessing, the reference for tests/dataflow/image_test.cc.

usage: clip_reference.py SIZE OUT.f32 IMAGE...   writes float32 [n, 3, SIZE, SIZE]
Runs with Debian's /usr/bin/python3 (python3-torch, python3-torchvision, python3-pil).
"""
import sys

import numpy as np
from PIL import Image
from torchvision import transforms

size = int(sys.argv[1])
t = transforms.Compose([
    transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
    transforms.CenterCrop(size),
    transforms.ToTensor(),
    transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
])
out = [t(Image.open(p).convert("RGB")).numpy() for p in sys.argv[3:]]
np.stack(out).astype(np.float32).tofile(sys.argv[2])
