"""The OpenAI moderation categories, in the order of OpenAI's moderation reference.

Every classifier maps its own labels onto a subset of these; the subset it really evaluates
is what it reports, so that a category it cannot see is "not evaluated", never "clean".
"""

from __future__ import annotations

HARASSMENT = "harassment"
HARASSMENT_THREATENING = "harassment/threatening"
HATE = "hate"
HATE_THREATENING = "hate/threatening"
ILLICIT = "illicit"
ILLICIT_VIOLENT = "illicit/violent"
SELF_HARM = "self-harm"
SELF_HARM_INTENT = "self-harm/intent"
SELF_HARM_INSTRUCTIONS = "self-harm/instructions"
SEXUAL = "sexual"
SEXUAL_MINORS = "sexual/minors"
VIOLENCE = "violence"
VIOLENCE_GRAPHIC = "violence/graphic"

OPENAI_CATEGORIES: tuple[str, ...] = (
    HARASSMENT,
    HARASSMENT_THREATENING,
    HATE,
    HATE_THREATENING,
    ILLICIT,
    ILLICIT_VIOLENT,
    SELF_HARM,
    SELF_HARM_INTENT,
    SELF_HARM_INSTRUCTIONS,
    SEXUAL,
    SEXUAL_MINORS,
    VIOLENCE,
    VIOLENCE_GRAPHIC,
)
