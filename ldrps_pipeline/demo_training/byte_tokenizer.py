"""A byte-level CLIP tokenizer that is built offline, without any vocabulary download.

Used by the project's own small text encoder (the demo model) and by the tests. Every byte
of UTF-8 text maps to one token (no BPE merges), so the vocabulary has 514 entries: the 256
byte characters, the same with the end-of-word suffix ``</w>``, and the two special tokens.
"""

from transformers import CLIPTokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def byte_level_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """Build a CLIP tokenizer with a byte-level vocabulary and no merges.

    Args:
        model_max_length: the padded sequence length (77 for every CLIP text encoder).

    Returns:
        A ``CLIPTokenizer`` that saves with ``save_pretrained`` and reloads with ``from_pretrained``.
    """
    characters = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(characters)}
    vocab.update({c + "</w>": len(characters) + i for i, c in enumerate(characters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
