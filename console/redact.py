"""Secret detection and redaction: one set of rules for everything the console keeps or shows.

The config loader refuses a value that :func:`looks_secret`; probe errors, command output and
anything else headed for the store, a log or the screen go through :func:`redact` first. The
rules recognise provider keys by shape (``sk-``, ``hf_``, GitHub tokens, bearer tokens,
passwords in URLs, long random runs), values under secret key names however they are written
(``api_key:``, ``clientSecret``, ``PGPASSWORD=``, ``--api-key X``, a header, a YAML value on
the next line), credentials in URLs (``?auth=``, ``user:pass@``, webhook paths) and any exact
secret the caller knows (the API key a probe sent), also JSON-escaped, percent-encoded,
shell-quoted or in another case. :func:`redact` is idempotent. This module must not import
anything of the console's: every layer uses it.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"

# Key names that only ever hold a secret (compared in snake case: see secret_key_name).
_SECRET_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "token",
        "password",
        "passwd",
        "passphrase",
        "secret",
        "secret_key",
        "private_key",
        "authorization",
        "proxy_authorization",
        "master_key",
        # A session cookie is a credential: whoever has it is logged in.
        "cookie",
        "set_cookie",
    }
)
_SECRET_KEY_SUFFIXES = (
    "_api_key",
    "_token",
    "_password",
    "_passwd",
    "_passphrase",
    "_pwd",  # MYSQL_PWD; PWD alone is the working directory and stays readable
    "_secret",
    "_secret_key",  # aws_secret_key
    "_secret_access_key",  # aws_secret_access_key
    "_master_key",  # a LiteLLM proxy's, under general_settings
    "_private_key",
    "_authorization",
    "_cookie",
    # Written without a separator: PGPASSWORD, dbpasswd.
    "password",
    "passwd",
)
# accessToken -> access_Token: a camelCase key is read as its snake_case words.
_CAMEL_RE = re.compile(r"([a-z0-9])([A-Z])")
_KEY_PREFIX_RE = re.compile(
    r"(?:sk-|ghp_|gho_|ghu_|ghs_|github_pat_|glpat-|xox[abposr]-)[A-Za-z0-9_-]{6,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # an AWS access key id
)
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
# A credential in a URL's query: ?token=..., &api_key=..., ?auth=...
_QUERY_SECRET_RE = re.compile(
    r"(?i)([?&](?:access_token|api_key|apikey|auth|key|password|secret|sig|signature|token)=)"
    r"[^&\s#\"']+"
)
# A key on a line of its own (`password:`) whose value is on the lines indented under it.
_BARE_KEY_RE = re.compile(
    r"""^(?P<indent>[ \t]*-?[ \t]*)(?P<key>["']?[A-Za-z_][A-Za-z0-9_-]*["']?)[ \t]*:[ \t]*$"""
)
# A secret given to an option on a command line: `--password X`, `--api-key=X`. A value
# starting with `-` is the next option, not the secret.
_FLAG_VALUE_RE = re.compile(
    r"""(?<![\w-])(?P<flag>--?[A-Za-z][A-Za-z0-9_-]*)(?P<sep>[ \t]+|=)"""
    r"""(?P<value>"[^"\n]*"|'[^'\n]*'|(?!-)[^\s"']+)"""
)
# user:password given to curl (-u, --user, --proxy-user, -U). uid:gid (docker -u 1000:1000)
# is all digits and is kept.
_USER_PASS_RE = re.compile(
    r"""(?<![\w-])(?P<head>(?:-u|-U|--user|--proxy-user)(?:[ \t]+|=)?["']?[^\s:"'@]+:)"""
    r"""(?P<password>[^\s"']+)"""
)
# Incoming-webhook URLs whose path is the credential (Slack, Discord): the host stays.
_WEBHOOK_RE = re.compile(
    r"(?P<head>https://(?:hooks\.slack\.com/(?:services|workflows|triggers)/"
    r"|(?:discord|discordapp)\.com/api/webhooks/))[^\s\"'<>]+"
)

# What redact() replaces in free text: bearer tokens, prefixed keys, passwords in URLs.
_BEARER_TOKEN_RE = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_URL_PASSWORD_PART_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*:)[^/?#@\s]+(@)")


def secret_key_name(name: str) -> bool:
    """A mapping key such as ``api_key``, ``db_password``, ``clientSecret`` or
    ``Proxy-Authorization`` whose value is always a secret."""
    name = _CAMEL_RE.sub(r"\1_\2", name).lower().replace("-", "_")
    return name in _SECRET_KEYS or name.endswith(_SECRET_KEY_SUFFIXES)


def names_a_variable(value: str) -> bool:
    """Whether ``value`` says where a secret is (``os.environ/NAME``, ``${NAME}``) rather
    than being one: kept, it says which variable to check."""
    return bool(_REFERENCE_RE.fullmatch(value.strip()))


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
    """``text`` with every known secret and every credential-shaped word replaced.

    Idempotent: redacting the result again changes nothing."""
    text = _without_known(text, [s for s in known if s])
    text = _BEARER_TOKEN_RE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _URL_PASSWORD_PART_RE.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
    text = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _WEBHOOK_RE.sub(lambda m: m["head"] + REDACTED, text)
    text = _USER_PASS_RE.sub(_masked_password, text)
    text = _masked_blocks(text)
    text = _masked_pairs(text)
    text = _FLAG_VALUE_RE.sub(_masked_flag, text)
    text = _KEY_PREFIX_RE.sub(REDACTED, text)
    text = _HF_TOKEN_RE.sub(REDACTED, text)
    return "".join(
        REDACTED if _random_token(part) else part for part in _WORD_SPLIT_RE_KEEP.split(text)
    )


def _without_known(text: str, secrets: list[str]) -> str:
    """Each known secret replaced, also as it appears escaped in JSON, percent-encoded in a
    URL, quoted for a shell or in another case (an upper-cased log line). Matched only
    between the markers already there, so that a secret that is part of "[redacted]" does
    not eat into one."""
    if not secrets:
        return text
    forms = {form for secret in secrets for form in _encodings(secret)}
    pattern = re.compile(
        "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)), re.IGNORECASE
    )
    return REDACTED.join(pattern.sub(REDACTED, part) for part in text.split(REDACTED))


def _encodings(secret: str) -> set[str]:
    forms = {
        secret,
        json.dumps(secret)[1:-1],  # "ab\"cd" in a JSON string
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),  # a%2Bb in a query
        quote(secret),  # a path keeps its slashes
        quote_plus(secret),
        shlex.quote(secret),  # 'it'"'"'s' on a command line
    }
    return {f for f in forms if f}


def _masked_password(match: re.Match[str]) -> str:
    password = match["password"]
    if password.isdigit() or REDACTED[:-1] in password:
        return match[0]
    return match["head"] + REDACTED


def _masked_flag(match: re.Match[str]) -> str:
    value = match["value"]
    bare = value.strip("\"'")
    if not secret_key_name(match["flag"].lstrip("-")) or not bare or REDACTED[:-1] in value:
        return match[0]
    if _REFERENCE_RE.fullmatch(bare):
        return match[0]  # --api-key $OPENAI_API_KEY names the variable
    quote_mark = value[0] if value[0] in "\"'" else ""
    return f"{match['flag']}{match['sep']}{quote_mark}{REDACTED}{quote_mark}"


def _masked_pairs(text: str) -> str:
    """Every value under a secret key name masked. A key whose value is not masked is only
    stepped over, not its value with it: `note: the api_key: x`, `model=m token=x` hold a
    second key inside what reads as the first one's value."""
    out: list[str] = []
    pos = 0
    while (match := _KEY_VALUE_RE.search(text, pos)) is not None:
        masked = _masked_value(match, text)
        if masked is None:
            out.append(text[pos : match.end("sep")])
            pos = match.end("sep")
            continue
        out.append(text[pos : match.start()] + masked[0])
        pos = masked[1]
    out.append(text[pos:])
    return "".join(out)


def _masked_value(match: re.Match[str], text: str) -> tuple[str, int] | None:
    """The masked pair and where it ends in the text; None when it is to be kept."""
    value = match["quoted"] if match["quote"] else match["bare"]
    end = match.end()
    if match["bare"] and match["op"] == "=":
        value = value.split()[0]  # NAME=value rest: an assignment ends at a space
        end = match.start("bare") + len(value)
    opening = text[match.start() - 1 : match.start()]
    if match["bare"] and not match["close"] and opening in ("'", '"') and opening in value:
        # The pair is inside a quoted word (curl -H "Cookie: s=1" URL): it ends at the quote.
        value = value[: value.index(opening)]
        end = match.start("bare") + len(value)
    # "[redacted" (its "]" ends a bare value): an earlier rule masked it already.
    if not value or not secret_key_name(match["key"]) or REDACTED[:-1] in value:
        return None
    if _REFERENCE_RE.fullmatch(value.strip()):
        return None
    scheme = _SCHEME_RE.match(value)
    masked = value[: scheme.end() - 1] + REDACTED if scheme else REDACTED
    quote = match["quote"] or ""
    return f"{match['key']}{match['close']}{match['sep']}{quote}{masked}{quote}", end


def _masked_blocks(text: str) -> str:
    """The lines of a YAML block scalar under a secret key name (``password: |``), and those
    of a value written on the lines after its key (``password:`` then ``  hunter2``)."""
    lines = text.split("\n")
    out = []
    under: int | None = None  # the indent of the key whose block is being masked
    for line in lines:
        indent = len(line) - len(line.lstrip(" \t"))
        if under is not None and (not line.strip() or indent > under):
            out.append(line[:indent] + REDACTED if line.strip() else line)
            continue
        under = None
        block = _BLOCK_RE.match(line) or _BARE_KEY_RE.match(line)
        if block and secret_key_name(block["key"].strip("\"'")):
            under = len(block["indent"].replace("-", " "))
        out.append(line)
    return "\n".join(out)


# Splits on separators but keeps them, so that the text is rebuilt as it was.
_WORD_SPLIT_RE_KEEP = re.compile(r"([\s\"'`=:,;&?()\[\]{}<>]+)")
