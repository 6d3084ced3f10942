"""Who hears about a notice, and the plain-text mail they get (docs/study-runners/mail.md shows
each kind as a study runner reads it).

Written for a PI, not an admin: which study, which station (its display name), who sent it,
when (the server's local time and UTC), how many files and the first stored names; for a
quarantine what happened and what to do. Several notices for one person become one digest.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from dittohead.receiver.config.model import Config, Mail
from dittohead.receiver.processor.notices import Notice

#: the order kinds are listed in a digest: what needs action first
_ORDER = {"quarantined": 0, "disk": 1, "silent": 2, "finalized": 3}
_NAMES_SHOWN = 5
_RULE = "-" * 72


def recipients(config: Config, notice: Notice) -> list[str]:
    """The addresses `notice` goes to, under the configuration as it is now."""
    mail = config.mail
    if mail is None or (notice.kind == "finalized" and not mail.on_success):
        return []
    studies = [notice.study] if notice.study else list(notice.studies)
    found: list[str] = []
    for name in studies:
        study = config.studies.get(name)
        if study is not None:
            found += study.notify
    if notice.kind in ("finalized", "quarantined") and notice.uploader:
        own = mail.uploader(notice.uploader)
        if own is not None:
            found.append(own)
    if notice.kind != "finalized":
        found += mail.admins
    unique: dict[str, str] = {}
    for address in found:
        unique.setdefault(address.lower(), address)
    return list(unique.values())


def when(timestamp: float) -> str:
    """``2026-12-06 07:49 CET (06:49 UTC)``: the server's local time and UTC."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    local = moment.astimezone()
    return f"{local:%Y-%m-%d %H:%M:%S %Z} ({moment:%Y-%m-%d %H:%M:%S} UTC)"


def _received(notice: Notice) -> float:
    if notice.received_at:
        try:
            return datetime.fromisoformat(notice.received_at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return notice.created


def station(config: Config, source: str) -> str:
    name = config.source_name(source)
    return f"{name} ({source})" if name != source else source


def subject(config: Config, notice: Notice) -> str:
    where = station(config, notice.source)
    if notice.kind == "finalized":
        return f"{notice.study}: {notice.files} files from {where} stored"
    if notice.kind == "quarantined":
        return f"{notice.study}: an upload from {where} was NOT stored (quarantined)"
    if notice.kind == "disk":
        return f"disk {notice.percent:.0f}% full ({', '.join(notice.studies) or notice.mount})"
    return f"station {where} has sent nothing since {when(notice.last_seen)[:10]}"


def body(config: Config, notice: Notice) -> str:
    """The text about one notice (a mail of its own, or a section of a digest)."""
    lines: list[str] = []
    add = lines.append
    study = config.studies.get(notice.study)
    if notice.kind in ("finalized", "quarantined"):
        add(f"Study:     {notice.study}")
        add(f"Station:   {station(config, notice.source)}")
        add(f"Sent by:   {notice.uploader or 'unknown'}")
        add(f"Received:  {when(_received(notice))}")
        add(f"Upload id: {notice.entry}")
    if notice.kind == "finalized":
        add(
            f"Files:     {notice.files} ({notice.stored} stored, "
            f"{notice.duplicates} already there with the same content)"
        )
        if study is not None:
            add(f"Stored in: {study.destination}")
        if notice.names:
            shown = notice.names[:_NAMES_SHOWN]
            more = notice.stored - len(shown)
            add("")
            add("Stored as:" if not more else f"Stored as (the first {len(shown)}):")
            lines += [f"  {name}" for name in shown]
            if more > 0:
                add(f"  ... and {more} more")
        add("")
        add("Nothing to do: every file is stored and recorded in the study's ledger.")
        add("A name like data~2.txt is a new version of data.txt; the older one is kept.")
    elif notice.kind == "quarantined":
        add("")
        add("What happened:")
        add(f"  The server did not store this upload: {notice.reason}")
        add("  Nothing from it was added to the study's folder. The upload is kept aside")
        add("  on the server (in the study's quarantine folder) for an admin to look at.")
        add("")
        add("What to do:")
        add("  Send the folder again from the station (dittohead send, or the dittohead")
        add("  window): only what is not stored yet is sent. If it is refused again, forward")
        add("  this mail to your dittohead admin and quote the upload id above.")
    elif notice.kind == "disk":
        what = (
            "the inbox, where every upload waits until it is stored"
            if notice.what == "inbox"
            else "the destination folder"
        )
        add(f"File system: {notice.mount}")
        add(f"Holds:       {what}")
        add(f"Studies:     {', '.join(notice.studies) or '-'}")
        add(f"Full:        {notice.percent:.1f}% (warning level {notice.level}%)")
        add(f"Checked:     {when(notice.created)}")
        add("")
        add("What this means:")
        if notice.what == "inbox":
            add("  When it is full, uploads are refused and collectors see an error.")
        else:
            add("  When it is full, uploads wait on the server and nothing new is stored.")
        add("  Nothing has been lost. You hear about this level once; again only after the")
        add("  disk has dropped clearly below it and filled up again.")
        add("")
        add("What to do: ask your admin for more space, or move finished data elsewhere.")
    else:
        add(f"Station:    {station(config, notice.source)}")
        add(f"Last sent:  {when(notice.last_seen)}")
        add(f"Studies:    {', '.join(notice.studies) or '-'}")
        if config.stations.silent_after:
            add(f"Quiet for more than: {_duration(config.stations.silent_after)}")
        add("")
        add("What this means:")
        add("  This station has sent before but nothing for a while. If data is still being")
        add("  collected there, it is not arriving. You hear about it once; again only after")
        add("  the station has sent once more and fallen silent again.")
        add("")
        add("What to do: check the station's PC: is it on, and does dittohead send still")
        add("  work there? If the study has paused on purpose, ignore this mail.")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} seconds"


def _digest_subject(config: Config, notices: list[Notice]) -> str:
    counts: dict[str, int] = {}
    for notice in notices:
        counts[notice.kind] = counts.get(notice.kind, 0) + 1
    words = {
        "quarantined": "quarantined",
        "disk": "disk warnings",
        "silent": "silent stations",
        "finalized": "uploads stored",
    }
    parts = [f"{counts[k]} {words[k]}" for k in sorted(counts, key=_ORDER.__getitem__)]
    studies = sorted(
        {n.study for n in notices if n.study} | {s for n in notices for s in n.studies}
    )
    where = f" ({', '.join(studies)})" if studies else ""
    return f"{len(notices)} notices{where}: {', '.join(parts)}"


def message(config: Config, mail: Mail, address: str, notices: Iterable[Notice]) -> EmailMessage:
    """One plain-text mail to `address` about `notices` (a digest when there are several)."""
    items = sorted(notices, key=lambda n: (_ORDER[n.kind], n.created, n.id))
    msg = EmailMessage()
    msg["From"] = f"dittohead <{mail.sender}>"
    msg["To"] = address
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid("dittohead", domain=mail.sender.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: vacation responders stay quiet
    if len(items) == 1:
        msg["Subject"] = f"[dittohead] {subject(config, items[0])}"
        text = body(config, items[0])
    else:
        msg["Subject"] = f"[dittohead] {_digest_subject(config, items)}"
        sections = [
            f"{i}. {subject(config, n)}\n\n{body(config, n)}" for i, n in enumerate(items, 1)
        ]
        text = (
            f"{len(items)} things happened since the last mail dittohead sent you.\n\n"
            + f"\n\n{_RULE}\n\n".join(sections)
        )
    footer = (
        "\n\n-- \nThis mail was sent by dittohead, the lab's file drop. You get it because you\n"
        "are a contact of the study or sent the upload; ask your admin to change that.\n"
    )
    msg.set_content(text + footer)
    return msg
