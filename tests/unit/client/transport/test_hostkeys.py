"""hostkeys: the trust decision itself, without a network (the SSH tests cover the wiring)."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from dittohead.client.plan.state import user_known_hosts
from dittohead.client.transport.hostkeys import HostKeyPolicy, host_pattern
from dittohead.core.errors import HostKeyError, UsageError

HOST = "drop.example.org"


def _key(alg: str = "ssh-ed25519") -> asyncssh.SSHKey:
    return asyncssh.generate_private_key(alg).convert_to_public()


def _line(pattern: str, key: asyncssh.SSHKey) -> str:
    return f"{pattern} {key.export_public_key().decode().strip()}\n"


class Asked:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, server: str, fingerprint: str, key_type: str) -> bool:
        self.calls.append((server, fingerprint, key_type))
        return self.answer


def test_host_pattern_is_openssh_style() -> None:
    assert host_pattern(HOST, 22) == HOST
    assert host_pattern(HOST, 2222) == f"[{HOST}]:2222"


def test_first_use_asks_once_and_remembers(tmp_path: Path) -> None:
    key, ask = _key(), Asked(True)
    policy = HostKeyPolicy(HOST, 2222, user_file=tmp_path / "kh", ask=ask)
    policy.check("192.0.2.1", key)
    policy.check("192.0.2.1", key)  # a re-key during a long upload: not asked again
    assert ask.calls == [(f"{HOST}:2222", key.get_fingerprint("sha256"), "ssh-ed25519")]
    assert (tmp_path / "kh").read_text() == _line(f"[{HOST}]:2222", key)
    # a new connection finds it without asking
    later = HostKeyPolicy(HOST, 2222, user_file=tmp_path / "kh", ask=Asked(False))
    later.check("192.0.2.1", key)


def test_remembering_never_glues_onto_a_hand_edited_last_line(tmp_path: Path) -> None:
    other = _key()
    path = tmp_path / "kh"
    path.write_text(_line("elsewhere", other).rstrip("\n"))
    key = _key()
    HostKeyPolicy(HOST, user_file=path, ask=Asked(True)).check("", key)
    known = asyncssh.import_known_hosts(path.read_text())
    assert key in known.match(HOST, "", None)[0]
    assert other in known.match("elsewhere", "", None)[0]


def test_the_default_file_lives_in_the_state_folder(isolated_home: Path) -> None:
    assert user_known_hosts().parent == isolated_home / ".local" / "state" / "dittohead"


def test_a_changed_key_is_refused_even_if_the_user_would_say_yes(tmp_path: Path) -> None:
    old, new, ask = _key(), _key(), Asked(True)
    (tmp_path / "kh").write_text(_line(HOST, old))
    policy = HostKeyPolicy(HOST, user_file=tmp_path / "kh", ask=ask)
    with pytest.raises(HostKeyError, match="HAS CHANGED") as info:
        policy.check("", new)
    assert old.get_fingerprint("sha256") in info.value.message
    assert new.get_fingerprint("sha256") in info.value.message
    assert ask.calls == []


def test_a_different_key_type_from_a_known_server_counts_as_changed(tmp_path: Path) -> None:
    (tmp_path / "kh").write_text(_line(HOST, _key("ssh-ed25519")))
    policy = HostKeyPolicy(HOST, user_file=tmp_path / "kh", ask=Asked(True))
    assert policy.host_key_algs()[0] == "ssh-ed25519"  # the known type is asked for first
    with pytest.raises(HostKeyError, match="HAS CHANGED"):
        policy.check("", _key("ecdsa-sha2-nistp256"))


def test_entries_for_port_22_do_not_speak_for_other_ports_in_our_own_file(tmp_path: Path) -> None:
    (tmp_path / "kh").write_text(_line(HOST, _key()))
    ask = Asked(True)
    HostKeyPolicy(HOST, 2222, user_file=tmp_path / "kh", ask=ask).check("", _key())
    assert len(ask.calls) == 1  # asked, not refused as "changed"


def test_pinned_file_accepts_only_its_keys_and_never_asks(tmp_path: Path) -> None:
    key, other, ask = _key(), _key(), Asked(True)
    pinned = tmp_path / "pinned"
    pinned.write_text(_line(HOST, key))
    policy = HostKeyPolicy(HOST, pinned=pinned, user_file=tmp_path / "kh", ask=ask)
    policy.check("", key)
    assert policy.host_key_algs() == ["ssh-ed25519"]
    with pytest.raises(HostKeyError, match="not the one pinned"):
        policy.check("", other)
    with pytest.raises(HostKeyError, match="has no key for"):
        HostKeyPolicy("other.example.org", pinned=pinned, ask=ask).check("", key)
    assert ask.calls == []
    assert not (tmp_path / "kh").exists()


def test_pinned_by_address_matches_the_peer_address(tmp_path: Path) -> None:
    key = _key()
    pinned = tmp_path / "pinned"
    pinned.write_text(_line("192.0.2.7", key))
    HostKeyPolicy(HOST, pinned=pinned).check("192.0.2.7", key)


def test_revoked_keys_are_refused(tmp_path: Path) -> None:
    key = _key()
    pinned = tmp_path / "pinned"
    pinned.write_text(_line(HOST, key) + "@revoked " + _line(HOST, key))
    with pytest.raises(HostKeyError, match="revoked"):
        HostKeyPolicy(HOST, pinned=pinned).check("", key)


def test_unknown_server_without_a_way_to_ask_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HostKeyError, match="not known yet"):
        HostKeyPolicy(HOST, user_file=tmp_path / "kh").check("", _key())
    assert not (tmp_path / "kh").exists()


@pytest.mark.parametrize("content", [None, "@bogus-marker host ssh-ed25519 AAAA\n"])
def test_a_missing_or_broken_pinned_file_is_a_usage_error(
    tmp_path: Path, content: str | None
) -> None:
    pinned = tmp_path / "pinned"
    if content is not None:
        pinned.write_text(content)
    with pytest.raises(UsageError, match="nothing was sent"):
        HostKeyPolicy(HOST, pinned=pinned)
