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


# ------------------------------------------------------------------ vocabularies
# A vocabulary field is asked on its own and answered by ranking its terms (Model.rank); the
# questions name what one whole answer is.
FIELD_QUESTIONS = {
    "genre": "What is the genre of this music?",
    "subgenre": "What is the subgenre of this music?",
    "mood": "What is the mood of this music?",
    "instruments": "Which instrument is the most prominent in this music?",
    "tempo_feel": "How fast does this music feel?",
    "vocals": "What kind of vocals does this music have?",
    "language": "In which language are the lyrics of this music?",
}
# What the free-text question asks for each field, when only some fields are left to it
FIELD_PHRASES = {
    "genre": "its genre", "subgenre": "its subgenre", "mood": "its mood", "instruments": "the instruments you hear",
    "tempo_feel": "how fast it feels", "vocals": "whether there are vocals", "language": "the language of its lyrics",
    "description": "a one-line description",
}

# Built-in vocabularies, each a published taxonomy:
BUILTIN = {
    # Discogs' 15 top-level genres (the taxonomy Essentia's discogs-effnet models are trained on)
    "genre": ("Blues", "Brass & Military", "Children's", "Classical", "Electronic", "Folk, World, & Country",
              "Funk / Soul", "Hip Hop", "Jazz", "Latin", "Non-Music", "Pop", "Reggae", "Rock", "Stage & Screen"),
    # MTG-Jamendo's 56 mood/theme tags (the set MuCUE's mood task and Essentia's mood models use)
    "mood": ("action", "adventure", "advertising", "background", "ballad", "calm", "children", "christmas",
             "commercial", "cool", "corporate", "dark", "deep", "documentary", "drama", "dramatic", "dream",
             "emotional", "energetic", "epic", "fast", "film", "fun", "funny", "game", "groovy", "happy", "heavy",
             "holiday", "hopeful", "inspiring", "love", "meditative", "melancholic", "melodic", "motivational",
             "movie", "nature", "party", "positive", "powerful", "relaxing", "retro", "romantic", "sad", "sexy",
             "slow", "soft", "soundscape", "space", "sport", "summer", "trailer", "travel", "upbeat", "uplifting"),
    # MTG-Jamendo's 40 instrument tags, written as words
    "instruments": ("accordion", "acoustic bass guitar", "acoustic guitar", "bass", "beat", "bell", "bongo", "brass",
                    "cello", "clarinet", "classical guitar", "computer", "double bass", "drum machine", "drums",
                    "electric guitar", "electric piano", "flute", "guitar", "harmonica", "harp", "horn", "keyboard",
                    "oboe", "orchestra", "organ", "pad", "percussion", "piano", "pipe organ", "rhodes", "sampler",
                    "saxophone", "strings", "synthesizer", "trombone", "trumpet", "viola", "violin", "voice"),
    # the tag schema's own closed sets: ranked, they get a score too
    "tempo_feel": tuple(TAGS_SCHEMA["properties"]["tempo_feel"]["enum"]),
    "vocals": tuple(TAGS_SCHEMA["properties"]["vocals"]["enum"]),
}
MAX_TERMS = 5000          # per field
MAX_TERM_CHARS = 100
MAX_FILE_BYTES = 1 << 20


def field_question(field: str) -> str:
    return FIELD_QUESTIONS.get(field, f"What is the {field.replace('_', ' ')} of this music?")


def free_question(fields: list[str]) -> str:
    """The JSON question for the fields no vocabulary answers (all of them: TAGS_QUESTION)."""
    if list(fields) == list(FIELDS):
        return TAGS_QUESTION
    return "Describe this music as JSON: " + ", ".join(FIELD_PHRASES[f] for f in fields) + "."


def free_schema(fields: list[str]) -> dict:
    """TAGS_SCHEMA restricted to `fields`."""
    return {**TAGS_SCHEMA, "properties": {f: TAGS_SCHEMA["properties"][f] for f in fields}, "required": list(fields)}


def builtin_vocabulary() -> dict[str, tuple[str, ...]]:
    return dict(BUILTIN)


def load_vocabulary(path: str) -> dict[str, tuple[str, ...]]:
    """A vocabulary file: `builtin`; one term a line (the genre field; `#` starts a comment); or a
    .json/.yaml/.yml map of field -> list of terms. Terms are trimmed and kept once, in order."""
    from pathlib import Path

    from .errors import MufunError
    if path == "builtin":
        return builtin_vocabulary()
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise MufunError(f"{path}: a vocabulary file is at most {MAX_FILE_BYTES >> 20} MB")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MufunError(f"{path}: cannot read the vocabulary ({getattr(exc, 'strerror', None) or exc})") from None
    if p.suffix.lower() in (".json", ".yaml", ".yml"):
        import yaml  # JSON is YAML
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MufunError(f"{path}: not valid {p.suffix[1:].upper()} ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict) or not data:
            raise MufunError(f"{path}: a vocabulary map is field: [terms, ...]")
    else:
        data = {"genre": [line.split("#", 1)[0] for line in text.splitlines()]}
    out = {}
    for field, terms in data.items():
        if not isinstance(field, str) or not field.isidentifier() or field == "description":
            raise MufunError(f"{path}: {field!r} is not a field a vocabulary can answer")
        if not isinstance(terms, list) or not all(isinstance(t, (str, int, float)) for t in terms):
            raise MufunError(f"{path}: {field}: give a list of terms")
        try:
            out[field] = checked_terms(terms)
        except MufunError as exc:
            raise MufunError(f"{path}: {field}: {exc}") from None
    return out


def distinct_terms(terms) -> tuple[str, ...]:
    """Terms trimmed, the empty ones left out, each once, in order."""
    return tuple(dict.fromkeys(str(t).strip() for t in terms if str(t).strip()))


def checked_terms(terms) -> tuple[str, ...]:
    """distinct_terms, refused (MufunError) when none are left or there are too many or too long
    ones: what a vocabulary from outside (a file, a request) may hold."""
    from .errors import MufunError
    kept = distinct_terms(terms)
    if not kept:
        raise MufunError("no terms")
    if len(kept) > MAX_TERMS or max(map(len, kept)) > MAX_TERM_CHARS:
        raise MufunError(f"at most {MAX_TERMS} terms of at most {MAX_TERM_CHARS} characters")
    return kept


# ------------------------------------------------------------------ where tags land
POLICIES = ("fill-empty", "merge", "overwrite")


def landed(current, value, policy: str):
    """What a library's field becomes when a tag `value` lands on it under `policy`, or None to
    leave it as it is. fill-empty writes only into an empty field; merge adds what the field
    lacks (to a list, its missing items; to text, '; ' and the value, unless it holds it);
    overwrite replaces it."""
    empty = current in (None, "", [], ())
    if policy == "overwrite" or empty:
        return None if value == current else value
    if policy == "fill-empty":
        return None
    if isinstance(current, (list, tuple)):
        new = [v for v in (value if isinstance(value, list) else [value]) if v not in current]
        return list(current) + new if new else None
    parts = [p.strip() for p in str(current).split(";")]
    adding = [v for v in (value if isinstance(value, list) else [value]) if str(v).strip() not in parts]
    return "; ".join([str(current)] + [str(v).strip() for v in adding]) if adding else None
