"""Secret detection and redaction: one set of rules for everything the console keeps or shows.

The config loader refuses a value that :func:`looks_secret`; probe errors, command output and
anything else headed for the store, a log or the screen go through :func:`redact` first. The
rules recognise provider keys by shape (``sk-``, ``hf_``, GitHub tokens, bearer tokens,
passwords in URLs, long random runs) and any exact secret the caller knows (the API key a
probe sent). This module must not import anything of the console's: every layer uses it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"

# Key names that only ever hold a secret.
_SECRET_KEYS = frozenset(
    {"api_key", "apikey", "token", "password", "passwd", "secret", "authorization", "master_key"}
)
_SECRET_KEY_SUFFIXES = (
    "_api_key",
    "_token",
    "_password",
    "_secret",
    "_secret_key",  # aws_secret_key
    "_secret_access_key",  # aws_secret_access_key
    "_master_key",  # a LiteLLM proxy's, under general_settings
    "_private_key",
)
_KEY_PREFIX_RE = re.compile(r"(?:sk-|ghp_|gho_|ghu_|ghs_|github_pat_)[A-Za-z0-9_-]{6,}")
_HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{16,}")  # hf_ alone is too common (hf_transfer)
# "Bearer x" as the whole value or a header; elsewhere in text only with a token-like word.
_BEARER_RE = re.compile(
    r"(?:^|[Aa]uthorization:\s*)Bearer\s+\S|\bBearer\s+(?=\S*\d)[A-Za-z0-9._~+/=-]{12,}"
)
_URL_PASSWORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*:[^/?#@\s]+@")
_WORD_SPLIT_RE = re.compile(r"[\s\"'`=:,;&?()\[\]{}<>]+")
_LONG_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{32,}")
# A random key has a long run without separators; model names (Mistral-Nemo-Instruct-2407-FP8)
# and UUIDs are made of short runs.
_RANDOM_RUN_RE = re.compile(r"[A-Za-z0-9]{16,}")
# A git commit id (SHA-1: 40 lowercase hex digits) is what a model revision is pinned to on the
# Hugging Face hub: runbooks and argument files must be able to name one.
_COMMIT_ID_RE = re.compile(r"[0-9a-f]{40}")

# A value given under a secret key name in text (YAML, JSON, key=value): `api_key: x`,
# `"password": "x y"`, `DB_PASSWORD=x`. A quoted value runs to its closing quote (the other
# quote may be inside it); a bare one after `:` to the end of the line or of its flow item
# (`,` `}` `]`), after `=` to the next space (an environment assignment). `http://` is a
# URL, not a key.
_KEY_VALUE_RE = re.compile(
    r"""(?P<key>[A-Za-z_][A-Za-z0-9_-]*)(?P<close>["']?)(?P<sep>[ \t]*(?P<op>[:=])(?!//)[ \t]*)"""
    r"""(?:(?P<quote>["'])(?P<quoted>(?:\\.|(?!(?P=quote))[^\n])*)(?P=quote)"""
    r"""|(?P<bare>[^\s"',}\]][^\n,}\]]*))"""
)
# A value that names where the secret is rather than being it: LiteLLM's os.environ/NAME,
# ${NAME} and $NAME references. Kept: they say which variable to check.
_REFERENCE_RE = re.compile(r"os\.environ/\w+|\$\{?\w+\}?")
# An authorization scheme before its credentials: the scheme stays readable.
_SCHEME_RE = re.compile(r"(?i)(bearer|basic|token|digest)\s+\S")
# YAML block scalars (`password: |`): the lines indented under them are the value.
_BLOCK_RE = re.compile(
    r"""^(?P<indent>[ \t]*-?[ \t]*)(?P<key>["']?[A-Za-z_][A-Za-z0-9_-]*["']?)"""
    r"""[ \t]*:[ \t]*[|>][-+]?[ \t]*$"""
)
# A credential in a URL's query: ?token=..., &api_key=...
_QUERY_SECRET_RE = re.compile(
    r"(?i)([?&](?:access_token|api_key|apikey|key|password|secret|sig|signature|token)=)"
    r"[^&\s#\"']+"
)

# What redact() replaces in free text: bearer tokens, prefixed keys, passwords in URLs.
_BEARER_TOKEN_RE = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_URL_PASSWORD_PART_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*:)[^/?#@\s]+(@)")


def secret_key_name(name: str) -> bool:
    """A mapping key such as ``api_key`` or ``db_password`` whose value is always a secret."""
    name = name.lower().replace("-", "_")
    return name in _SECRET_KEYS or name.endswith(_SECRET_KEY_SUFFIXES)


def _letters_and_digits(text: str) -> bool:
    return any(c.isascii() and c.isalpha() for c in text) and any(c.isdigit() for c in text)


def _random_token(word: str) -> bool:
    if _COMMIT_ID_RE.fullmatch(word):
        return False
    return bool(_LONG_TOKEN_RE.fullmatch(word)) and any(
        _letters_and_digits(run) for run in _RANDOM_RUN_RE.findall(word)
    )


def looks_secret(text: str) -> bool:
    """Whether ``text`` holds something shaped like a credential."""
    if _BEARER_RE.search(text) or _URL_PASSWORD_RE.search(text):
        return True
    for word in _WORD_SPLIT_RE.split(text):
        if _KEY_PREFIX_RE.match(word) or _HF_TOKEN_RE.match(word) or _random_token(word):
            return True
    return False


def redact(text: str, known: Iterable[str | None] = ()) -> str:
    """``text`` with every known secret and every credential-shaped word replaced."""
    for secret in known:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _BEARER_TOKEN_RE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _URL_PASSWORD_PART_RE.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
    text = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _masked_blocks(text)
    text = _KEY_VALUE_RE.sub(_masked_value, text)
    text = _KEY_PREFIX_RE.sub(REDACTED, text)
    text = _HF_TOKEN_RE.sub(REDACTED, text)
    return "".join(
        REDACTED if _random_token(part) else part for part in _WORD_SPLIT_RE_KEEP.split(text)
    )


def _masked_value(match: re.Match[str]) -> str:
    value = match["quoted"] if match["quote"] else match["bare"]
    if match["bare"] and match["op"] == "=":
        value = value.split()[0]  # NAME=value rest: an assignment ends at a space
    # "[redacted" (its "]" ends a bare value): an earlier rule masked it already.
    if not value or not secret_key_name(match["key"]) or REDACTED[:-1] in value:
        return match[0]
    if _REFERENCE_RE.fullmatch(value.strip()):
        return match[0]
    scheme = _SCHEME_RE.match(value)
    masked = value[: scheme.end() - 1] + REDACTED if scheme else REDACTED
    quote = match["quote"] or ""
    head = f"{match['key']}{match['close']}{match['sep']}{quote}{masked}{quote}"
    if match["bare"] and match["op"] == "=":
        return head + match["bare"][len(value) :]
    return head


def _masked_blocks(text: str) -> str:
    """The lines of a YAML block scalar under a secret key name (``password: |``)."""
    lines = text.split("\n")
    out = []
    under: int | None = None  # the indent of the key whose block is being masked
    for line in lines:
        indent = len(line) - len(line.lstrip(" \t"))
        if under is not None and (not line.strip() or indent > under):
            out.append(line[:indent] + REDACTED if line.strip() else line)
            continue
        under = None
        block = _BLOCK_RE.match(line)
        if block and secret_key_name(block["key"].strip("\"'")):
            under = len(block["indent"].replace("-", " "))
        out.append(line)
    return "\n".join(out)


# Splits on separators but keeps them, so that the text is rebuilt as it was.
_WORD_SPLIT_RE_KEEP = re.compile(r"([\s\"'`=:,;&?()\[\]{}<>]+)")
