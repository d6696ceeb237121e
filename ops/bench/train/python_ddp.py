#!/usr/bin/python3
"""The Python peer of ops/bench/train.sh: the same tiny vision-language model as vlorch's
(ViT -> Q-Former -> linear projector -> OPT, same sizes, same operations), trained with
PyTorch DistributedDataParallel over gloo, launched with torch.multiprocessing.spawn (Debian's
torchrun is broken on Python 3.11). Batches are made once up front with the shapes vlorch's
batches have, so the Python side pays no data loading at all.

usage: python_ddp.py CONFIG_JSON NP BATCH SEQ STEPS THREADS
prints: summary python_step_ms=<mean over steps after the first 3>
"""
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F


def attend(q, k, v, bias=None):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias
    return torch.softmax(s, -1) @ v


def split(x, h):
    n, l, d = x.shape
    return x.view(n, l, h, d // h).transpose(1, 2)


def merge(x):
    n, h, l, d = x.shape
    return x.transpose(1, 2).reshape(n, l, h * d)


class VisionLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.h = c["hidden"], c["heads"]
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(d))
        self.v_bias = nn.Parameter(torch.zeros(d))
        self.proj = nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(d, c["intermediate"]), nn.Linear(c["intermediate"], d)

    def forward(self, x):
        n, l, d = x.shape
        y = self.ln1(x)
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        m = F.linear(y, self.qkv.weight, bias).view(n, l, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        x = x + self.proj(merge(attend(m[0], m[1], m[2])))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Vision(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, p = c["hidden"], c["patch_size"]
        self.patch = nn.Conv2d(3, d, p, stride=p)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, (c["image_size"] // p) ** 2 + 1, d))
        self.layers = nn.ModuleList(VisionLayer(c) for _ in range(c["layers"]))
        self.post = nn.LayerNorm(d, eps=1e-6)

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for l in self.layers:
            x = l(x)
        return self.post(x)


class QAttn(nn.Module):
    def __init__(self, d, h, kv):
        super().__init__()
        self.h = h
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(kv, d), nn.Linear(kv, d)
        self.dense, self.ln = nn.Linear(d, d), nn.LayerNorm(d, eps=1e-12)

    def forward(self, x, kv):
        ctx = merge(attend(split(self.q(x), self.h), split(self.k(kv), self.h), split(self.v(kv), self.h)))
        return self.ln(self.dense(ctx) + x)


class QLayer(nn.Module):
    def __init__(self, c, vd, cross):
        super().__init__()
        d = c["hidden"]
        self.attn = QAttn(d, c["heads"], d)
        self.cross = QAttn(d, c["heads"], vd) if cross else None
        self.fc1, self.fc2 = nn.Linear(d, c["intermediate"]), nn.Linear(c["intermediate"], d)
        self.ln = nn.LayerNorm(d, eps=1e-12)

    def forward(self, x, img):
        h = self.attn(x, x)
        if self.cross is not None:
            h = self.cross(h, img)
        return self.ln(self.fc2(F.gelu(self.fc1(h))) + h)


class OptLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.h = c["hidden"], c["heads"]
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, c["intermediate"]), nn.Linear(c["intermediate"], d)

    def forward(self, x, bias):
        y = self.ln1(x)
        x = x + self.o(merge(attend(split(self.q(y), self.h), split(self.k(y), self.h), split(self.v(y), self.h), bias)))
        return x + self.fc2(F.relu(self.fc1(self.ln2(x))))


class VLModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        v, q, l = cfg["vision"], cfg["qformer"], cfg["llm"]
        self.vision = Vision(v)
        self.query_tokens = nn.Parameter(torch.zeros(1, q["num_queries"], q["hidden"]))
        self.qln = nn.LayerNorm(q["hidden"], eps=1e-12)
        self.qlayers = nn.ModuleList(QLayer(q, v["hidden"], i % 2 == 0) for i in range(q["layers"]))
        self.proj = nn.Linear(q["hidden"], l["hidden"])
        self.embed = nn.Embedding(l["vocab_size"], l["hidden"])
        self.pos = nn.Embedding(l["max_positions"] + 2, l["hidden"])
        self.layers = nn.ModuleList(OptLayer(l) for _ in range(l["layers"]))
        self.final = nn.LayerNorm(l["hidden"])
        for n, p in sorted(self.named_parameters()):
            with torch.no_grad():
                if p.dim() == 1:
                    p.fill_(1.0 if ("ln" in n or "post" in n or "final" in n) and n.endswith("weight") else 0.0)
                else:
                    p.normal_(0, 0.02)

    def forward(self, ids, mask, labels, images, nq):
        feats = self.vision(images)
        h = self.qln(self.query_tokens.expand(images.shape[0], -1, -1))
        for l in self.qlayers:
            h = l(h, feats)
        vis = self.proj(h)
        emb = self.embed(ids)
        emb = torch.cat([emb[:, :1], vis, emb[:, 1 + nq:]], 1)  # visual tokens after BOS
        pos = (mask.cumsum(1) * mask) - 1 + 2
        x = emb + self.pos(pos)
        L = ids.shape[1]
        allowed = torch.ones(L, L, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
        bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        for l in self.layers:
            x = l(x, bias)
        logits = self.final(x) @ self.embed.weight.t()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=-100)


def worker(rank, cfg, np_, batch, seq, steps, threads, port):
    torch.set_num_threads(threads)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=np_)
    torch.manual_seed(1234)
    model = torch.nn.parallel.DistributedDataParallel(VLModel(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    nq, size, vocab = cfg["qformer"]["num_queries"], cfg["vision"]["image_size"], cfg["llm"]["vocab_size"]
    g = torch.Generator().manual_seed(rank)
    batches = []
    for _ in range(4):
        ids = torch.randint(3, vocab, (batch, seq), generator=g)
        labels = ids.clone()
        labels[:, : 1 + nq] = -100
        batches.append((ids, torch.ones(batch, seq, dtype=torch.long), labels, torch.randn(batch, 3, size, size, generator=g)))
    times = []
    for s in range(steps):
        t0 = time.perf_counter()
        ids, mask, labels, img = batches[s % len(batches)]
        loss = model(ids, mask, labels, img, nq)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        l = loss.detach().clone()
        dist.all_reduce(l)  # the loss vlorch logs is averaged over dp too
        times.append(time.perf_counter() - t0)
    if rank == 0:
        warm = times[3:]
        print(f"python DDP (gloo) np={np_}: {len(warm)} steps, mean {1e3 * sum(warm) / len(warm):.2f} ms/step")
        print(f"summary python_step_ms={1e3 * sum(warm) / len(warm):.3f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    cfg = json.loads(open(sys.argv[1]).read())
    np_, batch, seq, steps, threads = (int(a) for a in sys.argv[2:7])
    port = 29500 + os.getpid() % 1000
    mp.spawn(worker, args=(cfg, np_, batch, seq, steps, threads, port), nprocs=np_, join=True)
