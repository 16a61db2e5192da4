"""Text to token ids for the workloads.

`BPETokenizer` is GPT-2-style byte-level BPE read from a GGUF file's vocabulary and merges
(SmolLM2 ships one), so the real model needs nothing but its GGUF file. `ByteTokenizer` maps
UTF-8 bytes onto a random-weight model's vocabulary, for serving seeded models."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

# GPT-2's pre-tokenizer, with Python `re` classes standing in for \p{L} and \p{N}; digits are
# split one by one, as SmolLM2's pre-tokenizer does.
_PRETOKEN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d|\d| ?[^\s\w]+|\s+(?!\S)|\s+""")


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes = visible[:]
    n = 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            codes.append(256 + n)
            n += 1
    return dict(zip(visible, map(chr, codes)))


class BPETokenizer:
    def __init__(self, tokens: list[str], merges: list[str], special: set[str], bos_id: int | None,
                 eos_id: int | None):
        self.id_of = {t: i for i, t in enumerate(tokens)}
        self.tokens = tokens
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.bos_id, self.eos_id = bos_id, eos_id
        self.special = special
        self._special_re = re.compile("(" + "|".join(re.escape(s) for s in sorted(special, key=len, reverse=True)) + ")") \
            if special else None
        self._byte_enc = _bytes_to_unicode()
        self._byte_dec = {c: b for b, c in self._byte_enc.items()}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_gguf(cls, path: str | Path | None = None) -> BPETokenizer:
        import gguf

        from optimizer.model import smollm2_gguf_path

        reader = gguf.GGUFReader(str(path or smollm2_gguf_path()))
        fields = reader.fields
        tokens = [str(bytes(fields["tokenizer.ggml.tokens"].parts[i]), "utf-8")
                  for i in fields["tokenizer.ggml.tokens"].data]
        merges = [str(bytes(fields["tokenizer.ggml.merges"].parts[i]), "utf-8")
                  for i in fields["tokenizer.ggml.merges"].data]
        types = [int(fields["tokenizer.ggml.token_type"].parts[i][0])
                 for i in fields["tokenizer.ggml.token_type"].data]
        special = {t for t, kind in zip(tokens, types) if kind == 3}  # CONTROL tokens

        def field_int(key: str) -> int | None:
            return int(fields[key].contents()) if key in fields else None

        return cls(tokens, merges, special, field_int("tokenizer.ggml.bos_token_id"),
                   field_int("tokenizer.ggml.eos_token_id"))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def _bpe(self, word: str) -> list[int]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids = [self.id_of[p] for p in parts]
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        chunks = self._special_re.split(text) if self._special_re else [text]
        for chunk in chunks:
            if chunk in self.special:
                ids.append(self.id_of[chunk])
                continue
            for piece in _PRETOKEN.findall(chunk):
                ids.extend(self._bpe("".join(self._byte_enc[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids: list[int]) -> str:
        out = bytearray()
        for i in ids:
            tok = self.tokens[i]
            if tok in self.special:
                out.extend(tok.encode("utf-8"))
            else:
                out.extend(self._byte_dec.get(c, ord("?")) for c in tok)
        return out.decode("utf-8", errors="replace")


class ByteTokenizer:
    """UTF-8 bytes as token ids (ids >= 256 decode to nothing): for random-weight models."""

    bos_id = None
    eos_id = None

    def __init__(self, vocab_size: int):
        if vocab_size < 256:
            raise ValueError("a byte tokenizer needs a vocabulary of at least 256")
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
