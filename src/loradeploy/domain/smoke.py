"""Did a smoke test pass? Pure evaluation of the answers collected, and the probes.

The specification's checks (non-empty text, latency bound) plus proof that the adapter
is active: a 200 from the load call is no proof (an incompatible adapter can load and
behave like the base model), so greedy answers must differ from the base model's, and
when the probes carry reference answers, the answers must be close to them.

A probe is one line of JSON: ``{"prompt": str, "system": str?, "reference": str?,
"id": str?}``. ``prompt`` is what a user asks, ``system`` the instructions (for a
retrieval model: the context), ``reference`` a correct answer. The same names as the
evaluation data's reference answers (``eval_predictions.json``, the gates): an answer is
scored by its token F1 against the reference, as the quality gate and Gate 1 score.
A chat server gets ``system`` and ``prompt`` as messages, so its chat template is
applied; a server without one gets them as plain text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loradeploy.domain.scoring import QA_SYSTEM_PROMPT, QaExample, mean, token_f1
from loradeploy.errors import PermanentError, UsageError
from loradeploy.results import Check

# Used when neither a prompts file nor probes recorded with the version exist.
# "Question/Answer" works as a completion and as a chat message.
DEFAULT_PROMPTS = (
    "Question: What is Amazon S3 used for?\nAnswer:",
    "Question: What does an AWS Lambda function do?\nAnswer:",
    "Question: What does an IAM role grant?\nAnswer:",
)
DEFAULT_MIN_DIFFERENT = 0.5
# The mean token F1 the answers must reach against the references: the quality gate's
# default. Measured on the first three demo probes through chat (vLLM, greedy): the demo
# adapters 0.77 (v1 and v2), the base model 0.33 (it reads the context too, but answers
# at length), the adapter trained on shuffled answers 0.14.
DEFAULT_MIN_REFERENCE_F1 = 0.5

# The probes recorded with a version (``register --probes-file``, ``train``): an artifact
# beside the adapter's files, never downloaded with them, and a tag with its sha256.
PROBES_FILE = "loradeploy-probes.jsonl"
PROBES_TAG = "loradeploy.probes.sha256"
MAX_PROBES_BYTES = 1024 * 1024
MAX_PROBES = 1000
RECORDED_BESIDE = {PROBES_FILE: MAX_PROBES_BYTES}  # for ``check_listing(ignored=...)``
_KEYS = frozenset({"id", "prompt", "system", "reference"})


@dataclass(frozen=True)
class Probe:
    prompt: str
    system: str | None = None
    reference: str | None = None
    id: str | None = None

    def messages(self) -> list[dict[str, str]]:
        """The chat form: the system message (if any), then the user's prompt."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.prompt}]

    def completion_prompt(self) -> str:
        """The plain-text form, for a server without a chat template: sent as written."""
        return f"{self.system}\n\n{self.prompt}" if self.system else self.prompt

    def as_json(self) -> str:
        row = {"id": self.id, "system": self.system, "prompt": self.prompt, "reference": self.reference}
        return json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False)


@dataclass(frozen=True)
class Answer:
    prompt: str
    text: str
    latency_s: float
    base_text: str | None = None  # the base model's greedy answer, when compared
    reference: str | None = None


def default_probes() -> list[Probe]:
    return [Probe(prompt) for prompt in DEFAULT_PROMPTS]


def probes_from_qa(examples: Iterable[QaExample]) -> list[Probe]:
    """Probes from evaluation data, in the chat the demo adapters are trained on."""
    return [
        Probe(
            prompt=example.question,
            system=QA_SYSTEM_PROMPT.format(context=example.context),
            reference=example.answer,
            id=example.id,
        )
        for example in examples
    ]


def parse_probes(text: str, where: str) -> list[Probe]:
    """JSON lines of probes (see the module docstring); ``where`` names the source."""
    probes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        at = f"{where}, line {number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"{at}: not JSON", hint=_FORMAT) from exc
        if not isinstance(row, dict) or "prompt" not in row:
            raise UsageError(f'{at}: expected a JSON object with a "prompt"', hint=_FORMAT)
        unknown = sorted(set(row) - _KEYS)
        if unknown:  # a misspelt key would silently turn a check off
            raise UsageError(f"{at}: unknown key(s) {unknown}", hint=_hint_for(unknown))
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f'{at}: "prompt" must be a non-empty string', hint=_FORMAT)
        for key in ("system", "reference", "id"):
            value = row.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise UsageError(f'{at}: "{key}" must be a non-empty string', hint=_FORMAT)
        probes.append(Probe(prompt, row.get("system"), row.get("reference"), row.get("id")))
        if len(probes) > MAX_PROBES:
            raise UsageError(f"{where} holds more than {MAX_PROBES} probes", hint="keep a few")
    if not probes:
        raise UsageError(f"{where} holds no prompts", hint=_FORMAT)
    return probes


_FORMAT = 'write one JSON object a line: {"prompt": ..., "system": optional, "reference": optional}'


def _hint_for(unknown: Sequence[str]) -> str:
    if "expect" in unknown:
        return 'rename "expect" to "reference" (a correct answer, scored by token F1)'
    return _FORMAT


def read_probes(path: Path) -> list[Probe]:
    """The probes of a prompts file (``--prompts-file``, ``--probes-file``)."""
    try:
        size = path.stat().st_size
        if size > MAX_PROBES_BYTES:
            raise UsageError(
                f"prompts file {path} is {size} bytes, above the {MAX_PROBES_BYTES}-byte limit",
                hint="keep a few probes",
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"prompts file {path} is unreadable ({type(exc).__name__})") from exc
    return parse_probes(text, f"prompts file {path}")


def read_prompts(path: Path) -> list[str]:
    """Just the prompts of a probe file."""
    return [probe.prompt for probe in read_probes(path)]


def probes_text(probes: Sequence[Probe]) -> str:
    """The recorded form: JSON lines, parsed back by ``parse_probes``."""
    return "".join(probe.as_json() + "\n" for probe in probes)


def probes_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recorded_probes(raw: bytes, digest: str, where: str) -> list[Probe]:
    """The probes recorded with a version, checked against the digest its tag holds."""
    if len(raw) > MAX_PROBES_BYTES:
        raise PermanentError(
            f"{where}: {PROBES_FILE} is {len(raw)} bytes, above the {MAX_PROBES_BYTES}-byte limit",
            hint="register the version's probes again, or pass --prompts-file",
        )
    if hashlib.sha256(raw).hexdigest() != digest:
        raise PermanentError(
            f"{where}: {PROBES_FILE} does not match its {PROBES_TAG} tag (changed after registration)",
            hint="pass --prompts-file, or register the adapter again with --probes-file",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PermanentError(f"{where}: {PROBES_FILE} is not UTF-8 text") from exc
    try:
        return parse_probes(text, f"{where}: {PROBES_FILE}")
    except UsageError as exc:  # recorded by someone else: not this command line's fault
        raise PermanentError(exc.message, hint="pass --prompts-file, or register the probes again") from exc


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def evaluate(
    answers: Sequence[Answer],
    max_latency_s: float,
    *,
    min_different: float = DEFAULT_MIN_DIFFERENT,
    min_reference_f1: float = DEFAULT_MIN_REFERENCE_F1,
    api: str | None = None,
) -> list[Check]:
    """Per answer: non-empty, within the latency bound. Overall: enough answers differ
    from the base model's, and the answers to probes with a reference reach
    ``min_reference_f1`` of mean token F1 against them. ``api`` names the route used."""
    checks = []
    via = f"{api}: " if api else ""
    for index, answer in enumerate(answers, start=1):
        checks.append(
            Check(
                name=f"request-{index}:non-empty",
                passed=bool(answer.text.strip()),
                detail=via + repr(answer.text[:80]),
            )
        )
        checks.append(
            Check(
                name=f"request-{index}:latency",
                passed=answer.latency_s <= max_latency_s,
                value=round(answer.latency_s, 3),
                threshold=max_latency_s,
            )
        )
    referenced = [a for a in answers if a.reference is not None]
    if referenced:
        scores = [token_f1(a.text, a.reference or "") for a in referenced]
        score = mean(scores)
        checks.append(
            Check(
                name="answers:match-reference",
                passed=score >= min_reference_f1,
                detail=f"mean token F1 {score:.2f} over {len(scores)} answers "
                f"({', '.join(f'{s:.2f}' for s in scores)})",
                value=round(score, 3),
                threshold=min_reference_f1,
            )
        )
    compared = [a for a in answers if a.base_text is not None]
    if compared:
        different = sum(a.text.strip() != (a.base_text or "").strip() for a in compared)
        fraction = different / len(compared)
        checks.append(
            Check(
                name="active:differs-from-base",
                passed=fraction >= min_different,
                detail=f"{different} of {len(compared)} greedy answers differ from the base model's",
                value=round(fraction, 3),
                threshold=min_different,
            )
        )
    return checks
