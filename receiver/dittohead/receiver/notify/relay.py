"""SMTP to the configured relay: STARTTLS and a login when configured, one mail per recipient.

Outcomes are sorted the way delivery needs them: the relay took the mail (mark it delivered),
the relay refused this recipient for good (5xx: log it and stop trying, so that one bad address
never blocks the queue), or "not now" (4xx, or the relay is unreachable: keep the notice).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType

from dittohead.core.errors import ConfigError, DittoheadError
from dittohead.receiver.config.model import Mail

log = logging.getLogger(__name__)

#: the name under which the unit's LoadCredential= hands over the relay password
CREDENTIAL = "smtp-password"
TIMEOUT = 60.0


class RelayDown(DittoheadError):
    """The mail relay cannot be reached; the notices stay queued and go out on a later run."""

    exit_code = 75  # EX_TEMPFAIL


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # permanently, for this recipient
    LATER = "later"


def read_password(mail: Mail, credentials: str | None = None) -> str | None:
    """The relay password: from systemd's credential folder when the unit handed it over
    (LoadCredential=), else from `mail.password_file` itself (a root-run test, say)."""
    if mail.password_file is None:
        return None
    folder = credentials if credentials is not None else os.environ.get("CREDENTIALS_DIRECTORY")
    paths = [Path(folder) / CREDENTIAL] if folder else []
    paths.append(mail.password_file)
    for path in paths:
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the mail relay's password from {path}: {exc}; see "
                "docs/admins/notify.md (LoadCredential=smtp-password:...)"
            ) from None
    raise ConfigError(
        f"the mail relay's password file {mail.password_file} is missing; create it "
        "(root:root, mode 0600) or drop mail.username and mail.password_file"
    )


class Relay:
    """One SMTP session with the relay, opened on entering and closed on leaving."""

    def __init__(self, mail: Mail, password: str | None, timeout: float = TIMEOUT) -> None:
        self.mail = mail
        self.password = password
        self.timeout = timeout
        self.smtp: smtplib.SMTP | None = None

    def __enter__(self) -> Relay:
        try:
            smtp = smtplib.SMTP(self.mail.host, self.mail.port, timeout=self.timeout)
        except (OSError, smtplib.SMTPException) as exc:
            raise RelayDown(
                f"the mail relay {self.mail.relay} cannot be reached ({exc}); the notices "
                "stay queued and go out on a later run"
            ) from None
        self.smtp = smtp
        try:
            smtp.ehlo()
            if self.mail.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.mail.username is not None:
                smtp.login(self.mail.username, self.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            self._close()
            raise ConfigError(
                f"the mail relay {self.mail.relay} refused the login of {self.mail.username} "
                f"({exc.smtp_code}); check mail.username and the password file"
            ) from None
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            self._close()
            raise RelayDown(
                f"the mail relay {self.mail.relay} failed before any mail was sent ({exc}); "
                "the notices stay queued and go out on a later run"
            ) from None
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (OSError, smtplib.SMTPException):
                self.smtp.close()
            self.smtp = None

    def send(self, address: str, msg: EmailMessage) -> Outcome:
        assert self.smtp is not None
        try:
            refused = self.smtp.send_message(msg, from_addr=self.mail.sender, to_addrs=[address])
        except smtplib.SMTPRecipientsRefused as exc:
            code = exc.recipients.get(address, (450, b""))[0]
            return self._judge(address, code, exc.recipients.get(address, (0, b""))[1])
        except smtplib.SMTPSenderRefused as exc:
            # Every mail would fail alike: a setting to fix, not a recipient to give up on.
            raise ConfigError(
                f"the mail relay {self.mail.relay} refuses the sender {self.mail.sender} "
                f"({exc.smtp_code}); fix mail.sender or the relay; the notices stay queued"
            ) from None
        except smtplib.SMTPDataError as exc:
            self._reset()
            return self._judge(address, exc.smtp_code, exc.smtp_error)
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            raise RelayDown(
                f"the mail relay {self.mail.relay} went away ({exc}); the rest stays queued"
            ) from None
        if address in refused:
            return self._judge(address, *refused[address])
        return Outcome.ACCEPTED

    def _reset(self) -> None:
        assert self.smtp is not None
        with contextlib.suppress(OSError, smtplib.SMTPException):
            self.smtp.rset()

    @staticmethod
    def _judge(address: str, code: int, text: bytes | str) -> Outcome:
        words = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        if 500 <= code < 600:
            log.error(
                "the relay refused %s for good (%d %s); not tried again", address, code, words
            )
            return Outcome.REFUSED
        log.warning("the relay deferred %s (%d %s); tried again later", address, code, words)
        return Outcome.LATER
