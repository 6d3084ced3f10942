"""The asyncssh transport's own choices (its sends run in test_deliver.py, over the in-process
asyncssh server)."""

from __future__ import annotations

from dittohead.client.transport import builtin


def test_cipher_preference_puts_aes_gcm_first() -> None:
    algs = builtin.cipher_preference()
    assert algs[:2] == ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    assert len(algs) == len(set(algs))
    assert "chacha20-poly1305@openssh.com" in algs
