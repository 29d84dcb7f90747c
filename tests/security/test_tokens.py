"""Token files: the format, errors that name the line and never the token, the
constant-time lookup, and reading the file again when it changes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from moerm import security
from moerm.security import FEEDBACK, SCORE, SecurityConfigError, TokenFile, bearer_token, parse_tokens

SCORER = "s" * 24
TRAINER = "t" * 24


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_tokens_and_scopes(tmp_path: Path) -> None:
    tokens = TokenFile(
        str(write(tmp_path / "tokens", f"# callers\n\n{SCORER} score\n  {TRAINER}  score,feedback\n"))
    )
    assert len(tokens) == 2
    assert tokens.scopes(SCORER) == {SCORE}
    assert tokens.scopes(TRAINER) == {SCORE, FEEDBACK}
    assert tokens.scopes("s" * 23) is None and tokens.scopes("") is None


@pytest.mark.parametrize(
    "text, message",
    [
        (f"{SCORER} score\n{SCORER} feedback\n", "tokens:2: the same token is listed twice"),
        (f"{SCORER} score,steer\n", "tokens:1: unknown scope steer"),
        (f"{SCORER}\n", "tokens:1: expected 'TOKEN SCOPE[,SCOPE]'"),
        ("short score\n", "tokens:1: a token needs at least 16 characters"),
        ("# nothing\n", "no tokens"),
    ],
)
def test_bad_token_files_name_the_line_not_the_token(text: str, message: str) -> None:
    with pytest.raises(SecurityConfigError) as caught:
        parse_tokens(text, "tokens")
    assert message in str(caught.value)
    assert SCORER not in str(caught.value)


def test_every_known_token_is_compared_whatever_the_token(tmp_path: Path, monkeypatch) -> None:
    """The lookup never stops at the first match or mismatch: one constant-time
    comparison of equal-length digests per known token, for a right, a nearly
    right and a wrong token alike."""
    lines = "".join(f"{chr(97 + k) * 20} score\n" for k in range(5))
    tokens = TokenFile(str(write(tmp_path / "tokens", lines)))
    compared: list[tuple[int, int]] = []
    real = security.hmac.compare_digest

    def counting(a, b):
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    for token, found in [("a" * 20, True), ("a" * 19 + "b", False), ("zzz", False), ("e" * 20, True)]:
        compared.clear()
        assert (tokens.scopes(token) is not None) == found
        assert compared == [(32, 32)] * 5


def test_the_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "tokens", f"{SCORER} score\n")
    tokens = TokenFile(str(path), check_interval_s=0.0)
    assert tokens.scopes(SCORER) == {SCORE}
    # Rotated the way Kubernetes updates a Secret: a new file swapped in.
    write(tmp_path / "tokens.new", f"{TRAINER} score,feedback\n")
    os.replace(tmp_path / "tokens.new", path)
    assert tokens.scopes(TRAINER) == {SCORE, FEEDBACK}
    assert tokens.scopes(SCORER) is None
    # A broken new file keeps the tokens that worked.
    time.sleep(0.01)
    write(path, "oops\n")
    assert tokens.scopes(TRAINER) == {SCORE, FEEDBACK}


@pytest.mark.parametrize(
    "metadata, token",
    [
        ((), None),
        ((("x-other", "1"),), None),
        ((("authorization", f"Bearer {SCORER}"),), SCORER),
        ((("Authorization", f"bearer   {SCORER} "),), SCORER),
        ((("authorization", f"Basic {SCORER}"),), ""),
        ((("authorization", "Bearer"),), ""),
    ],
)
def test_bearer_token(metadata, token) -> None:
    assert bearer_token(metadata) == token
