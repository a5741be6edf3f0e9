"""The tag schema: one question whose answer is JSON with a music library's fields (genre,
mood, instruments, ...), constrained to that schema while sampling. `Model.tags`, `batch
--tags` and the beets plugin all ask it."""
from __future__ import annotations

# What MuFun answers well (MuCUE: genre, mood, instruments, vocals); exact BPM and key it
# does not (ballroom tempo 29 %, GTZAN key 34 %), so the schema asks for a tempo feel.
TAGS_QUESTION = ("Describe this music as JSON: its genre and subgenre, mood, the instruments you hear, "
                 "how fast it feels, whether there are vocals and in which language, and a one-line description.")
TAGS_SCHEMA = {  # bounded, so a finished answer fits the default 512 tokens whatever the model says
    "type": "object",
    "properties": {
        "genre": {"type": "string", "maxLength": 32},
        "subgenre": {"type": "string", "maxLength": 32},
        "mood": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 1, "maxItems": 3},
        "instruments": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1,
                        "maxItems": 6},
        "tempo_feel": {"enum": ["very slow", "slow", "moderate", "fast", "very fast"]},
        "vocals": {"enum": ["none", "male", "female", "mixed", "choir"]},
        "language": {"type": "string", "maxLength": 16},
        "description": {"type": "string", "maxLength": 120},
    },
    "required": ["genre", "subgenre", "mood", "instruments", "tempo_feel", "vocals", "language", "description"],
    "additionalProperties": False,
}

# What one answer holds, in the schema's order
FIELDS = tuple(TAGS_SCHEMA["properties"])


def as_text(value) -> str:
    """A field's value as a beets-style string, trimmed (lists joined with '; ', as `batch --format csv`)."""
    return "; ".join(str(v).strip() for v in value) if isinstance(value, list) else str(value).strip()
