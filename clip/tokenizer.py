"""CLIP's byte-level BPE tokenizer and ComfyUI's prompt syntax (weights, 77-token chunks, embeddings).

Two layers, each usable alone:

1. `BPETokenizer`: text -> BPE ids, the tokenizer of Radford et al. 2021, "Learning Transferable
   Visual Models From Natural Language Supervision" (arXiv:2103.00020), as OpenAI's
   `clip/simple_tokenizer.py` defines it and as `transformers.CLIPTokenizer` runs it, which is what
   ComfyUI calls (`comfy/sd1_clip.py`, `SDTokenizer`). It reads the `vocab.json` + `merges.txt` pair
   that ComfyUI ships in `comfy/sd1_tokenizer/` (`find_tokenizer_dir`). Normalisation follows
   transformers' path without `ftfy` (ComfyUI does not depend on it): control characters dropped,
   whitespace collapsed, CJK ideographs split apart, NFC, lower case. With `ftfy` installed,
   transformers would instead run `ftfy.fix_text`, which differs only on mojibake/HTML entities.
2. `tokenize_prompt`: ComfyUI's prompt language on top (`token_weights`, `parse_parentheses`,
   `escape_important`, `SDTokenizer.tokenize_with_weights`): `(text)` multiplies the weight by 1.1,
   `(text:1.3)` sets it, nesting multiplies, `\\(` and `\\)` are literal brackets; `[text]` is NOT
   special in ComfyUI (kept as text, weight unchanged); `embedding:name` inserts textual-inversion
   vectors; the result is split into chunks of BOS + 75 + EOS, padded to 77.
"""
from __future__ import annotations

import json
import logging
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Union

import torch

BOS, EOS = 49406, 49407  # <|startoftext|>, <|endoftext|> in CLIP's vocabulary
SPECIAL_TOKENS = {"<|startoftext|>": BOS, "<|endoftext|>": EOS}
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def find_tokenizer_dir(comfyui_dir: str | Path) -> Path:
    """The folder with CLIP's `vocab.json` and `merges.txt` inside a ComfyUI checkout."""
    folder = Path(comfyui_dir) / "comfy" / "sd1_tokenizer"
    if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        raise FileNotFoundError(f"no CLIP tokenizer (vocab.json, merges.txt) in {folder}")
    return folder


# ----------------------------------------------------------------------------------------------
# 1. Byte-level BPE
# ----------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to
    themselves, the other 68 bytes to U+0100.. in order, so BPE never sees whitespace/control."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _is_chinese_char(cp: int) -> bool:
    """CJK Unified Ideographs blocks, which BERT-style normalisation splits into single characters."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def normalize(text: str) -> str:
    """transformers' `BasicTokenizer(strip_accents=False, do_split_on_punc=False)` joined by spaces."""
    out = []
    for ch in text:
        cp = ord(ch)
        cat = unicodedata.category(ch)
        if ch in " \t\n\r" or cat == "Zs":
            out.append(" ")
        elif cp == 0 or cp == 0xFFFD or cat.startswith("C"):
            continue  # control / format characters are dropped
        elif _is_chinese_char(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    words = unicodedata.normalize("NFC", "".join(out)).split()
    return " ".join(w.lower() for w in words)


def _letter(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "L"


def _number(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "N"


def pre_tokenize(text: str) -> list[str]:
    """Split normalised text the way CLIP's regex does, alternatives tried in order at each position:
    `'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+` (a digit is always its own piece)."""
    pieces, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        contraction = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
        if contraction:
            j = i + len(contraction)
        elif _letter(ch):
            j = i + 1
            while j < n and _letter(text[j]):
                j += 1
        elif _number(ch):
            j = i + 1
        else:
            j = i + 1
            while j < n and not (text[j].isspace() or _letter(text[j]) or _number(text[j])):
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


class BPETokenizer:
    """Byte-level BPE with CLIP's end-of-word marker `</w>` (Sennrich et al. 2016, arXiv:1508.07909).

    A word is turned into bytes, each byte into a printable character, the last one marked with `</w>`;
    then the adjacent pair with the lowest merge rank is merged, everywhere in the word, until no pair
    has a rank. Each resulting symbol is looked up in the vocabulary.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self.vocab = vocab
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_char = bytes_to_unicode()
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_dir(cls, folder: str | Path) -> "BPETokenizer":
        folder = Path(folder)
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").strip().split("\n")
        # line 0 is "#version: 0.2"; CLIP uses the first 49152 - 256 - 2 merges (vocab = 256 bytes x 2
        # (with and without </w>) + merges + 2 specials = 49408).
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        return cls(vocab, merges)

    def bpe(self, word: str) -> list[str]:
        symbols = [self.byte_char[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):  # left to right, non-overlapping
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _word_ids(self, word: str) -> list[int]:
        if word not in self._cache:
            self._cache[word] = [self.vocab.get(s, EOS) for s in self.bpe(word)]  # unknown -> <|endoftext|>
        return self._cache[word]

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without BOS/EOS. The literal strings `<|startoftext|>`/`<|endoftext|>` become
        their special ids (transformers treats them as added tokens, matched before normalisation)."""
        ids: list[int] = []
        for part, special in _split_specials(text):
            if special:
                ids.append(SPECIAL_TOKENS[part])
            else:
                for word in pre_tokenize(normalize(part)):
                    ids.extend(self._word_ids(word))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Ids back to text; word ends (`</w>`) become spaces, as in CLIP's own decoder."""
        char_byte = {c: b for b, c in self.byte_char.items()}
        text = "".join(self.id_to_token[i] for i in ids).replace("</w>", " ")
        return bytearray(ord(" ") if c == " " else char_byte[c] for c in text).decode("utf-8", errors="replace").strip()


def _split_specials(text: str) -> list[tuple[str, bool]]:
    out, i = [], 0
    while True:
        hits = [(text.find(s, i), s) for s in SPECIAL_TOKENS if text.find(s, i) >= 0]
        if not hits:
            out.append((text[i:], False))
            return out
        at, s = min(hits)
        out += [(text[i:at], False), (s, True)]
        i = at + len(s)


# ----------------------------------------------------------------------------------------------
# 2. ComfyUI's prompt syntax
# ----------------------------------------------------------------------------------------------

Token = Union[int, torch.Tensor]  # a vocabulary id, or one textual-inversion vector [dim]
Chunk = list[tuple[Token, float]]  # exactly `max_length` (token, weight) pairs
EmbeddingLookup = Callable[[str], "torch.Tensor | None"]  # name -> [n, dim] (or [dim]) or None

_ESCAPES = {"\\)": "\0\1", "\\(": "\0\2"}  # ComfyUI's placeholders for escaped brackets


def escape_brackets(text: str) -> str:
    for literal, placeholder in _ESCAPES.items():
        text = text.replace(literal, placeholder)
    return text


def unescape_brackets(text: str) -> str:
    return text.replace("\0\1", ")").replace("\0\2", "(")


def split_parentheses(text: str) -> list[str]:
    """Top-level pieces: each outermost `( ... )` group (brackets kept) and the text between.
    An unmatched `)` sends the depth negative, so brackets after it are plain text too (as in ComfyUI)."""
    pieces, current, depth = [], "", 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = ""
            current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


FLOAT32_MAX = 3.4028234663852886e38  # the encoder computes in float32 (or narrower): larger weights become inf


class PromptWeightError(ValueError):
    """A `(text:weight)` whose weight is NaN, infinite or beyond float32 (the conditioning would be NaN/inf)."""


def check_weight(weight: float, piece: str) -> None:
    if not (abs(weight) <= FLOAT32_MAX):  # also catches NaN
        raise PromptWeightError(f"prompt weight {weight!r} in {piece[:80]!r} is not a finite float32 number; "
                                f"use a weight between -{FLOAT32_MAX:.3g} and {FLOAT32_MAX:.3g} (usually 0.5 to 1.5)")


def parse_weights(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """(segment, weight) pairs: `(x)` multiplies by 1.1, `(x:w)` sets w (when w parses as a float)."""
    out = []
    for piece in split_parentheses(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner, inner_weight = piece[1:-1], weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass
                else:
                    check_weight(inner_weight, piece)
            out += parse_weights(inner, inner_weight)
        else:
            out.append((piece, weight))
    return out


EMBEDDING_PREFIX = "embedding:"


def _split_embeddings(segment: str) -> list[str]:
    """`embedding:` starts a new word only at the segment start or after a space/newline."""
    parts, rest = [], segment
    while True:
        cuts = [i for i in (rest.find(" " + EMBEDDING_PREFIX), rest.find("\n" + EMBEDDING_PREFIX)) if i >= 0]
        if not cuts:
            parts.append(rest)
            return [p for p in parts if p]
        cut = min(cuts)
        parts.append(rest[:cut])
        rest = rest[cut + 1 :]


def _resolve_embedding(name: str, lookup: EmbeddingLookup) -> tuple["torch.Tensor | None", str]:
    """(vectors, leftover text) for `embedding:name rest`; a trailing comma may belong to the text."""
    words = name.split()
    if not words:
        return None, ""
    first, leftover = words[0], " ".join(words[1:])
    vectors = lookup(first)
    if vectors is None:
        stripped = first.strip(",")
        if len(stripped) < len(first):
            return lookup(stripped), f"{first[len(stripped):]} {leftover}"
    return vectors, leftover


@dataclass(frozen=True)
class ChunkSpec:
    """How one text encoder wants its chunks: length, special ids, padding id.

    ComfyUI pads SD1's CLIP-L with EOS and OpenCLIP (SD2's ViT-H, SDXL's bigG) with 0."""

    pad: int
    length: int = 77
    bos: int = BOS
    eos: int = EOS
    max_word_length: int = 8  # segments this long may be split across chunks; shorter ones move whole


SD1_CHUNKS = ChunkSpec(pad=EOS)
OPENCLIP_CHUNKS = ChunkSpec(pad=0)


def tokenize_prompt(
    text: str,
    bpe: BPETokenizer,
    spec: ChunkSpec = SD1_CHUNKS,
    embedding_lookup: EmbeddingLookup | None = None,
    parse_prompt_weights: bool = True,
) -> list[Chunk]:
    """Prompt -> chunks of (token, weight), as ComfyUI's `SDTokenizer.tokenize_with_weights` gives.

    Each weighted segment (and each embedding) is tokenized on its own, so a bracket also ends a BPE
    word. A segment of fewer than `max_word_length` tokens that does not fit into the current chunk
    starts the next one; a longer segment (e.g. a whole unweighted prompt) is cut at the chunk
    boundary. Chunks are BOS + up to 75 tokens + EOS + padding.
    """
    text = escape_brackets(text)
    segments = parse_weights(text) if parse_prompt_weights else [(text, 1.0)]

    words: list[list[tuple[Token, float]]] = []
    for segment, weight in segments:
        for word in _split_embeddings(unescape_brackets(segment)):
            if word.startswith(EMBEDDING_PREFIX) and embedding_lookup is not None:
                name = word[len(EMBEDDING_PREFIX):].strip("\n")
                vectors, leftover = _resolve_embedding(name, embedding_lookup)
                if vectors is None:
                    logging.warning("embedding:%s does not exist, ignoring", name)
                else:
                    rows = [vectors] if vectors.ndim == 1 else list(vectors)
                    words.append([(v, weight) for v in rows])
                if not leftover:
                    continue
                word = leftover
            words.append([(t, weight) for t in bpe.encode(word)])
    return _chunk(words, spec)


def _chunk(words: list[list[tuple[Token, float]]], spec: ChunkSpec) -> list[Chunk]:
    room = spec.length - 1  # tokens a chunk holds before its EOS (BOS included)
    chunks: list[Chunk] = []
    chunk: Chunk = [(spec.bos, 1.0)]
    for word in words:
        splittable = len(word) >= spec.max_word_length
        while word:
            if len(chunk) + len(word) <= room:
                chunk += word
                break
            if splittable:
                fit = room - len(chunk)
                chunk += word[:fit]
                word = word[fit:]
            chunks.append(_close(chunk, spec))
            chunk = [(spec.bos, 1.0)]
    chunks.append(_close(chunk, spec))
    return chunks


def _close(chunk: Chunk, spec: ChunkSpec) -> Chunk:
    chunk = chunk + [(spec.eos, 1.0)]
    return chunk + [(spec.pad, 1.0)] * (spec.length - len(chunk))
