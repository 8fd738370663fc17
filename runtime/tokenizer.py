"""CLIP byte-level BPE tokenizer in pure Python.

Stable Diffusion's text encoder only understands the ids produced by
`transformers.CLIPTokenizer`, so this module reproduces that tokenizer id for id
(its slow, ftfy-less code path) without third-party packages, which lets it run
in Pyodide. Besides the ids it reports which tokens each word became and which
words fell off the end of the 77-token window, so the explainer can show them.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass

# transformers reads at most this many merges from merges.txt (CLIP's quirk).
_MAX_MERGES = 49152 - 256 - 2
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# BERT's notion of "Chinese characters": each one becomes a word of its own.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


class TokenizerError(ValueError):
    """A tokenizer that cannot be built from a bundle's files: one line naming the file."""


class MissingSpecialToken(KeyError):
    """The vocabulary lacks a special token (bos, eos or pad)."""

    def __init__(self, tokens: list[str]):
        super().__init__(tokens)
        self.tokens = tokens


@dataclass
class Tokenized:
    """One encoded prompt.

    `tokens` holds the real tokens (bos, text tokens, eos; no padding) as readable
    text: byte-level characters are decoded back to UTF-8, a token that holds only
    part of a multi-byte character shows the leftover bytes as `\\xNN` escapes, and
    the `</w>` end-of-word suffix is kept because it is what distinguishes e.g. the
    standalone word "a</w>" from the prefix "a" in the vocabulary.
    """

    ids: list[int]
    tokens: list[str]
    length: int
    truncated: bool
    dropped_words: list[str]


def _bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character, so BPE never sees spaces or controls."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _clean_words(text: str) -> list[str]:
    """Normalise like transformers' BasicTokenizer (used when ftfy is absent) and split into words."""
    chars = []
    for ch in text:
        if ch in "\t\n\r" or unicodedata.category(ch) == "Zs":
            chars.append(" ")
        elif ch == "\ufffd" or unicodedata.category(ch).startswith("C"):
            continue  # controls, format chars (zero-width), unassigned, NUL
        elif any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    text = unicodedata.normalize("NFC", "".join(chars))
    # Lowercase word by word, as transformers does: final-sigma rules depend on it.
    return " ".join(word.lower() for word in text.split()).split()


def _starts_with_ci(word: str, i: int, literal: str) -> bool:
    """Case-insensitive prefix test, as CLIP's pattern uses IGNORECASE: "'ſ" (long s) counts as "'s".

    casefold() agrees with the `regex` module's matching here because the text is
    already lowercased and the literals hold no "i" (whose fold rules differ).
    """
    if len(word) - i < len(literal):
        return False
    return all(word[i + k].casefold() == c for k, c in enumerate(literal))


def _kind(ch: str) -> str:
    """Which class of CLIP's pattern a character falls in: "L"etter, "N"umber, "O"ther or "" (none)."""
    if ch == "\u0345":
        # COMBINING GREEK YPOGEGRAMMENI case-folds to a letter (iota), so under the
        # pattern's IGNORECASE flag it matches neither \p{L} nor its negation and the
        # `regex` module skips it: the character silently disappears.
        return ""
    kind = unicodedata.category(ch)[0]
    return kind if kind in "LN" else "O"


def _pretokenize(word: str, specials: tuple[str, ...]) -> list[str]:
    """Hand-written version of CLIP's pattern `<specials>|'s|'t|...|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`."""
    pieces, i, n = [], 0, len(word)
    while i < n:
        literals = specials if word[i] == "<" else _CONTRACTIONS if word[i] == "'" else ()
        j = next((i + len(lit) for lit in literals if _starts_with_ci(word, i, lit)), None)
        if j is None:
            kind = _kind(word[i])
            if not kind:
                i += 1
                continue
            j = i + 1
            if kind != "N":  # digits stay single; letters and other symbols group into runs
                while j < n and _kind(word[j]) == kind:
                    j += 1
        pieces.append(word[i:j])
        i = j
    return pieces


class CLIPTokenizer:
    """Encodes prompts exactly like `transformers.CLIPTokenizer(...)(text, padding="max_length", truncation=True)`.

    Words never seen before are merged once and cached, as transformers does; the cache
    grows with the vocabulary of prompts typed in a session, which stays small.
    Tokens missing from the vocabulary map to the eos id (transformers' unk token).
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[str],
        max_length: int = 77,
        bos_token: str = "<|startoftext|>",
        eos_token: str = "<|endoftext|>",
        pad_token: str = "<|endoftext|>",
    ):
        if max_length < 2:
            raise ValueError("max_length must leave room for the bos and eos tokens")
        missing = [t for t in dict.fromkeys((bos_token, eos_token, pad_token)) if t not in vocab]
        if missing:
            raise MissingSpecialToken(missing)
        self.vocab = vocab
        self.max_length = max_length
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self._specials = (bos_token, eos_token)
        self._ranks = {tuple(m.split()): rank for rank, m in enumerate(merges)}
        self._byte_encoder = _bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._cache = {tok: tok for tok in self._specials}

    @classmethod
    def from_texts(cls, vocab_json: str, merges_txt: str, vocab_name: str = "vocab.json", **kw) -> CLIPTokenizer:
        """Build from file contents, which is what the browser has after fetching the assets.

        A vocabulary that is not a JSON object of ids, or lacks a special token, raises one
        TokenizerError line naming `vocab_name` (the bundle's file), never a KeyError later."""
        merges = merges_txt.strip().split("\n")[1 : _MAX_MERGES + 1]  # line 0 is the '#version' header
        try:
            vocab = json.loads(vocab_json)
        except ValueError as e:
            raise TokenizerError(f"{vocab_name} is not valid JSON ({str(e)[:80]}); re-export the bundle") from None
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise TokenizerError(f"{vocab_name} is not a token → id table; re-export the bundle")
        try:
            return cls(vocab, merges, **kw)
        except MissingSpecialToken as e:
            names = ", ".join(repr(t) for t in e.tokens)
            raise TokenizerError(
                f"{vocab_name} lacks the special token{'s' if len(e.tokens) > 1 else ''} {names} that CLIP's "
                "prompts begin, end and are padded with; re-export the bundle with its tokenizer"
            ) from None

    @classmethod
    def from_files(cls, vocab_path, merges_path, **kw) -> CLIPTokenizer:
        with open(vocab_path, encoding="utf-8") as v, open(merges_path, encoding="utf-8") as m:
            return cls.from_texts(v.read(), m.read(), **kw)

    @property
    def bos_id(self) -> int:
        return self.vocab[self.bos_token]

    @property
    def eos_id(self) -> int:
        return self.vocab[self.eos_token]

    @property
    def pad_id(self) -> int:
        return self.vocab[self.pad_token]

    def encode(self, text: str) -> Tokenized:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        words = self._words(text)
        flat = [(w, tok) for w, (_, toks) in enumerate(words) for tok in toks]
        budget = self.max_length - 2
        kept, truncated = flat[:budget], len(flat) > budget
        dropped = [word for word, _ in words[flat[budget][0] :]] if truncated else []
        body = [tok for _, tok in kept]
        unk = self.eos_id
        ids = [self.bos_id, *(self.vocab.get(t, unk) for t in body), self.eos_id]
        length = len(ids)
        ids += [self.pad_id] * (self.max_length - length)
        tokens = [self.bos_token, *map(self._readable, body), self.eos_token]
        return Tokenized(ids, tokens, length, truncated, dropped)

    def _words(self, text: str) -> list[tuple[str, list[str]]]:
        """Split into (word, BPE tokens) pairs; special tokens typed in the text stay whole words."""
        words = []
        for chunk, special in self._split_specials(text):
            if special:
                words.append((chunk, [chunk]))
                continue
            for word in _clean_words(chunk):
                toks = []
                for piece in _pretokenize(word, self._specials):
                    encoded = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
                    toks.extend(self._bpe(encoded).split(" "))
                words.append((word, toks))
        return words

    def _split_specials(self, text: str):
        """Cut out literal special tokens before any cleanup, as transformers' added-token trie does."""
        while text:
            hits = [(text.find(s), s) for s in self._specials if s in text]
            if not hits:
                yield text, False
                return
            start, special = min(hits)
            if start:
                yield text[:start], False
            yield special, True
            text = text[start + len(special) :]

    def _bpe(self, token: str) -> str:
        """Greedily apply the lowest-ranked merge until none applies; returns space-joined symbols."""
        if token in self._cache:
            return self._cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: self._ranks.get(p, float("inf")))
            if best not in self._ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self._cache[token] = result
        return result

    def _readable(self, token: str) -> str:
        if token in self._specials:
            return token
        body, suffix = (token[:-4], "</w>") if token.endswith("</w>") else (token, "")
        raw = bytes(self._byte_decoder[c] for c in body)
        return raw.decode("utf-8", errors="backslashreplace") + suffix


def check_bundle_tokenizer(manifest_json: str, vocab_json: str, merges_txt: str) -> None:
    """The page's early check (before the big model files download): the bundle's tokenizer files
    build a tokenizer with its special tokens, or one TokenizerError line naming the file."""
    tok = json.loads(manifest_json)["tokenizer"]
    CLIPTokenizer.from_texts(
        vocab_json,
        merges_txt,
        vocab_name=tok["files"]["vocab"],
        max_length=tok["max_length"],
        pad_token=tok.get("pad_token", "<|endoftext|>"),
    )
