"""runtime.tokenizer must give exactly the ids of transformers' (slow) CLIPTokenizer."""

import random
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.tokenizer import CLIPTokenizer, Tokenized, _clean_words, _pretokenize  # noqa: E402

ASSETS = ROOT / "export" / "assets" / "clip_tokenizer"
VOCAB, MERGES = ASSETS / "vocab.json", ASSETS / "merges.txt"
MAX_LEN = 77


@pytest.fixture(scope="module")
def hf():
    return transformers.CLIPTokenizer(str(VOCAB), str(MERGES))


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.from_files(VOCAB, MERGES)


def hf_ids(hf, text):
    return hf(text, padding="max_length", max_length=MAX_LEN, truncation=True)["input_ids"]


WORDS = (
    "a photo of an astronaut riding a horse on mars highly detailed digital painting artstation concept art "
    "smooth sharp focus illustration by greg rutkowski and alphonse mucha trending 8k unreal engine octane render "
    "cinematic lighting portrait of a cat wearing sunglasses oil on canvas watercolor cyberpunk city at night"
).split()

FRAGMENTS = [
    # case, punctuation, contractions
    "Hello",
    "WORLD",
    "MiXeD",
    "it's",
    "don't",
    "we're",
    "they've",
    "I'm",
    "you'll",
    "she'd",
    "IT'S",
    "We'Re",
    "'s",
    "''s",
    "'S",
    "o'clock",
    "rock'n'roll",
    "'",
    "’s",
    "‘quoted’",
    '"double"',
    "(parens)",
    "[b]",
    "{c}",
    "hello,world",
    "end.",
    "why?",
    "wow!",
    "semi;colon",
    "a:b",
    "a/b\\c",
    "@user",
    "#tag",
    "$100",
    "50%",
    "a&b",
    "x*y",
    "a+b=c",
    "~tilde~",
    "`tick`",
    "^caret",
    "a|b",
    "<angle>",
    "under_score",
    "dash-ed",
    "em—dash",
    "…",
    # numbers and digits mixed with letters
    "123",
    "0",
    "3.14159",
    "1,000,000",
    "4k",
    "8K",
    "1920x1080",
    "v1.5",
    "sd2.1",
    "2nd",
    "x²",
    "½",
    "Ⅻ",
    "٣",
    "१२३",
    "①",
    "１２３",
    # accents and combining marks
    "café",
    "naïve",
    "Ångström",
    "résumé",
    "cafe\u0301",
    "e\u0301\u0302",
    "n\u0303",
    "Ǆ",
    "ﬁne",
    "straße",
    "İstanbul",
    "ſ",
    "'ſ",
    "K",
    "ͅ",
    "α\u0345",
    "ΟΔΟΣ",
    "Σίσυφος",
    "\u0301alone",
    # emoji
    "🐱",
    "👍🏽",
    "👨‍👩‍👧",
    "🇫🇷",
    "❤️",
    "✨✨",
    "🤖robot",
    # scripts
    "東京",
    "中文字符",
    "日本語のテキスト",
    "ひらがな",
    "カタカナ",
    "한국어",
    "豈",
    "𠀀",
    "مرحبا بالعالم",
    "Привет мир",
    "Ελληνικά",
    "שלום",
    "สวัสดี",
    "नमस्ते",
    "ＡＢＣ",
    "𝐀𝐁𝐂",
    # HTML / script-like
    "<script>alert('x')</script>",
    "<b>bold</b>",
    "&amp;",
    "&#x27;",
    '<div class="a">',
    "{{template}}",
    "${var}",
    "http://example.com/a?b=c&d=e",
    "user@example.com",
    "C:\\path\\file.txt",
    "/* comment */",
    'print("hi")',
    # repeated punctuation
    "!!!!",
    "...",
    "???!!!",
    "-----",
    "~~~~~~~~",
    "((((((",
    "''''",
    ",,,,",
    "!?!?",
    "****",
    "#####",
    # special tokens typed in the text
    "<|endoftext|>",
    "<|startoftext|>",
    "<|ENDOFTEXT|>",
    "<|ſtartoftext|>",
    "!!<|endoftext|>!!",
    "<|<|endoftext|>",
    # control and zero-width characters
    "\x00",
    "\x07",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\ufffd",
    "a\u200bb",
    "\u200d",
    "\ufeff",
    "\u2060",
    "\u00ad",
    "a\u202eb",
    "\U000e0041",
]

SEPARATORS = ["", " ", " ", " ", "  ", "\t", "\n", "\r\n", " \t\n ", "\u3000", "\xa0", "\u2028", "\u2003", "\x0b"]


def generated_cases():
    rng = random.Random(20240607)
    cases = []
    for _ in range(320):
        parts = []
        for _ in range(rng.randint(1, 24)):
            piece = rng.choice(FRAGMENTS) if rng.random() < 0.6 else rng.choice(WORDS)
            if rng.random() < 0.2:
                piece = rng.choice([str.upper, str.title, str.lower])(piece)
            parts.append(piece)
            parts.append(rng.choice(SEPARATORS))
        text = "".join(parts)
        if rng.random() < 0.2:
            text = rng.choice(SEPARATORS) + text + rng.choice(SEPARATORS)
        cases.append(text)
    for n in (60, 75, 76, 150, 500, 500):
        cases.append(" ".join(rng.choice(WORDS) for _ in range(n)))
    cases.append(", ".join(rng.choice(FRAGMENTS) for _ in range(500)))
    return cases


HANDWRITTEN = [
    "",
    " ",
    "\t\n\r",
    "a photo of an astronaut riding a horse",
    "A PHOTO OF AN ASTRONAUT",
    "a" * 300,
    "aaaa bbbb aaaa",
    "it's what we've been doing",
    "hello  \t\n  world",
    "东京 tokyo 東京",
    "一二三四五六",
    "e" + "\u0301" * 10,
    "🏳️‍🌈" * 5,
    "1" * 100,
    "word " * 80,
    "<|startoftext|><|endoftext|>",
    "x<|endoftext|>y z",
    "  <|endoftext|>  ",
    "a\u0345b !\u0345! \u0345",
]

CASES = HANDWRITTEN + generated_cases()


def test_enough_cases():
    assert len(CASES) >= 300


@pytest.mark.parametrize("index", range(len(CASES)))
def test_ids_match_transformers(hf, tok, index):
    text = CASES[index]
    got = tok.encode(text)
    assert got.ids == hf_ids(hf, text), repr(text)
    assert len(got.ids) == MAX_LEN
    assert got.length == len(got.tokens)
    assert got.ids[got.length :] == [tok.pad_id] * (MAX_LEN - got.length)


def test_pretokenization_covers_every_code_point(hf):
    """Every character, also after an apostrophe, splits as in BasicTokenizer + CLIP's `regex` pattern."""
    import regex

    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    seps = ["", "a", "1", " ", "!"]
    specials = ("<|startoftext|>", "<|endoftext|>")
    for start in range(0, len(chars), 4096):
        text = "".join(c + "'" + c + seps[i % 5] for i, c in enumerate(chars[start : start + 4096]))
        words = _clean_words(text)
        assert words == hf.nlp.tokenize(text), hex(start)
        pieces = [p for w in words for p in _pretokenize(w, specials)]
        assert pieces == regex.findall(hf.pat, " ".join(words)), hex(start)


def test_known_ids(tok):
    got = tok.encode("a photo of an astronaut riding a horse")
    assert got.ids[:10] == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (49406, 49407, 49407)


def test_tokens_and_length(tok):
    got = tok.encode("Café 🐱, it's")
    assert got.tokens == ["<|startoftext|>", "café</w>", "🐱", ",</w>", "it</w>", "'s</w>", "<|endoftext|>"]
    assert got.length == 7 and not got.truncated and got.dropped_words == []
    # A CJK character is split into byte pieces; partial UTF-8 shows as escapes.
    assert tok.encode("東").tokens[1:3] == ["\\xe6\\x9d", "\\xb1</w>"]


def test_empty_string(tok):
    got = tok.encode("")
    assert got == Tokenized([49406] + [49407] * 76, ["<|startoftext|>", "<|endoftext|>"], 2, False, [])


def test_truncation_and_dropped_words(hf, tok):
    words = [f"w{i}" for i in range(60)]  # each "wN" is two tokens: "w" and the digits
    text = " ".join(words)
    got = tok.encode(text)
    assert got.ids == hf_ids(hf, text)
    assert got.truncated and got.length == MAX_LEN
    assert got.ids[-1] == tok.eos_id and got.tokens[-1] == "<|endoftext|>"
    n_tokens = [len(tok._words(w)[0][1]) for w in words]
    kept, used = 0, 0
    while used + n_tokens[kept] <= MAX_LEN - 2:
        used += n_tokens[kept]
        kept += 1
    assert got.dropped_words == words[kept:]
    # The word straddling the limit is counted as dropped even though part of it fits.
    assert used < MAX_LEN - 2 and got.dropped_words[0] == words[kept]


def test_exact_fit_is_not_truncated(hf, tok):
    text = " ".join(["cat"] * 75)
    got = tok.encode(text)
    assert got.ids == hf_ids(hf, text)
    assert not got.truncated and got.dropped_words == [] and got.length == MAX_LEN
    over = tok.encode(text + " dog")
    assert over.truncated and over.dropped_words == ["dog"]


def test_long_prompt_drops_cleaned_words(tok):
    got = tok.encode("Cat " * 75 + "BIG\tDog  東京")
    assert got.dropped_words == ["big", "dog", "東", "京"]


def test_rejects_non_str(tok):
    for bad in (None, b"bytes", 42, ["a"]):
        with pytest.raises(TypeError, match="str"):
            tok.encode(bad)


def test_from_texts_matches_from_files(tok):
    other = CLIPTokenizer.from_texts(VOCAB.read_text("utf-8"), MERGES.read_text("utf-8"), max_length=9)
    got = other.encode("a photo of an astronaut riding a horse")
    assert got.ids == tok.encode("a photo of an astronaut riding a horse").ids[:8] + [49407]
    assert got.truncated and got.dropped_words == ["horse"]
