"""CLIP BPE and ComfyUI prompt syntax, checked on a tiny hand-made vocabulary (no ComfyUI, no files).

Expected values are derived by hand from the rules (merge ranks, the pre-tokenizer's alternatives,
ComfyUI's bracket semantics); the exact ids of the real vocabulary are checked against ComfyUI in
tests/host/test_parity_clip.py.
"""
import pytest
import torch

from diffusion_anatomy.clip.tokenizer import (
    BOS,
    EOS,
    BPETokenizer,
    ChunkSpec,
    PromptWeightError,
    bytes_to_unicode,
    normalize,
    parse_weights,
    pre_tokenize,
    tokenize_prompt,
)


def tiny_bpe(merges):
    """Vocabulary = every byte symbol with and without </w>, then each merge's result, then specials."""
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab = {s: i for i, s in enumerate(vocab_list)}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = BOS, EOS
    return BPETokenizer(vocab, merges)


def test_byte_table_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert not any(c.isspace() or not c.isprintable() for c in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"  # 0x20 is the 33rd non-printable byte -> U+0120


def test_bpe_merges_lowest_rank_first_everywhere_in_the_word():
    bpe = tiny_bpe([("l", "o"), ("lo", "w</w>"), ("e", "r</w>"), ("lo", "w")])
    assert bpe.bpe("low") == ["low</w>"]
    # "lower": l o w e r</w> -> (l,o) -> lo w e r</w> -> (e,r</w>) rank 2 beats (lo,w) rank 3
    assert bpe.bpe("lower") == ["low", "er</w>"]
    assert bpe.bpe("lolo") == ["lo", "l", "o</w>"]  # the second "o" carries </w>, so (l,o) cannot merge it
    assert bpe.bpe("x") == ["x</w>"]


def test_bpe_works_on_utf8_bytes():
    bpe = tiny_bpe([])
    table = bytes_to_unicode()
    assert bpe.bpe("é") == [table[0xC3], table[0xA9] + "</w>"]
    assert bpe.decode(bpe.encode("été à 9")) == "été à 9"


def test_pre_tokenizer_alternatives():
    assert pre_tokenize("it's 42cats!!") == ["it", "'s", "4", "2", "cats", "!!"]
    assert pre_tokenize("''s x'll") == ["''", "s", "x", "'ll"]  # "''" is one punctuation run, then letters
    assert pre_tokenize("a.b,c") == ["a", ".", "b", ",", "c"]
    assert pre_tokenize("naïve ½") == ["naïve", "½"]  # ½ is a number (No)


def test_normalize_collapses_space_drops_controls_and_spaces_cjk():
    assert normalize("  A\tB\n\nC\u00a0D ") == "a b c d"
    assert normalize("a\x07b\u200bc") == "abc"  # BEL (Cc) and ZWSP (Cf) removed
    assert normalize("東京tower") == "東 京 tower"
    assert normalize("e\u0301") == "é"  # NFC


def test_special_token_strings_become_their_ids():
    bpe = tiny_bpe([])
    assert bpe.encode("a<|endoftext|>b") == [bpe.vocab["a</w>"], EOS, bpe.vocab["b</w>"]]


@pytest.mark.parametrize("text, expected", [
    ("a (b) c", [("a ", 1.0), ("b", 1.1), (" c", 1.0)]),
    ("((b))", [("b", 1.1 * 1.1)]),
    ("(b:1.5)", [("b", 1.5)]),
    ("(a (b:2) c:0.5)", [("a ", 0.5), ("b", 2.0), (" c", 0.5)]),  # inner weight replaces, not multiplies
    ("(b:x)", [("b:x", 1.1)]),  # not a float: the colon stays text
    ("(:3)", [(":3", 1.1)]),  # a colon at position 0 is text
    ("[b]", [("[b]", 1.0)]),  # square brackets carry no weight in ComfyUI
    ("a) b", [("a) b", 1.0)]),  # an unmatched ")" is text
    ("(open", [("(open", 1.0)]),
])
def test_prompt_weights(text, expected):
    got = parse_weights(text)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


@pytest.mark.parametrize("text, named", [("(red:1e309)", "inf"), ("(red:nan)", "nan"), ("a (b (red:-inf) c)", "-inf"),
                                         ("(red:1e39)", "1e+39")])
def test_non_finite_prompt_weights_are_refused_naming_the_weight(text, named):
    """Core parses these and the conditioning becomes NaN/inf; the error would surface steps later as a NaN model."""
    with pytest.raises(PromptWeightError) as error:
        parse_weights(text)
    assert f"prompt weight {named}" in str(error.value) and "red" in str(error.value)


def test_escaped_brackets_are_literal_text():
    bpe = tiny_bpe([])
    chunks = tokenize_prompt(r"\(a\)", bpe)
    ids = [t for t, _ in chunks[0]]
    # one segment "(a)", pre-tokenized into three pieces, each ending a word
    assert ids[:5] == [BOS, bpe.vocab["(</w>"], bpe.vocab["a</w>"], bpe.vocab[")</w>"], EOS]
    assert {w for _, w in chunks[0]} == {1.0}


def test_chunks_are_bos_75_eos_padded():
    bpe = tiny_bpe([])
    spec = ChunkSpec(pad=0)
    chunks = tokenize_prompt(" ".join(["a"] * 80), bpe, spec)  # 80 one-token words
    a = bpe.vocab["a</w>"]
    assert len(chunks) == 2 and all(len(c) == 77 for c in chunks)
    first, second = ([t for t, _ in c] for c in chunks)
    assert first == [BOS] + [a] * 75 + [EOS]
    assert second == [BOS] + [a] * 5 + [EOS] + [0] * 70


def test_short_segment_moves_whole_long_segment_is_split():
    """ComfyUI's unit is the weighted segment ("word" in its code), not the space-separated word."""
    bpe = tiny_bpe([])
    filler = "(" + " ".join(["a"] * 73) + ":1.0)"  # one segment of 73 tokens, 2 free places before EOS
    short = tokenize_prompt(filler + " bcd", bpe)  # segment " bcd" = 3 tokens < 8: moves to the next chunk
    assert [t for t, _ in short[0]][74:] == [EOS, EOS, EOS]  # EOS, then EOS padding (SD1)
    assert [t for t, _ in short[1]][:5] == [BOS, bpe.vocab["b"], bpe.vocab["c"], bpe.vocab["d</w>"], EOS]
    long = tokenize_prompt(filler + " bcdefghij", bpe)  # 9 tokens >= 8: 2 here, 7 in the next chunk
    assert [t for t, _ in long[0]][74:] == [bpe.vocab["b"], bpe.vocab["c"], EOS]
    assert [t for t, _ in long[1]][:9] == [BOS] + [bpe.vocab[c] for c in "defghi"] + [bpe.vocab["j</w>"], EOS]


def test_embedding_vectors_are_inserted_with_their_weight():
    bpe = tiny_bpe([])
    vectors = torch.arange(6.0).reshape(2, 3)
    lookup = {"style": vectors}.get
    chunk = tokenize_prompt("a (embedding:style:1.3), embedding:nope b", bpe, embedding_lookup=lookup)[0]
    tokens = [t for t, _ in chunk]
    assert tokens[1] == bpe.vocab["a</w>"]
    assert torch.equal(tokens[2], vectors[0]) and torch.equal(tokens[3], vectors[1])
    assert [w for _, w in chunk[2:4]] == [1.3, 1.3]
    # the unknown embedding is dropped, the text after it kept
    assert tokens[4:7] == [bpe.vocab[",</w>"], bpe.vocab["b</w>"], EOS]


def test_embedding_with_trailing_comma_and_without_lookup():
    bpe = tiny_bpe([])
    lookup = {"style": torch.ones(4)}.get
    tokens = [t for t, _ in tokenize_prompt("embedding:style, x", bpe, embedding_lookup=lookup)[0]]
    assert torch.equal(tokens[1], torch.ones(4)) and tokens[2:5] == [bpe.vocab[",</w>"], bpe.vocab["x</w>"], EOS]
    plain = [t for t, _ in tokenize_prompt("embedding:style", bpe)[0]]  # no lookup: just text
    assert all(isinstance(t, int) for t in plain) and plain[1] == bpe.vocab["e"]
