"""A linearizability checker for the KV store: the Wing & Gong search with Lowe's memoization.

This is the algorithm of Porcupine (github.com/anishathalye/porcupine), for one model: a map from keys to
``bytes``, where a missing key reads as None. Keys are independent, so the history is checked one key at
a time (P-compositionality), and each key is a register whose state is ``bytes | None``.

The search, per key: call and return events sorted by time form a doubly linked list. Walking it from the
front, any operation whose call comes before the first remaining return may be linearized next, if the
model allows it; it is then unlinked and the walk restarts. Reaching a return means the operation that
ends there could not be placed: undo the last choice and try the next one. A configuration (the set of
linearized operations as a bitset, and the register's state) that was already explored is never explored
again, which is what makes the search usable on real histories.

Unknown operations (``return_time`` None) have a call and no return: they may be linearized anywhere after
their call, or never. Never is the same as "after every completed operation", so the search succeeds as
soon as every completed operation is placed.

Three reductions keep the search small; each is sound on its own (the tests compare the result with a
brute-force search on small histories):

* A completed read-only operation (a get, a cas that answered False) that fits the current state is placed
  at once and never reconsidered: it does not change the state, and nothing that remains had to come
  before it, so if any order works from here, one that starts with it works too.
* An unknown operation is never placed where it would change nothing (a put of the current value, a cas
  whose comparison fails): that is the same as not placing it.
* An unknown write of a value that nothing could ever observe (no completed get returns it, no cas
  compares with it, and no cas answered False on that key) is dropped: where it took effect, only writes
  follow until the next write, so leaving it out changes no answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from .history import Key, Operation, Value

Status: TypeAlias = Literal["linearizable", "not_linearizable", "unknown"]

# About 5 s of search for one key. A key with a few hundred operations needs far fewer steps; 2,000
# operations from 16 clients all on one key needed about a million. Beyond this the key is reported as not
# proven instead of hanging the test run.
MAX_STEPS_PER_KEY_DEFAULT = 5_000_000

_GET, _PUT, _DELETE, _CAS = 0, 1, 2, 3
_KIND_CODES = {"get": _GET, "put": _PUT, "delete": _DELETE, "cas": _CAS}
_LINES_MAX = 30


@dataclass(frozen=True, slots=True)
class Result:
    """The verdict on a whole history.

    ``linearizable`` is True only when every key was proven linearizable. ``status`` tells "not
    linearizable" (a proof) from "unknown" (some key's search hit ``max_steps_per_key``).
    ``counterexample`` is the shortest failing prefix of the first failing key, in call order, with
    operations that had not yet returned at its end shown as unknown.
    """

    status: Status
    explanation: str
    failing_keys: tuple[Key, ...] = ()
    unknown_keys: tuple[Key, ...] = ()
    counterexample: tuple[Operation, ...] = ()
    keys: int = 0
    operations: int = 0
    steps: int = 0

    @property
    def linearizable(self) -> bool:
        return self.status == "linearizable"


def check(
    history: Iterable[Operation],
    *,
    max_steps_per_key: int | None = MAX_STEPS_PER_KEY_DEFAULT,
    explain: bool = True,
) -> Result:
    """Decide whether ``history`` is linearizable for a KV map whose keys all start absent.

    ``max_steps_per_key`` bounds the placements tried per key (None: no bound); a key that needs more is
    reported as unknown. With ``explain`` the first failing key is shrunk to its shortest failing
    prefix for the explanation, which costs a few more searches of that key.
    """
    partitions: dict[Key, list[tuple[int, Operation]]] = {}
    count = 0
    for index, op in enumerate(history):
        if not isinstance(op, Operation):
            raise TypeError(f"history item {index} is {type(op).__name__}, not Operation")
        partitions.setdefault(op.key, []).append((index, op))
        count += 1

    failing: list[Key] = []
    unknown: list[Key] = []
    steps = 0
    for key in sorted(partitions, key=repr):
        ops = [op for _, op in partitions[key]]
        search = _search(ops, max_steps_per_key, trace=False)
        steps += search.steps
        if search.outcome == "fail":
            failing.append(key)
        elif search.outcome == "gave_up":
            unknown.append(key)

    summary = f"{count} operations on {len(partitions)} keys, {steps} search steps"
    if failing:
        key = failing[0]
        counterexample, text = _explain(key, partitions[key], max_steps_per_key, explain)
        others = f"; other failing keys: {', '.join(map(repr, failing[1:]))}" if len(failing) > 1 else ""
        not_proven = f"; keys not proven: {', '.join(map(repr, unknown))}" if unknown else ""
        return Result(
            "not_linearizable",
            f"not linearizable: key {key!r} ({summary}){others}{not_proven}\n{text}",
            tuple(failing),
            tuple(unknown),
            counterexample,
            len(partitions),
            count,
            steps,
        )
    if unknown:
        bound = f"more than {max_steps_per_key} search steps"
        return Result(
            "unknown",
            f"not proven linearizable: keys {', '.join(map(repr, unknown))} need {bound} ({summary})",
            (),
            tuple(unknown),
            (),
            len(partitions),
            count,
            steps,
        )
    return Result("linearizable", f"linearizable ({summary})", (), (), (), len(partitions), count, steps)


@dataclass(slots=True)
class _Search:
    outcome: Literal["ok", "fail", "gave_up"]
    steps: int
    # With trace, for a failure: the deepest dead end met, as indices into the searched operations.
    order: list[int] = field(default_factory=list)
    state: Value | None = None
    state_unseen: bool = False  # the key holds some value that nothing reads
    blocked: int = -1
    candidates: list[int] = field(default_factory=list)


def _search(ops: Sequence[Operation], max_steps: int | None, *, trace: bool) -> _Search:
    """The WGL search on one key's operations, which start from an absent key."""
    # What could a dropped unknown write ever be seen by?
    read_values: set[Value | None] = set()
    compared_values: set[Value | None] = set()
    cas_answered_false = False
    for op in ops:
        if op.kind == "get" and op.completed and not isinstance(op.result, bool):
            read_values.add(op.result)
        elif op.kind == "cas":
            compared_values.add(op.expected)
            cas_answered_false |= op.completed and op.result is False

    kept: list[int] = []
    for i, op in enumerate(ops):
        if op.completed:
            kept.append(i)
        elif op.kind == "get":
            continue  # an unanswered read changes nothing
        else:
            written = None if op.kind == "delete" else op.value
            if cas_answered_false or written in read_values or written in compared_values:
                kept.append(i)

    # Values that no get returns and no cas compares with are told apart by nothing: they all become one
    # value, so that configurations differing only in which of them the key holds are explored once.
    observable = read_values | compared_values
    unseen = b"\xff" * (1 + max((len(v) for v in observable if v is not None), default=0))

    def canonical(written: Value | None) -> Value | None:
        return written if written in observable else unseen

    n = len(kept)
    kind = [_KIND_CODES[ops[i].kind] for i in kept]
    value = [canonical(ops[i].value) for i in kept]
    expected = [ops[i].expected for i in kept]
    result = [ops[i].result for i in kept]
    completed = [ops[i].completed for i in kept]
    read_only = [
        completed[j] and (kind[j] == _GET or (kind[j] == _CAS and result[j] is False)) for j in range(n)
    ]

    # Events 1..m; 0 is the head and m + 1 the tail of the linked list. At equal times a call sorts
    # before a return, so operations that touch in time count as concurrent: a coarse clock can then
    # hide a violation but never invent one.
    events: list[tuple[float, int, int]] = []
    for j, i in enumerate(kept):
        op = ops[i]
        events.append((op.call_time, 0, j))
        if op.return_time is not None:
            events.append((op.return_time, 1, j))
    events.sort()
    m = len(events)
    tail = m + 1
    event_op = [0] * (m + 2)
    is_call = [False] * (m + 2)
    match = [-1] * (m + 2)  # a call's return event, or -1 for an unknown operation
    call_event = [0] * n
    for e, (_, is_return, j) in enumerate(events, start=1):
        event_op[e] = j
        if is_return:
            match[call_event[j]] = e
        else:
            is_call[e] = True
            call_event[j] = e
    nxt = list(range(1, m + 3))
    prv = list(range(-1, m + 1))

    total = remaining = sum(completed)
    absent = canonical(None)
    state = absent
    linearized = 0
    seen: set[tuple[int, Value | None]] = set()
    stack: list[tuple[int, Value | None]] = []
    steps = 0
    best_depth = -1
    found = _Search("fail", 0)

    entry = nxt[0]
    while remaining:
        assert entry != tail, "a completed operation's return must be met before the end of the list"
        dead_end = False
        if is_call[entry]:
            j = event_op[entry]
            k = kind[j]
            if k == _GET:
                fits = state == result[j]
                new = state
            elif k == _PUT:
                new = value[j]
                fits = completed[j] or new != state
            elif k == _DELETE:
                new = absent
                fits = completed[j] or new != state
            elif completed[j] and result[j] is False:
                fits = state != expected[j]
                new = state
            else:
                fits = state == expected[j]
                new = value[j]
                fits = fits and (completed[j] or new != state)
            steps += 1
            if max_steps is not None and steps > max_steps:
                return _Search("gave_up", steps)
            if fits:
                now_linearized = linearized | (1 << j)
                configuration = (now_linearized, new)
                if configuration not in seen:
                    seen.add(configuration)
                    stack.append((entry, state))
                    linearized = now_linearized
                    state = new
                    nxt[prv[entry]] = nxt[entry]
                    prv[nxt[entry]] = prv[entry]
                    ret = match[entry]
                    if ret >= 0:
                        nxt[prv[ret]] = nxt[ret]
                        prv[nxt[ret]] = prv[ret]
                        remaining -= 1
                    entry = nxt[0]
                    continue
                # Placing a fitting read-only operation here was already explored and failed, and the
                # first reduction says that then nothing works from here.
                dead_end = read_only[j]
            if not dead_end:
                entry = nxt[entry]
                continue
        elif trace:
            depth = total - remaining
            if depth > best_depth:
                best_depth = depth
                found.order = [event_op[e] for e, _ in stack]
                found.state = state
                found.state_unseen = state == unseen
                found.blocked = event_op[entry]
                found.candidates = []
                e = nxt[0]
                while e != entry:
                    found.candidates.append(event_op[e])
                    e = nxt[e]

        # Dead end: undo placements. A read-only one was forced (first reduction), so undo past it too.
        while True:
            if not stack:
                found.steps = steps
                found.order = [kept[j] for j in found.order]
                found.blocked = kept[found.blocked] if found.blocked >= 0 else -1
                found.candidates = [kept[j] for j in found.candidates]
                return found
            entry, state = stack.pop()
            j = event_op[entry]
            linearized ^= 1 << j
            ret = match[entry]
            if ret >= 0:
                prv[nxt[ret]] = ret
                nxt[prv[ret]] = ret
                remaining += 1
            prv[nxt[entry]] = entry
            nxt[prv[entry]] = entry
            if not read_only[j]:
                break
        entry = nxt[entry]
    return _Search("ok", steps)


def _prefix(ops: Sequence[Operation], end: float) -> list[int]:
    """Indices of the history as it stood at time ``end``: what was called by then."""
    return [i for i, op in enumerate(ops) if op.call_time <= end]


def _as_of(op: Operation, end: float) -> Operation:
    """``op`` as seen at time ``end``: not yet answered means unknown."""
    if op.return_time is None or op.return_time <= end:
        return op
    return Operation(op.client, op.kind, op.key, op.call_time, None, value=op.value, expected=op.expected)


def _explain(
    key: Key, indexed: list[tuple[int, Operation]], max_steps: int | None, shrink: bool
) -> tuple[tuple[Operation, ...], str]:
    """The shortest failing prefix of one key's history, and a few lines on why it fails.

    Cutting a history at time t (operations called by t; those not answered by t become unknown) keeps a
    linearizable history linearizable, so the first failing cut is found by bisection over return times.
    """
    ops = [op for _, op in indexed]
    ends = sorted({op.return_time for op in ops if op.return_time is not None})

    def cut(end: float) -> list[Operation]:
        return [_as_of(ops[i], end) for i in _prefix(ops, end)]

    low, high = 0, len(ends) - 1
    if shrink:
        while low < high:
            middle = (low + high) // 2
            if _search(cut(ends[middle]), max_steps, trace=False).outcome == "fail":
                high = middle
            else:
                low = middle + 1
    end = ends[high]
    chosen = _prefix(ops, end)
    prefix = [_as_of(ops[i], end) for i in chosen]
    search = _search(prefix, max_steps, trace=True)

    def line(position: int) -> str:
        return f"#{indexed[chosen[position]][0]} {prefix[position].describe()}"

    lines = [
        f"The shortest failing prefix of key {key!r} ends at {end:.6f}; its {len(prefix)} operations "
        "(#n is the index in the history; those not answered by then count as unknown):"
    ]
    shown = prefix if len(prefix) <= _LINES_MAX else prefix[-_LINES_MAX:]
    if len(shown) < len(prefix):
        lines.append(f"  ... {len(prefix) - len(shown)} earlier operations")
    lines.extend(f"  {line(p)}" for p in range(len(prefix) - len(shown), len(prefix)))
    if search.outcome == "fail" and search.blocked >= 0:
        order = ", ".join(f"#{indexed[chosen[p]][0]}" for p in search.order[-_LINES_MAX:])
        more = "... " if len(search.order) > _LINES_MAX else ""
        value = "absent" if search.state is None else repr(search.state)
        value = "one that nothing reads" if search.state_unseen else value
        lines.append(
            f"Deepest legal order found ({len(search.order)} operations): {more}{order or '(none)'}; "
            f"then the key holds {value}. The operations that could come next:"
        )
        lines.extend(f"  {line(p)}" for p in search.candidates[:_LINES_MAX])
        lines.append(f"and no way on from there places this one, which had returned: {line(search.blocked)}")
    return tuple(prefix), "\n".join(lines)
