"""A1111's prompt language: emphasis, prompt editing and alternation, ``AND``, extra-network tags, styles, and
the 75-token chunks and token counter, tokenised as A1111 does for each text encoder.

>>> from nbdiffuse import prompts
>>> prompts.parse_attention("a (red:1.5) circle")
[('a ', 1.0), ('red', 1.5), (' circle', 1.0)]
>>> str(prompts.count_tokens("a BREAK b"))
'76/150'
"""

from .._lazy import lazy_exports

# Imported on first use: the parser is pure Python, the chunking needs torch and the tokenizer.
_LAZY = {
    "parse_attention": ".parser", "schedule": ".parser", "split_and": ".parser",
    "extract_extra_networks": ".parser", "Style": ".styles", "load_styles": ".styles", "save_styles": ".styles",
    "apply_styles": ".styles", "extract_styles": ".styles",
    "count_tokens": ".conditioning", "tokenize_chunks": ".conditioning", "TokenCount": ".conditioning",
}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
