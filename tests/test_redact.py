"""One set of redaction rules: what never reaches the store, a log or the screen."""

from __future__ import annotations

import pytest

from console.redact import looks_secret, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "HTTP 401: Bearer abcdef0123456789xyz is invalid",
            "HTTP 401: Bearer [redacted] is invalid",
        ),
        ("key sk-proj-AbC123dEf456 refused", "key [redacted] refused"),
        ("token hf_abcdefghijklmnopqrstu expired", "token [redacted] expired"),
        ("GET https://bob:hunter2@gw.example/v1", "GET https://bob:[redacted]@gw.example/v1"),
        # A model revision pinned to a commit (40 lowercase hex) is no secret...
        (
            "revision 8f3a9c2e71b4d6f0a5e8c3b2d1f4a7e9c6b5d8f1 x",
            "revision 8f3a9c2e71b4d6f0a5e8c3b2d1f4a7e9c6b5d8f1 x",
        ),
        # ...a random run of any other shape is.
        ("id 8F3a9c2e71B4d6f0a5e8c3b2d1f4a7e9c6b5d8f1Qz x", "id [redacted] x"),
        ("id 8f3a9c2e71b4d6f0a5e8c3b2d1f4a7e9c6b5d8 x", "id [redacted] x"),
        (
            "model Mistral-Nemo-Instruct-2407-FP8 is slow",
            "model Mistral-Nemo-Instruct-2407-FP8 is slow",
        ),
    ],
)
def test_redact_replaces_credentials_and_keeps_the_rest(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_known_secret_is_redacted_whatever_its_shape() -> None:
    assert redact("echo: pw=plainword1", known=["plainword1", None]) == "echo: pw=[redacted]"


def test_the_config_scanner_and_redaction_agree() -> None:
    for secret in (
        "sk-proj-AbC123dEf456",
        "Bearer abcdef0123456789xyz",
        "hf_abcdefghijklmnopqrstu",
    ):
        assert looks_secret(secret)
        assert "[redacted]" in redact(secret)
    assert not looks_secret("meta-llama/Llama-3.1-8B-Instruct")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A value under a key name that only ever holds a secret, whatever its shape.
        ("    api_key: Backup-Prod-Key-7781", "    api_key: [redacted]"),
        ("password: p@ss", "password: [redacted]"),
        ("  master_key: sk-1234", "  master_key: [redacted]"),
        ('{"api_key": "two words", "model": "m"}', '{"api_key": "[redacted]", "model": "m"}'),
        ("DB_PASSWORD=hunter2 rest", "DB_PASSWORD=[redacted] rest"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_access_key = [redacted]",
        ),
        ("-    api_key: Backup-Prod-Key-7781", "-    api_key: [redacted]"),  # a diff line
        # Where the secret is, rather than the secret: kept, it says what to check.
        ("api_key: os.environ/OPENAI_API_KEY", "api_key: os.environ/OPENAI_API_KEY"),
        ("token: ${HF_TOKEN}", "token: ${HF_TOKEN}"),
        # Other keys stay as they are.
        ("max_tokens: 512, weight: 0.5", "max_tokens: 512, weight: 0.5"),
        # A header keeps its scheme and loses its credentials, a JWT's dots included.
        ("Authorization: Bearer abcdefg", "Authorization: Bearer [redacted]"),
        (
            "sent Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIi.R8U ok",
            "sent Authorization: Bearer [redacted] ok",
        ),
        # A value of several words, a quote of the other kind inside quotes, a block scalar.
        ("password: correct horse battery staple", "password: [redacted]"),
        ('master_key: "it\'s-topsecret-Q"', 'master_key: "[redacted]"'),
        ("  password: |\n    line one\n    line two\n  model: x", None),
        # A credential in a URL's query, where the scheme's colon is no key.
        ("url: http://h:1/x?token=abc123&y=2", "url: http://h:1/x?token=[redacted]&y=2"),
    ],
)
def test_a_value_under_a_secret_key_name_is_redacted(text: str, expected: str | None) -> None:
    masked = redact(text)
    if expected is None:  # the block: none of its lines is left
        assert "line" not in masked and masked.endswith("model: x")
    else:
        assert masked == expected
    assert redact(masked) == masked  # masking twice changes nothing ("[redacted]]" was seen)
