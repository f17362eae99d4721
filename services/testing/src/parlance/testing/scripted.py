"""Settings of the generator's scripted test engine (GENERATOR_ENGINE=scripted): it streams a
given text, or echoes the last user message, one word a token at a set pace. The real model
cannot be made to say a given thing on demand; this engine is the named stand-in for it."""

from __future__ import annotations


def scripted_generator(text: str | None = None, tokens_per_s: float = 200) -> dict[str, str]:
    """The generator's environment for the scripted engine: `text`, or echo when None."""
    env = {"GENERATOR_ENGINE": "scripted", "GENERATOR_SCRIPTED_TOKENS_PER_S": f"{tokens_per_s:g}"}
    if text is not None:
        env["GENERATOR_SCRIPTED_TEXT"] = text
    return env
