"""What is secret, and how it is hidden: the one rule every output uses (config, diff, status,
events, history, the controller's log, exports).

An environment entry is secret by its name (TOKEN, KEY, SECRET, PASS, CREDENTIAL, AUTH, DSN,
WEBHOOK, COOKIE...) or by its value (a URL with userinfo or a credential in its query, a
webhook URL, a JWT, a PEM private key, an `Authorization` scheme, a well-known token prefix).
Command lines are masked word by word: a secret-looking word, the value of a secret-named
option (`--api-key X`, `--token=X`), or a secret-named assignment (`DB_PASSWD=X`). Free text
(log lines, journal messages, output tails) gets the value rule and the assignment rule.

Masking never reveals anything derived from the value: no length, no prefix, no hash.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from fleet.spec.lazy_pattern import LazyPattern

MASK = "(sensitive)"


# Substrings of a variable or option name that mark its value as secret. Matched anywhere in
# the upper-cased name, so API_KEY, Keyring, PGPASS, SMTP_PASSWD and SERVICE_ACCOUNT_CREDENTIAL
# are all secret; a false positive only hides a value, a false negative prints one.
_NAME_PARTS = ("TOKEN", "KEY", "SECRET", "PASS", "PWD", "CREDENTIAL", "DSN", "WEBHOOK", "COOKIE", "SIGNATURE",
               "PRIVATE", "BEARER")
# Matched as a whole word of the name only: AUTH, BASIC_AUTH, AUTH_HEADER, AUTHORIZATION (not AUTHOR).
_SECRET_WORDS = ("AUTH", "AUTHORIZATION", "AUTHN", "OAUTH", "PW", "PIN", "OTP")
_NAME_WORDS = LazyPattern(r"(?:^|[^A-Z0-9])(?:" + "|".join(_SECRET_WORDS) + r")(?:$|[^A-Z0-9])")
# Names that contain a secret word but never hold a secret (the shell's working directories).
_NOT_SECRET_NAMES = frozenset({"PWD", "OLDPWD"})

# Token formats issued by common services: GitHub, GitLab, Slack, OpenAI/Anthropic/Stripe,
# AWS access keys, Google API keys, Hugging Face, npm, PyPI, SendGrid, Telegram bot tokens.
_TOKEN_PREFIXES = LazyPattern(
    r"(?<![A-Za-z0-9])(?:"
    r"gh[pousr]_[A-Za-z0-9]{8,}|github_pat_[A-Za-z0-9_]{8,}|glpat-[A-Za-z0-9_\-]{8,}"
    r"|xox[abposre]-[A-Za-z0-9\-]{6,}|xapp-[A-Za-z0-9\-]{6,}"
    r"|sk-[A-Za-z0-9_\-]{6,}|sk_(?:live|test)_[A-Za-z0-9]{6,}|rk_(?:live|test)_[A-Za-z0-9]{6,}"
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{12,}|AIza[A-Za-z0-9_\-]{20,}"
    r"|hf_[A-Za-z0-9]{10,}|npm_[A-Za-z0-9]{20,}|pypi-[A-Za-z0-9_\-]{20,}|SG\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"
    r"|\d{6,12}:[A-Za-z0-9_\-]{30,}"
    r")")
_JWT = LazyPattern(r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*")
_PEM_PRIVATE = LazyPattern(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
# A credential after an Authorization scheme: 8+ characters with a digit, a symbol or mixed case
# (so "Bot started" and "Basic authentication" stay readable).
_AUTH_SCHEME = LazyPattern(r"(?<![A-Za-z0-9])(?:[Bb]earer|[Bb]asic|[Dd]igest|[Tt]oken|Bot|ApiKey)\s+"
                          r"(?=[A-Za-z0-9._~+/=:\-]*(?:[0-9]|[._~+/=:\-][A-Za-z0-9]|[a-z][A-Z]|[A-Z][a-z]*[A-Z]))"
                          r"[A-Za-z0-9._~+/=:\-]{8,}")
# user:password@ in a URL, or a user part that is a key (a Sentry DSN's https://<key>@host/1),
# not a login name such as git@ or deploy@.
_URL_USERINFO = LazyPattern(r"(?i)\b[a-z][a-z0-9+.\-]*://(?P<user>[^/?#@:\s]*)(?P<password>:[^/?#@\s]*)?@")
_KEY_LIKE_USER = LazyPattern(r"^(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9_\-]{8,}$|^[A-Za-z0-9_\-]{20,}$")
_URL = LazyPattern(r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s\"'<>]+")
_PEM_BLOCK = LazyPattern(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*-----|$)", re.S)
# Hosts whose URL path is itself the credential.
_WEBHOOK_HOSTS = ("hooks.slack.com", "discord.com", "discordapp.com", "outlook.office.com", "webhook.office.com",
                  "chat.googleapis.com", "api.telegram.org")
_ASSIGNMENT_NAME = LazyPattern(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
# NAME=value or NAME: value inside free text, where NAME is secret-looking. A bare value never ends in ':' (taken
# whole, atomically): in `note: password: x` the `password: x` is the assignment, not `note: password:`.
_ASSIGNMENT = LazyPattern(r"(?P<name>(?<![A-Za-z0-9_\-])-{0,2}[A-Za-z_][A-Za-z0-9_.\-]*)(?P<sep>\s*[=:]\s*)"
                         r"(?P<value>\"[^\"]*\"|'[^']*'|(?>[^\s,;&\"']+)(?<!:))")
# --name value inside free text (a command line quoted in a message).
_FLAG_VALUE = LazyPattern(r"(?<!\S)(?P<name>--[A-Za-z][A-Za-z0-9_\-]*)(?P<sep>\s+)"
                         r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s\-\"'][^\s]*)")
# A long single word of letters and digits, as API keys without a known prefix are.
_OPAQUE = LazyPattern(r"^(?=[^/]*[0-9])(?=[^/]*[A-Za-z])[A-Za-z0-9_\-+=]{32,}$")


def secret_name(name: str) -> bool:
    """A variable or option name whose value must never be printed."""
    upper = name.upper().lstrip("-")
    if upper in _NOT_SECRET_NAMES:
        return False
    return any(part in upper for part in _NAME_PARTS) or bool(_NAME_WORDS.search(upper))


def _url_carries_credentials(url: str) -> bool:
    import urllib.parse  # only for a value that holds a URL: most commands never meet one

    try:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return bool(_URL_USERINFO.match(url))
    userinfo = _URL_USERINFO.match(url)
    if userinfo and (userinfo.group("password") or _KEY_LIKE_USER.match(userinfo.group("user"))
                     or "sentry" in host):
        return True
    if any(host == h or host.endswith("." + h) for h in _WEBHOOK_HOSTS) or "webhook" in parts.path.lower():
        return True
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + \
        urllib.parse.parse_qsl(parts.fragment, keep_blank_values=True)
    return any(secret_name(key) and value for key, value in query)


def secret_value(value: object) -> bool:
    """A value that is a credential whatever its name: see the module docstring for the forms."""
    if not isinstance(value, str) or not value:
        return False
    if (_TOKEN_PREFIXES.search(value) or _JWT.search(value) or _PEM_PRIVATE.search(value)
            or _AUTH_SCHEME.search(value) or _assignment_secret(value)):
        return True
    if any(_url_carries_credentials(m.group(0)) for m in _URL.finditer(value)):
        return True
    return bool(_OPAQUE.match(value.strip()))


def is_secret(name: str, value: object = None) -> bool:
    """The rule: secret by name or by value."""
    return secret_name(name) or secret_value(value)


def mask_env(env: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k: (MASK if is_secret(k, v) else v) for k, v in env}


def mask_argv(argv: Sequence[str]) -> list[str]:
    """A command line with secret words masked: `--token X`, `--token=X`, `KEY=X`, and secret values."""
    out: list[str] = []
    hide_next = False
    for word in argv:
        word = str(word)
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        if word.startswith("-") and "=" in word:
            flag, _, value = word.partition("=")
            out.append(f"{flag}={MASK}" if is_secret(flag.lstrip("-"), value) else word)
        elif word.startswith("--") and len(word) > 2:
            out.append(word)
            hide_next = secret_name(word[2:])
        elif "=" in word and _ASSIGNMENT_NAME.match(word.partition("=")[0]):
            name, _, value = word.partition("=")
            out.append(f"{name}={MASK}" if is_secret(name, value) else word)
        else:
            out.append(MASK if secret_value(word) else word)
    return out


def _assignment_secret(text: str) -> bool:
    """`password=x`, `api_key: x` inside a longer value (connection strings, headers)."""
    return any(secret_name(m.group("name")) and m.group("value").strip("\"'") for m in _ASSIGNMENT.finditer(text))


# What every pattern of the value rule needs in the text, in its own case: a URL's scheme separator, a JWT,
# each token format's prefix, each Authorization scheme (a PEM key's header and the schemes Bearer, Token and
# ApiKey hold a secret word, below).
_VALUE_TRIGGERS = ("://", "eyJ", "gh", "github_pat_", "glpat-", "xox", "xapp-", "sk-", "sk_", "rk_",
                   "AKIA", "ASIA", "AGPA", "AIDA", "AROA", "AIza", "hf_", "npm_", "pypi-", "SG.",
                   "asic", "igest", "Bot")
_BOT_ID = LazyPattern(r"\d{6}:")  # a Telegram bot token's numeric id


def _may_hold_secret(text: str) -> bool:
    """False only for a text no rule of mask_text can change: most journal messages and log lines ("stopping",
    "author" included). They are then returned as they are, without compiling a pattern (~3 ms for a CLI command
    that writes one journal line) or running six (tests/test_secrets_rule.py holds the two paths equal)."""
    if any(trigger in text for trigger in _VALUE_TRIGGERS):
        return True
    if ":" in text and _BOT_ID.search(text):
        return True
    upper = text.upper()
    if any(part in upper for part in _NAME_PARTS):
        return True
    # A name holds a secret word only as a whole word: in the text it stands between two characters that are no
    # letter or digit (the name's own `_`, `.`, `-`, or what may surround a name: a space, `=`, `:`).
    if not text.isascii():  # upper-casing may add letters (ß is SS): any occurrence counts
        return any(word in upper for word in _SECRET_WORDS)
    return any(_whole_word_at(upper, word) for word in _SECRET_WORDS)


def _whole_word_at(upper: str, word: str) -> bool:
    start = upper.find(word)
    while start >= 0:
        end = start + len(word)
        if (start == 0 or not upper[start - 1].isalnum()) and (end == len(upper) or not upper[end].isalnum()):
            return True
        start = upper.find(word, start + 1)
    return False


def mask_text(text: str, known: Iterable[str] = ()) -> str:
    """Free text (a log line, a journal message, a command's output) with secrets replaced by MASK.

    `known` are values that are secret by their name elsewhere (the env of the specs), which no
    pattern can recognise in free text.
    """
    if not text:
        return text
    # Short values ("true", "1") would mask ordinary words all over the text.
    for value in sorted({k for k in known if k and len(k) >= 6}, key=len, reverse=True):
        text = text.replace(value, MASK)
    return _masked_by_patterns(text) if _may_hold_secret(text) else text


def _masked_by_patterns(text: str) -> str:
    text = _PEM_BLOCK.sub(MASK, text)
    for pattern in (_TOKEN_PREFIXES, _JWT, _AUTH_SCHEME):
        text = pattern.sub(MASK, text)
    text = _URL.sub(lambda m: MASK if _url_carries_credentials(m.group(0)) else m.group(0), text)

    def assignment(m: re.Match) -> str:
        name, sep, value = m.group("name"), m.group("sep"), m.group("value")
        if secret_name(name.lstrip("-")) and value != MASK:
            return f"{name}{sep}{MASK}"
        # `failed: DB_PASSWD=x`: the value of a harmless name may hold the assignment (strictly shorter: ends)
        return f"{name}{sep}{_ASSIGNMENT.sub(assignment, value)}"

    return _FLAG_VALUE.sub(assignment, _ASSIGNMENT.sub(assignment, text))


def secret_values(env: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The values of the secret entries of an env, for mask_text(known=...)."""
    return tuple(sorted({v for k, v in env if v and is_secret(k, v)}))


def mask_data(value: object, known: Iterable[str] = ()) -> object:
    """A JSON-like value with every secret in it masked: secret-named keys, and mask_text on strings."""
    known = tuple(known)
    if isinstance(value, str):
        return mask_text(value, known)
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and isinstance(v, str) and secret_name(k) else mask_data(v, known))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_data(v, known) for v in value]
    return value


def secret_words(argv: Sequence[str]) -> tuple[str, ...]:
    """The secrets mask_argv hides in a command line, for mask_text(known=...)."""
    found = []
    for word, shown in zip(argv, mask_argv(argv), strict=True):
        if word != shown:
            found.append(word.partition("=")[2] if shown.endswith("=" + MASK) else word)
    return tuple(found)
