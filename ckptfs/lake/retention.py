"""Retention: which versions of the lake's history are kept, and by which rule.

A policy belongs to a path prefix (a directory or a file, relative to the lake root; b"" is the
default for every path without one of its own) and is stored in the lake, so every mount and every
`ckptfs gc` obeys the same ones. The nearest policy at or above a path governs it. Without any
policy, nothing is collected.

The rules (docs/SEMANTICS.md, "Retention"), for a version v of path p that was p's content from
`start` until `end` (the next state of p: a new version, a rename away or a deletion; None while
it is p's content):

* **live**: v is the current content of p. Always kept, whatever the policy.
* **folded**: v was replaced or removed less than the lake's `fold_s` (10 s unless set) after it
  was written (the temp file of an atomic save, renamed away; an append loop's intermediate
  closes). A folded version counts for no rule below and is not shown in `.versions`; its content
  usually lives on (a rename's destination).
* **last N**: p is live and v is one of its N newest versions that are not folded. A path deleted
  from the live tree (a rotated-away checkpoint) keeps versions only by the rules below.
* **within D**: v was p's content at some instant of the last D (end is None or end > now - D).
* **hourly / daily / weekly N**: the policy's scope (everything under its prefix) is looked at as
  it stood at the end of each of the N most recent hours (UTC days, ISO weeks) in which anything
  under it changed: every version that was content at one of those instants is kept. So a
  rotated checkpoint is kept by `daily` only if it still existed at the end of a kept day.
* **tag / held**: v's manifest is named by a tag (`ckptfs tag`) or held by a mount that read it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field

import xxhash

from ckptfs.errors import CkptfsError
from ckptfs.lake.manifest import decode_path, encode_path
from ckptfs.lake.namespace import State
from ckptfs.store import STORAGE_CLASSES

PREFIX = "retention/"
FOLD_NS = 10 * 10**9
HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS
WEEK_NS = 7 * DAY_NS
# 1970-01-01 was a Thursday: weeks counted from Monday 00:00 UTC start 3 days later.
_WEEK_OFFSET_NS = 3 * DAY_NS
INTERVALS = {"hourly": (HOUR_NS, 0), "daily": (DAY_NS, 0), "weekly": (WEEK_NS, _WEEK_OFFSET_NS)}
_MAX_COUNT = 1_000_000
_MAX_SECONDS = 100 * 365 * 86400


class PolicyError(CkptfsError):
    """A policy that cannot be stored or read."""


@dataclass(frozen=True)
class Policy:
    keep_last: int | None = None
    keep_within_s: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    archive_after_s: int | None = None  # versions older than this (and not current) move to ...
    archive_class: str | None = None  # ... this storage class (S3 lakes)

    def __post_init__(self) -> None:
        if (self.archive_after_s is None) != (self.archive_class is None):
            raise PolicyError("--archive-after and --archive-class go together")
        if self.archive_class is not None and self.archive_class not in STORAGE_CLASSES:
            raise PolicyError(f"{self.archive_class!r:.30} is not a storage class a policy can use: "
                              f"{', '.join(STORAGE_CLASSES)}")
        for name, value in asdict(self).items():
            if name == "archive_class":
                continue
            limit = _MAX_SECONDS if name.endswith("_s") else _MAX_COUNT
            if value is not None and (type(value) is not int or not 0 <= value <= limit):
                raise PolicyError(f"{name.replace('_', '-')} must be a whole number from 0 to {limit}, "
                                  f"not {value!r:.40}")
        if all(value is None for name, value in asdict(self).items() if not name.startswith("archive")):
            raise PolicyError("a policy needs at least one rule (--keep-last, --keep-within, --keep-hourly, "
                              "--keep-daily, --keep-weekly)")

    def rules(self) -> dict[str, int]:
        return {name: value for name, value in asdict(self).items() if value is not None}

    def describe(self) -> str:
        parts = []
        for name, value in self.rules().items():
            shown = format_duration(value) if name.endswith("_s") else str(value)
            parts.append(f"{name.removesuffix('_s').replace('_', '-')} {shown}")
        return ", ".join(parts)


def policy_key(path: bytes) -> str:
    """The object of a prefix's policy: named by a hash of the path, never by the path itself."""
    return f"{PREFIX}{xxhash.xxh3_128_hexdigest(path)}"


def encode_policy(path: bytes, policy: Policy, set_ns: int) -> bytes:
    return json.dumps({"format": 1, "path": encode_path(path), "set_ns": set_ns, **policy.rules()}).encode()


def decode_policy(blob: bytes, key: str) -> tuple[bytes, Policy, int]:
    try:
        value = json.loads(blob)
        if value.get("format") != 1:
            raise PolicyError(f"{key}: unknown retention format {value.get('format')!r:.20}")
        path = decode_path(value["path"])
        rules = {name: value[name] for name in Policy.__dataclass_fields__ if name in value}
        policy = Policy(**rules)
        set_ns = value.get("set_ns", 0)
    except PolicyError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PolicyError(f"{key}: not a retention policy ({error})") from None
    if key != policy_key(path):
        raise PolicyError(f"{key}: holds the policy of another path")
    return path, policy, set_ns


_DURATION = re.compile(r"^(\d+)\s*([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """'90m', '36h', '7d', '2w' or plain seconds -> seconds."""
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise PolicyError(f"{text!r:.40} is not a duration (a whole number with s, m, h, d or w, e.g. 7d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: int) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def governing(path: bytes, policies: Mapping[bytes, Policy]) -> bytes | None:
    """The prefix whose policy governs `path`: the nearest at or above it."""
    while True:
        if path in policies:
            return path
        if not path:
            return None
        path = path.rpartition(b"/")[0]


@dataclass(frozen=True)
class Verdict:
    """Why a version is kept (`reasons`), or that nothing keeps it (empty: collectable)."""
    state: State
    end_ns: int | None
    folded: bool
    reasons: tuple[str, ...]

    @property
    def kept(self) -> bool:
        return bool(self.reasons)


@dataclass
class Retention:
    """Judges every version of a history against the policies, at one instant `now_ns`."""
    policies: Mapping[bytes, Policy]
    now_ns: int
    tagged: Mapping[str, Iterable[str]] = field(default_factory=dict)  # manifest -> tag names
    held: Iterable[str] = ()  # manifests a mount holds (it read them)
    fold_ns: int = FOLD_NS  # the lake's fold_s

    def __post_init__(self) -> None:
        self.held = frozenset(self.held)
        self._instants: dict[tuple[bytes, str], list[int]] = {}

    def prepare(self, history: Mapping[bytes, list[State]]) -> None:
        """First pass: for each policy with interval rules, the instants its scope is kept at."""
        wanted = {prefix: policy for prefix, policy in self.policies.items()
                  if any(getattr(policy, f"keep_{name}") for name in INTERVALS)}
        if not wanted:
            return
        buckets: dict[tuple[bytes, str], dict[int, int]] = {}
        for path, states in history.items():
            prefix = governing(path, self.policies)
            if prefix not in wanted:
                continue
            for name, (period, offset) in INTERVALS.items():
                if getattr(wanted[prefix], f"keep_{name}"):
                    ends = buckets.setdefault((prefix, name), {})
                    for state in states:
                        bucket = (state.time_ns + offset) // period
                        if ends.get(bucket, -1) < state.time_ns:
                            ends[bucket] = state.time_ns
        for (prefix, name), ends in buckets.items():
            count = getattr(wanted[prefix], f"keep_{name}")
            self._instants[(prefix, name)] = sorted(ends[bucket] for bucket in sorted(ends)[-count:])

    def judge(self, path: bytes, states: list[State]) -> list[Verdict]:
        """One verdict per version (a state with a manifest) of `path`, oldest first."""
        prefix = governing(path, self.policies)
        policy = self.policies.get(prefix) if prefix is not None else None
        live = bool(states) and not states[-1].deleted
        verdicts: list[Verdict] = []
        for index, state in enumerate(states):
            if state.manifest is None:
                continue
            end = states[index + 1].time_ns if index + 1 < len(states) else None
            folded = end is not None and end - state.time_ns < self.fold_ns
            verdicts.append(Verdict(state, end, folded, ()))
        unfolded_newest = [verdict for verdict in verdicts if not verdict.folded]
        last_keep = policy.keep_last if policy is not None and policy.keep_last and live else 0
        newest = {id(verdict) for verdict in unfolded_newest[len(unfolded_newest) - last_keep:]} if last_keep else set()
        judged = []
        for verdict in verdicts:
            reasons: list[str] = []
            state, end = verdict.state, verdict.end_ns
            if end is None:
                reasons.append("live")
            elif policy is None:
                reasons.append("no policy")
            elif not verdict.folded:
                if id(verdict) in newest:
                    reasons.append(f"last {policy.keep_last}")
                if policy.keep_within_s is not None and end > self.now_ns - policy.keep_within_s * 10**9:
                    reasons.append(f"within {format_duration(policy.keep_within_s)}")
                for name in INTERVALS:
                    for instant in self._instants.get((prefix, name), ()):  # type: ignore[arg-type]
                        if state.time_ns <= instant < end:
                            reasons.append(f"{name} {getattr(policy, f'keep_{name}')}")
                            break
            for tag in self.tagged.get(state.manifest or "", ()):
                reasons.append(f"tag {tag}")
            if state.manifest in self.held:
                reasons.append("held")
            judged.append(Verdict(state, end, verdict.folded, tuple(reasons)))
        return judged

    def archive_class(self, path: bytes, verdict: Verdict) -> str | None:
        """The storage class a kept version may move to: its policy's, once it is no longer current
        and older than the policy's archive age."""
        prefix = governing(path, self.policies)
        policy = self.policies.get(prefix) if prefix is not None else None
        if policy is None or policy.archive_class is None or verdict.end_ns is None:
            return None
        return policy.archive_class if verdict.state.time_ns < self.now_ns - (policy.archive_after_s or 0) * 10**9 \
            else None

    def judge_all(self, history: Mapping[bytes, list[State]]) -> Iterator[tuple[bytes, Verdict]]:
        self.prepare(history)
        for path, states in history.items():
            for verdict in self.judge(path, states):
                yield path, verdict
