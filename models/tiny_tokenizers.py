"""Offline tokenizers for the tiny test checkpoints.

Where this sits in a request's way: nowhere at serving time directly. ``build_tiny`` in each
family module (``models/<family>.py``) calls these builders once to write the tokenizer
folders of a tiny checkpoint; the family worker later loads them back through the pipeline's
own ``from_pretrained`` like any real checkpoint. Nothing here touches the network, and
transformers is imported only when a builder runs.

* CLIP: a byte-level BPE tokenizer (``CLIPTokenizer``). The vocabulary holds all 256 byte
  symbols (plain and with the ``</w>`` end-of-word marker), so every prompt, in any script,
  tokenizes without unknown tokens. A few hundred merges are learned deterministically from a
  small built-in text so common words become single tokens, like in a real CLIP tokenizer.
* T5: a Unigram tokenizer (``T5Tokenizer``, the fast class; ``T5TokenizerFast`` is the same
  class in transformers 5). Pieces are characters of several scripts plus whole words of the
  built-in text. Characters outside the vocabulary become ``<unk>`` (as in real T5, which has no
  byte fallback), never an error.

Both builders are pure functions of the built-in text: same output on every call.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported by the builders, when a tiny checkpoint is built
    from transformers import CLIPTokenizer, T5Tokenizer

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 64
CLIP_NUM_MERGES = 384

# Prompt-like English text the merges and word pieces are learned from. Content is arbitrary;
# it only has to stay fixed so the tokenizers are reproducible.
_CORPUS = """
a photo of a cat sitting on a wooden table next to a window, soft morning light
a painting of a mountain landscape at sunset with a lake and pine trees, oil on canvas
portrait of an old man with a beard, highly detailed, dramatic lighting, studio photograph
a red sports car driving on a coastal road, cinematic, wide angle, motion blur
an astronaut riding a horse on the moon, digital art, trending, sharp focus
a bowl of fresh fruit with apples oranges and grapes, still life, natural colors
a futuristic city skyline at night with neon signs and flying cars, cyberpunk style
a watercolor illustration of a small house in the forest, children book style
close up of a flower with water drops, macro photography, shallow depth of field
a dog playing in the snow in the park, happy, golden retriever, high resolution
the quick brown fox jumps over the lazy dog while the sun shines over the green hills
beautiful woman in a blue dress standing in a field of flowers, spring, bokeh background
an ancient castle on a cliff above the sea, stormy sky, fantasy concept art, epic
a cup of coffee and a book on a rainy day, cozy interior, warm tones, film grain
low quality, blurry, ugly, deformed, bad anatomy, watermark, text, signature, cropped
masterpiece, best quality, ultra realistic, 8k, octane render, unreal engine, volumetric light
anime girl with long hair and big eyes, colorful, vibrant, manga style drawing
a robot made of metal and glass, science fiction, intricate details, glowing lights
black and white photograph of a street in paris, people walking, vintage, nineteen fifties
minimalist logo of a bird, flat design, vector, simple shapes, white background
"""

# --------------------------------------------------------------------------------------------
# CLIP byte-level BPE
# --------------------------------------------------------------------------------------------

_CLIP_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.UNICODE)


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode character table of GPT-2/CLIP byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def _learn_bpe_merges(words: Counter[str], num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE learning; ties broken lexicographically so the result is deterministic."""
    byte_map = _bytes_to_unicode()
    splits: dict[str, list[str]] = {}
    for word in words:
        symbols = [byte_map[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        splits[word] = symbols

    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in splits.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += words[word]
        if not pairs:
            break
        best = min(pairs.items(), key=lambda item: (-item[1], item[0]))
        if best[1] < 2:
            break
        left, right = best[0]
        merges.append((left, right))
        for word, symbols in splits.items():
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = merged
    return merges


def _corpus_words() -> Counter[str]:
    return Counter(_CLIP_WORD_RE.findall(_CORPUS.lower()))


def build_clip_tokenizer(model_max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
    """A tiny byte-level CLIP BPE tokenizer (vocab ~ 900), fully offline and deterministic."""
    from transformers import CLIPTokenizer

    byte_symbols = list(_bytes_to_unicode().values())
    merges = _learn_bpe_merges(_corpus_words(), CLIP_NUM_MERGES)
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # pairs are accepted; the stub says str
        model_max_length=model_max_length,
    )


# --------------------------------------------------------------------------------------------
# T5 Unigram
# --------------------------------------------------------------------------------------------

_SPACE = "\u2581"  # sentencepiece's "▁" word-boundary marker


def _t5_characters() -> list[str]:
    ranges = [
        (0x21, 0x7E),  # printable ASCII
        (0xA1, 0x17F),  # Latin-1 supplement + Latin Extended-A
        (0x391, 0x3C9),  # Greek
        (0x400, 0x44F),  # Cyrillic
        (0x2010, 0x2027),  # general punctuation (dashes, quotes, ellipsis)
        (0x3041, 0x3096),  # Hiragana
        (0x30A1, 0x30FA),  # Katakana
    ]
    chars = [chr(c) for lo, hi in ranges for c in range(lo, hi + 1)]
    # A handful of very common CJK ideographs and emoji, so such prompts are not all <unk>.
    chars += list(
        "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年山水日月火木金土花猫狗"
    )
    chars += ["\U0001f600", "\U0001f431", "\U0001f436", "\u2764", "\u2728", "\u00b7"]
    return [c for c in dict.fromkeys(chars) if c.isprintable()]  # first occurrences, in order


def build_t5_tokenizer(model_max_length: int = T5_MAX_LENGTH) -> T5Tokenizer:
    """A tiny Unigram T5 tokenizer (vocab ~ 1000), fully offline and deterministic."""
    from transformers import T5Tokenizer

    words = _corpus_words()
    total = sum(words.values())
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces.append((_SPACE, -3.0))
    seen = {p for p, _ in pieces}
    # Whole words (with the word-boundary marker) score by corpus frequency: they win over
    # character-by-character segmentations.
    for word, count in sorted(words.items(), key=lambda item: (-item[1], item[0])):
        piece = _SPACE + word
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, round(math.log(count / total), 4)))
    # Single characters, with and without the marker: the fallback segmentation.
    for ch in _t5_characters():
        for piece, score in ((_SPACE + ch, -11.0), (ch, -10.0)):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, score))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
