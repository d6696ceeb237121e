"""Reference GPT-2 byte-level BPE for tests/dataflow/gpt2_bpe_test.cc.

usage: gpt2_reference.py OUT_DIR   (reads test strings as a JSON list on stdin)
Trains a small BPE (300 merges) on a built-in corpus, writes OUT_DIR/vocab.json and
OUT_DIR/merges.txt in GPT-2's formats, and prints {"pieces": [...], "ids": [...]} per input.
Encoding follows GPT-2's published encoder.py, with the `regex` module it was written for.
"""
import collections
import json
import sys

import regex

PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


B2U = bytes_to_unicode()
CORPUS = (
    "the quick brown fox jumps over the lazy dog. The dog's owner said it's fine, they'll see. "
    "A photo of a red car parked near the river in 2023, with 42 people walking by. "
    "Les élèves étudient à l'école; café, naïve, Ångström. Привет мир. 中文的句子和图片。 "
    "emoji 😀🚀 and numbers 3.14159 1,000,000 and tabs\tand newlines\nand   spaces   ."
) * 3


def train(merges_wanted):
    words = collections.Counter(tuple(B2U[b] for b in w.encode("utf-8")) for w in PAT.findall(CORPUS))
    merges = []
    for _ in range(merges_wanted):
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        new = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    return merges


def bpe(token, ranks):
    word = tuple(token)
    while len(word) > 1:
        pairs = set(zip(word, word[1:]))
        bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if bigram not in ranks:
            break
        first, second = bigram
        new, i = [], 0
        while i < len(word):
            try:
                j = word.index(first, i)
            except ValueError:
                new.extend(word[i:])
                break
            new.extend(word[i:j])
            i = j
            if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                new.append(first + second)
                i += 2
            else:
                new.append(word[i])
                i += 1
        word = tuple(new)
    return word


def main():
    out_dir = sys.argv[1]
    merges = train(300)
    vocab = {}
    for ch in B2U.values():
        vocab[ch] = len(vocab)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    with open(out_dir + "/vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(out_dir + "/merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    ranks = {m: i for i, m in enumerate(merges)}
    results = []
    for text in json.load(sys.stdin):
        pieces = PAT.findall(text)
        ids = []
        for p in pieces:
            ids.extend(vocab[t] for t in bpe("".join(B2U[b] for b in p.encode("utf-8")), ranks))
        results.append({"pieces": pieces, "ids": ids})
    json.dump(results, sys.stdout, ensure_ascii=False)


main()
