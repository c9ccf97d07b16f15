"""The project's errors, organised by what the caller should do next.

Every error carries a one-line ``message`` that names the object (model, version,
alias, adapter, server URL) and a ``hint`` with the next step. Messages are safe to
log: no credentials (``one_line`` and :func:`short` pass text through :func:`redact`),
and remote bodies are cut short by :func:`short`.

    LoraDeployError
     ├── UsageError                 exit 2   fix the command line or configuration
     │    └── AuthenticationError            wrong or missing credentials
     ├── PermanentError             exit 3   valid request, cannot succeed as things are
     │    ├── NotFoundError                  model, version, alias or served name missing
     │    ├── InvalidAdapterError            adapter files fail validation
     │    ├── IncompatibleAdapterError       adapter does not fit the served base or limits
     │    ├── SignatureError                 signature missing, invalid or outside the trust policy
     │    ├── AdapterRejectedError           the server refused to load the adapter
     │    ├── AdapterAlreadyLoadedError      the name is taken on the server
     │    ├── NoChatTemplateError            the served model has no chat template
     │    └── AliasMovedError                an alias moved while we worked
     ├── TransientError             exit 75  retry later, the same command is safe to rerun
     │    ├── ServerUnavailableError         unreachable, 5xx, engine down
     │    ├── DeadlineExceededError          a wait ran out of time
     │    ├── LockHeldError                  another deployment of this model is running
     │    ├── LockLostError                  our lease expired or was taken: nothing more moved
     │    └── PartialRolloutError            replicas left on another folder than before
     └── CheckFailedError           exit 1   a check ran and said no (smoke test, gate)

Exit codes are the contract with Argo (``retryStrategy`` retries only 75); they are
mapped here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Process exit codes. Documented in README.md ("Exit codes")."""

    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    PERMANENT = 3
    TRANSIENT = 75  # EX_TEMPFAIL from sysexits.h: the one code worth retrying


class LoraDeployError(Exception):
    """Base class. ``exit_code`` tells the caller what to do next."""

    exit_code: ExitCode = ExitCode.PERMANENT
    default_hint = "see the message above"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint

    @property
    def details(self) -> dict[str, Any]:
        """Facts for ``result.json`` beyond the message (none for most errors)."""
        return {}

    def one_line(self) -> str:
        """The single line shown to a person: what happened, then what to do."""
        text = f"{self.message}; next: {self.hint}"
        return redact(" ".join(text.split()))


class UsageError(LoraDeployError):
    exit_code = ExitCode.USAGE
    default_hint = "fix the flag or setting and run the command again"


class AuthenticationError(UsageError):
    default_hint = "check the credentials (MLFLOW_TRACKING_USERNAME/PASSWORD, VLLM_API_KEY)"


class PermanentError(LoraDeployError):
    exit_code = ExitCode.PERMANENT


class NotFoundError(PermanentError):
    pass


class InvalidAdapterError(PermanentError):
    default_hint = "fix the adapter files and register a new version"


class IncompatibleAdapterError(PermanentError):
    default_hint = "register an adapter trained for the served base model"


class SignatureError(PermanentError):
    default_hint = (
        "sign the version with 'loradeploy sign' using a key or certificate the trust policy "
        "holds, or register the adapter again from the signed folder"
    )


class AdapterRejectedError(PermanentError):
    default_hint = "read the vLLM server log; the adapter was not loaded"


class AdapterAlreadyLoadedError(PermanentError):
    default_hint = "choose another name or unload the adapter first"


class NoChatTemplateError(PermanentError):
    default_hint = "use /v1/completions with a plain prompt, or start vLLM with --chat-template"


class AliasMovedError(PermanentError):
    default_hint = "re-run the deployment from load-adapter for the alias's new version"


class TransientError(LoraDeployError):
    exit_code = ExitCode.TRANSIENT
    default_hint = "retry later; the command is safe to run again"


class ServerUnavailableError(TransientError):
    pass


class DeadlineExceededError(TransientError):
    pass


class LockHeldError(TransientError):
    pass


class LockLostError(TransientError):
    default_hint = "nothing more was moved; check 'loradeploy status' and 'loradeploy history', then rerun"


@dataclass(frozen=True)
class LeftReplica:
    """A replica a failed rollout could not put back.

    ``serves`` is the folder its slot serves now (None: nothing), ``wanted`` the one it
    served before; ``known`` is False when the replica could not even be asked.
    """

    replica: str
    slot: str
    serves: str | None
    wanted: str | None
    known: bool = True

    def describe(self) -> str:
        now = (self.serves or "nothing") if self.known else "unknown (unreachable)"
        return f"{self.replica} serves {self.slot!r} from {now} instead of {self.wanted or 'nothing'}"


class PartialRolloutError(TransientError):
    """A rollout failed and some replicas could not be put back: they differ from the rest.

    Transient on purpose: rerunning the same command (Argo's retry) or ``reconcile``
    converges every replica, and ``left`` says which ones need it.
    """

    default_hint = "run the same command again (or 'loradeploy reconcile') to bring these replicas in line"

    def __init__(self, message: str, *, left: Sequence[LeftReplica], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.left = tuple(left)

    @property
    def details(self) -> dict[str, Any]:
        return {"replicas_left": [asdict(replica) for replica in self.left]}


class CheckFailedError(LoraDeployError):
    exit_code = ExitCode.CHECK_FAILED
    default_hint = "read result.json in the output folder for the failed checks"


# ``scheme://user:password@host`` and ``Authorization: Bearer <token>`` forms.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]+@")
_BEARER = re.compile(r"(?i)(?P<word>bearer\s+)[^\s,;'\"]+")
REDACTED = "***"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials from a line before anyone sees it: user info in URLs, bearer
    tokens, and every value in ``secrets`` (for example the API key and the MLflow
    password the command was given)."""
    text = _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
    text = _BEARER.sub(rf"\g<word>{REDACTED}", text)
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def short(text: str, limit: int = 200) -> str:
    """Cut a remote body to one short line, so it is safe to put in a message (credentials
    are removed first, so a cut never leaves half a password behind)."""
    flat = redact(" ".join(str(text).split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
