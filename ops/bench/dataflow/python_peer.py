"""Python peer of bench_dataflow: torch DataLoader + PIL + torchvision CLIP transform.

usage: python_peer.py IMAGES_DIR CHAT_JSON WORKERS BATCH SAMPLES
Same images (files in the CC595K images/ folder), same output (float [B,3,224,224] and
byte-level token ids), same number of worker processes, one torch thread each.
"""
import json
import sys
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

images_dir, chat_json, workers, batch, samples = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
T = transforms.Compose([
    transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
])
records = json.load(open(chat_json))


class CC(Dataset):
    def __len__(self):
        return len(records)

    def __getitem__(self, i):
        r = records[i]
        img = T(Image.open(f"{images_dir}/{r['image']}").convert("RGB"))
        ids = torch.tensor(list(r["conversations"][1]["value"].encode("utf-8")), dtype=torch.long)
        return img, ids


def collate(items):
    imgs = torch.stack([i for i, _ in items])
    ids = torch.nn.utils.rnn.pad_sequence([t for _, t in items], batch_first=True)
    return imgs, ids


loader = DataLoader(CC(), batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate,
                    worker_init_fn=lambda _: torch.set_num_threads(1), prefetch_factor=4)
got, t0 = 0, None
for imgs, ids in loader:
    if t0 is None:
        t0 = time.perf_counter()  # exclude worker start-up, as vlorch's pipeline opens before timing
        continue
    got += imgs.shape[0]
    if got >= samples:
        break
sps = got / (time.perf_counter() - t0)
print(f"python DataLoader (PIL + torchvision): {got} samples, {workers} workers, batch {batch}: {sps:.0f} samples/s")
print(f"summary python_sps={sps:.1f}")
