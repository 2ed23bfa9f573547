"""Tests of qwen_sse.debugproxy.secrets: which headers carry a credential, and its masking in
headers, text and a body received in reads (an echo split across reads included)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from qwen_sse.debugproxy.secrets import Secrets
from tests.chunkings import every_chunking

KEY = "sk-test-proxy-1234"
MASK = "sk-***************"


def test_the_credential_headers_and_their_shown_form() -> None:
    secrets = Secrets({"Authorization": f"Bearer {KEY}", "Accept": "text/event-stream"})
    assert secrets
    assert KEY not in repr(secrets)
    assert secrets.request_headers(
        {"Authorization": f"Bearer {KEY}", "X-Echo": f"key={KEY}", "Accept": "*/*"}
    ) == {"Authorization": "Bearer ***", "X-Echo": f"key={MASK}", "Accept": "*/*"}
    anthropic = Secrets({"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert anthropic.request_headers({"x-api-key": KEY}) == {"x-api-key": "***"}
    assert anthropic.text(f"echo {KEY}") == f"echo {MASK}"
    azure = Secrets({"api-key": "short"})
    assert azure.data(b"a short key") == b"a ***** key"
    assert not Secrets({"Accept": "*/*"})
    assert Secrets({"Accept": "*/*"}).text(KEY) == KEY


def test_masks_keep_lengths_and_every_credential_goes() -> None:
    secrets = Secrets({"Authorization": f"Bearer {KEY}", "x-api-key": "sk-other-key-99"})
    text = f"{KEY} and sk-other-key-99 and {KEY}{KEY}"
    masked = secrets.text(text)
    assert len(masked) == len(text)
    assert KEY not in masked
    assert "sk-other-key-99" not in masked
    assert secrets.headers({"x-echo": KEY}) == {"x-echo": MASK}


def masked_reads(secrets: Secrets, pieces: list[bytes]) -> list[tuple[bytes, float]]:
    mask = secrets.stream()
    out: list[tuple[bytes, float]] = []
    for number, piece in enumerate(pieces):
        out += mask.feed(piece, float(number))
    return out + mask.finish()


def test_an_echo_split_across_reads_is_masked_under_every_chunking() -> None:
    secrets = Secrets({"Authorization": f"Bearer {KEY}"})
    body = f'data: {{"error": "bad key {KEY}"}}\n\ndata: s\n\n'.encode()
    expected = body.replace(KEY.encode(), MASK.encode())
    for label, pieces in every_chunking(body):
        out = masked_reads(secrets, pieces)
        assert b"".join(piece for piece, _ in out) == expected, label
        # The reads keep their sizes, order and times: a recording's boundaries stay.
        assert [len(piece) for piece, _ in out] == [len(piece) for piece in pieces], label
        assert [at_s for _, at_s in out] == [float(n) for n in range(len(pieces))], label


def test_reads_go_at_once_unless_they_end_with_the_start_of_a_key() -> None:
    mask = Secrets({"Authorization": f"Bearer {KEY}"}).stream()
    assert mask.feed(b"data: 1\n\n", 0.0) == [(b"data: 1\n\n", 0.0)]
    assert mask.feed(b"data: sk-te", 1.0) == []  # could be the key: held
    assert mask.feed(b"a\n\n", 2.0) == [(b"data: sk-te", 1.0), (b"a\n\n", 2.0)]
    assert mask.feed(b"x sk-test-pro", 3.0) == []
    assert mask.finish() == [(b"x sk-test-pro", 3.0)]


def test_without_credentials_reads_pass_untouched() -> None:
    mask = Secrets({}).stream()
    piece = b"data: sk-test-proxy-1234\n\n"
    assert mask.feed(piece, 0.5)[0][0] is piece


@given(
    st.lists(
        st.one_of(st.sampled_from([KEY.encode(), b"sk-", b"sk-test", b"\n"]), st.binary()),
        max_size=12,
    ),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_masking_law(parts: list[bytes], cuts: list[int]) -> None:
    """Any body, any reads: the reads come out in full, in order, with their sizes, and
    together are the whole body masked at once; none holds the key."""
    secrets = Secrets({"x-api-key": KEY})
    body = b"".join(parts)
    points = sorted({min(cut, len(body)) for cut in cuts} | {0, len(body)})
    pieces = [body[a:b] for a, b in itertools.pairwise(points) if b > a]
    out = masked_reads(secrets, pieces)
    joined = b"".join(piece for piece, _ in out)
    assert joined == secrets.data(body)
    assert KEY.encode() not in joined
    assert [len(piece) for piece, _ in out] == [len(piece) for piece in pieces]
