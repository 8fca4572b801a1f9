"""How CLIP reads a prompt: byte-pair-encoding tokens, their ids, the weights from `(word:1.2)`,
and the 77-token chunks (BOS + up to 75 tokens + EOS, padded) the text encoder takes one at a time
(Radford et al. 2021, arXiv 2103.00020; ComfyUI's prompt-weight syntax)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from . import draw

BOS_TEXT, EOS_TEXT = "<|startoftext|>", "<|endoftext|>"
EOS_ID = 49407  # <|endoftext|> in CLIP's vocabulary (CLIP-L and OpenCLIP alike)


@dataclass(frozen=True)
class TokenRow:
    chunk: int
    position: int
    token: str
    id: int | None  # None for an embedding vector
    weight: float
    role: str  # BOS, word, EOS, PAD, embedding


def token_rows(chunks: Sequence[Sequence[tuple]], texts: Sequence[Sequence[str]]) -> list[TokenRow]:
    """Rows of the token table from the tokenizer's chunks of (id, weight) and each id's text.

    Position 0 of a chunk is BOS; the first end-of-text after it is EOS; what follows is padding."""
    rows = []
    for c, (chunk, words) in enumerate(zip(chunks, texts)):
        ended = False
        for p, ((tok, weight), text) in enumerate(zip(chunk, words)):
            tid = int(tok) if isinstance(tok, int) else None
            if p == 0:
                role = "BOS"
            elif ended:
                role = "PAD"
            elif tid == EOS_ID or text == EOS_TEXT:
                role, ended = "EOS", True
            else:
                role = "word" if tid is not None else "embedding"
            rows.append(TokenRow(c, p, text, tid, float(weight), role))
    return rows


ROLE_FILLS = {"BOS": (225, 240, 225), "EOS": (250, 228, 215), "PAD": (242, 242, 242), "word": None, "embedding": (235, 225, 245)}


def as_text(rows: Sequence[TokenRow], prompt: str, encoder: str = "") -> str:
    chunks = max((r.chunk for r in rows), default=-1) + 1
    words = sum(r.role == "word" for r in rows)
    head = f"prompt: {prompt!r}\n{words} word tokens in {chunks} chunk(s) of 77" + (f" ({encoder})" if encoder else "")
    lines = [head, "chunk\tpos\ttoken\tid\tweight\trole"]
    lines += [f"{r.chunk}\t{r.position}\t{r.token}\t{'' if r.id is None else r.id}\t{r.weight:g}\t{r.role}" for r in rows]
    return "\n".join(lines)


def token_table(rows: Sequence[TokenRow], prompt: str, show_padding: bool = False, encoder: str = "") -> Image.Image:
    """The token table as a picture; padding rows are folded into one line unless `show_padding`."""
    shown, fills, cells = [], [], []
    pad_run: list[TokenRow] = []

    def flush():
        if pad_run:
            cells.append([str(pad_run[0].chunk), f"{pad_run[0].position}-{pad_run[-1].position}", f"padding x{len(pad_run)}",
                          str(pad_run[0].id), f"{pad_run[0].weight:g}", "PAD"])
            fills.append(ROLE_FILLS["PAD"])
            pad_run.clear()

    for r in rows:
        if r.role == "PAD" and not show_padding:
            if pad_run and pad_run[-1].chunk != r.chunk:
                flush()
            pad_run.append(r)
            continue
        flush()
        cells.append([str(r.chunk), str(r.position), r.token, "" if r.id is None else str(r.id), f"{r.weight:g}", r.role])
        fills.append(ROLE_FILLS[r.role])
        shown.append(r)
    flush()
    chunks = max((r.chunk for r in rows), default=-1) + 1
    title = f"How CLIP reads the prompt{' (' + encoder + ')' if encoder else ''}: {chunks} chunk(s) of 77 tokens = BOS + 75 + EOS, padded"
    table = draw.table(["chunk", "pos", "token (BPE)", "id", "weight", "role"], cells, title=title, row_fills=fills)
    return draw.stack([draw.text_block(f"prompt: {prompt}"), table])
