"""Tests of the linearizability checker: hand-written histories, a brute-force oracle, generated histories."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Sequence

import pytest
import trio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyagent_simnet.linearizability import HistoryRecorder, Operation, Value, check

A, B, C = b"a", b"b", b"c"
NEVER_WRITTEN = b"never written"


def put(value: Value, call: float, ret: float | None, *, client: int = 0, key: str = "k") -> Operation:
    return Operation(client, "put", key, call, ret, value=value)


def get(
    result: Value | None, call: float, ret: float | None, *, client: int = 0, key: str = "k"
) -> Operation:
    return Operation(client, "get", key, call, ret, result=result)


def delete(call: float, ret: float | None, *, client: int = 0, key: str = "k") -> Operation:
    return Operation(client, "delete", key, call, ret)


def cas(
    expected: Value | None,
    new: Value | None,
    ok: bool,
    call: float,
    ret: float | None,
    *,
    client: int = 0,
    key: str = "k",
) -> Operation:
    return Operation(client, "cas", key, call, ret, value=new, expected=expected, result=ok)


LINEARIZABLE: dict[str, list[Operation]] = {
    "empty": [],
    "get of a key never written": [get(None, 0, 1)],
    "a get overlapping a put may see either value": [
        put(A, 0, 10, client=1),
        get(None, 1, 2, client=2),
        get(A, 3, 4, client=2),
        get(A, 11, 12, client=3),
    ],
    "two overlapping puts, reads agree on the order": [
        put(A, 0, 10, client=1),
        put(B, 0, 10, client=2),
        get(B, 1, 11, client=3),
        get(A, 2, 12, client=4),
        get(A, 13, 14, client=3),
    ],
    "a cas race where exactly one wins": [
        put(A, 0, 1),
        cas(A, B, True, 2, 5, client=1),
        cas(A, C, False, 3, 6, client=2),
        get(B, 7, 8),
    ],
    "a cas on an absent key, and a cas that deletes": [
        cas(None, A, True, 0, 1),
        cas(None, B, False, 2, 3),
        cas(A, None, True, 4, 5),
        get(None, 6, 7),
    ],
    "delete then get absent": [put(A, 0, 1), delete(2, 3), get(None, 4, 5)],
    "operations that touch in time count as concurrent": [put(A, 0, 1), get(None, 1, 2)],
    "an unknown put that took effect": [put(A, 0, 1), put(B, 2, None, client=1), get(B, 5, 6)],
    "an unknown put that did not take effect": [put(A, 0, 1), put(B, 2, None, client=1), get(A, 5, 6)],
    "an unknown put that took effect late": [
        put(A, 0, 1),
        put(B, 2, None, client=1),
        get(A, 5, 6),
        get(B, 100, 101),
    ],
    "an unknown cas that took effect, read by a later cas": [
        put(A, 0, 1),
        cas(A, B, True, 2, None, client=1),
        cas(B, C, True, 5, 6),
        get(C, 7, 8),
    ],
    "an unknown delete that took effect": [put(A, 0, 1), delete(2, None, client=1), get(None, 3, 4)],
    "an unknown get is no constraint": [put(A, 0, 1), get(C, 2, None, client=1), get(A, 3, 4)],
    "keys are independent": [
        put(A, 0, 1, key="x"),
        put(B, 0, 1, key="y"),
        get(A, 2, 3, key="x"),
        get(B, 2, 3, key="y"),
        get(None, 2, 3, key="z"),
    ],
}

NOT_LINEARIZABLE: dict[str, list[Operation]] = {
    "a stale read after a completed write": [put(A, 0, 1), put(B, 2, 3), get(A, 4, 5)],
    "a lost acknowledged write": [put(A, 0, 1, client=1), get(None, 2, 3, client=2)],
    "a lost write between reads": [put(A, 0, 1), put(B, 2, 3, client=1), get(A, 4, 5), get(B, 6, 7)],
    "two cas with the same expected value both succeed": [
        put(A, 0, 1),
        cas(A, B, True, 2, 5, client=1),
        cas(A, C, True, 3, 6, client=2),
    ],
    "a read of a value never written": [put(A, 0, 1), get(NEVER_WRITTEN, 2, 3)],
    "a read going back in time": [
        put(A, 0, 10, client=1),
        get(A, 1, 2, client=2),
        get(None, 3, 4, client=2),
    ],
    "a cas that failed although its comparison held": [put(A, 0, 1), cas(A, B, False, 2, 3)],
    "a read after delete": [put(A, 0, 1), delete(2, 3), get(A, 4, 5)],
    "an unknown put cannot take effect before its call": [
        put(A, 0, 1),
        get(B, 2, 3),
        put(B, 4, None, client=1),
    ],
    "an unknown cas takes effect only if its comparison holds": [
        put(A, 0, 1),
        cas(C, B, True, 2, None, client=1),
        get(B, 3, 4),
    ],
    "one bad key among good ones": [
        put(A, 0, 1, key="x"),
        get(A, 2, 3, key="x"),
        put(A, 0, 1, key="y"),
        put(B, 2, 3, key="y"),
        get(A, 4, 5, key="y"),
    ],
}


@pytest.mark.parametrize("name", sorted(LINEARIZABLE))
def test_linearizable_histories(name: str) -> None:
    result = check(LINEARIZABLE[name])
    assert result.linearizable, result.explanation
    assert result.status == "linearizable"
    assert brute_force(LINEARIZABLE[name])


@pytest.mark.parametrize("name", sorted(NOT_LINEARIZABLE))
def test_not_linearizable_histories(name: str) -> None:
    history = NOT_LINEARIZABLE[name]
    result = check(history)
    assert not result.linearizable
    assert result.status == "not_linearizable", result.explanation
    assert not brute_force(history)
    assert result.explanation.startswith("not linearizable: key ")
    assert result.counterexample
    # The counterexample is itself a failing history.
    assert check(result.counterexample).status == "not_linearizable"


def test_the_explanation_names_the_key_and_the_shortest_failing_prefix() -> None:
    history = [
        put(A, 0, 1, key="good"),
        put(A, 0, 1, key="bad"),
        put(B, 2, 3, key="bad"),
        get(A, 4, 5, key="bad", client=7),
        put(C, 6, 7, key="bad"),  # after the violation: not part of the shortest failing prefix
        get(B, 8, 9, key="bad"),
    ]
    result = check(history)
    assert result.failing_keys == ("bad",)
    assert result.counterexample == tuple(history[1:4])
    text = result.explanation
    assert "key 'bad'" in text
    assert "#3 client 7 get 'bad' = b'a' [4.000000, 5.000000]" in text
    assert "#4" not in text and "'good'" not in text
    assert "which had returned: #3 " in text


def test_the_prefix_turns_operations_not_yet_answered_into_unknown_ones() -> None:
    history = [put(A, 0, 1), put(B, 2, 100, client=1), get(A, 3, 4), get(C, 5, 6)]
    result = check(history)
    assert result.counterexample == (history[0], put(B, 2, None, client=1), history[2], history[3])


def test_a_search_that_needs_too_many_steps_is_not_proven() -> None:
    # Many concurrent writes of distinct values and a read of none of them: every order must be tried.
    history = [put(bytes([i]), 0, 10, client=i) for i in range(12)]
    history.append(get(NEVER_WRITTEN, 11, 12))
    result = check(history, max_steps_per_key=1000)
    assert result.status == "unknown"
    assert not result.linearizable
    assert result.unknown_keys == ("k",)
    assert "not proven" in result.explanation
    assert check(history).status == "not_linearizable"


def test_memoization_keeps_concurrent_writers_cheap() -> None:
    # 12 concurrent writers and a read of a value never written: 12! orders (half a billion), but only
    # 12 * 2**11 configurations (which writes are done, which was last), each trying 12 writes at most.
    history = [put(bytes([i]), 0, 10, client=i) for i in range(12)]
    history.append(get(NEVER_WRITTEN, 11, 12))
    result = check(history, explain=False)
    assert result.status == "not_linearizable"
    assert result.steps <= 12 * 12 * 2**11 + 12


def test_many_concurrent_readers_are_placed_greedily() -> None:
    history = [put(A, 0, 1)]
    history += [get(A, 2, 10, client=i) for i in range(200)]
    history.append(get(B, 11, 12))
    result = check(history)
    assert result.status == "not_linearizable"
    assert result.steps < 10_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "incr"}, "unknown operation kind"),
        ({"kind": "put"}, "put needs a value"),
        ({"kind": "get", "value": A}, "get takes no value"),
        ({"kind": "put", "value": A, "expected": A}, "only cas takes an expected value"),
        ({"kind": "cas", "result": A}, "cas result must be a bool"),
        ({"kind": "get", "result": True}, "get result must be bytes or None"),
        ({"kind": "delete", "result": A}, "delete result must be None"),
        ({"kind": "get", "return_time": -1.0}, "before its call"),
    ],
)
def test_malformed_operations_are_refused(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"client": 0, "key": "k", "call_time": 0.0, "return_time": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        Operation(**fields)  # type: ignore[arg-type]


# The recorder.


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_recorder_ok_unknown_fail_and_in_flight() -> None:
    rec = HistoryRecorder(FakeClock())
    first = rec.call(1, "put", "k", value=A)  # t=1
    second = rec.call(2, "get", "k")  # t=2
    third = rec.call(3, "cas", "k", expected=A, value=B)  # t=3
    fourth = rec.call(4, "delete", "k")  # t=4
    rec.call(5, "put", "k", value=C)  # t=5, never answered
    rec.ok(second, A)  # t=6
    rec.ok(first)  # t=7
    rec.unknown(third)
    rec.fail(fourth)
    assert rec.history() == [
        Operation(1, "put", "k", 1.0, 7.0, value=A),
        Operation(2, "get", "k", 2.0, 6.0, result=A),
        Operation(3, "cas", "k", 3.0, None, value=B, expected=A),
        Operation(5, "put", "k", 5.0, None, value=C),
    ]
    for token in (first, third, fourth):
        with pytest.raises(ValueError, match="already finished"):
            rec.ok(token)
    with pytest.raises(ValueError, match="token 99 is unknown"):
        rec.unknown(99)
    with pytest.raises(ValueError, match="cas result must be a bool"):
        rec.ok(rec.call(1, "cas", "k", expected=None, value=A), None)
    with pytest.raises(ValueError, match="put needs a value"):
        rec.call(1, "put", "k")


def test_invoke_records_an_unanswered_call_as_unknown() -> None:
    rec = HistoryRecorder(FakeClock())
    with rec.invoke(1, "put", "k", value=A) as op:
        op.ok()
    with rec.invoke(1, "put", "k", value=B) as op:
        op.fail()
    with pytest.raises(TimeoutError), rec.invoke(1, "put", "k", value=C):
        raise TimeoutError
    assert rec.history() == [put(A, 1, 2, client=1), put(C, 4, None, client=1)]


class Register:
    """A linearizable in-memory KV map: a lock held around each operation's one instant."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def apply(self, kind: str, key: str, value: Value | None, expected: Value | None) -> Value | bool | None:
        with self.lock:
            current = self.data.get(key)
            if kind == "get":
                return current
            if kind == "cas" and current != expected:
                return False
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
            return True if kind == "cas" else None


def random_request(rng: random.Random) -> tuple[str, str, Value | None, Value | None]:
    kind = rng.choice(["put", "get", "delete", "cas"])
    key = rng.choice(["x", "y"])
    value = rng.choice([A, B, C]) if kind in ("put", "cas") else None
    expected = rng.choice([A, B, None]) if kind == "cas" else None
    return kind, key, value, expected


def test_recorder_from_threads() -> None:
    rec = HistoryRecorder()
    register = Register()

    def client(number: int) -> None:
        rng = random.Random(number)
        for _ in range(100):
            kind, key, value, expected = random_request(rng)
            token = rec.call(number, kind, key, value=value, expected=expected)  # type: ignore[arg-type]
            time.sleep(0)
            result = register.apply(kind, key, value, expected)
            rec.ok(token, result)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = rec.history()
    assert len(history) == 400
    result = check(history)
    assert result.linearizable, result.explanation


async def test_recorder_from_trio_tasks() -> None:
    rec = HistoryRecorder(trio.current_time)
    register = Register()

    async def client(number: int) -> None:
        rng = random.Random(number)
        for _ in range(50):
            kind, key, value, expected = random_request(rng)
            with rec.invoke(number, kind, key, value=value, expected=expected) as op:  # type: ignore[arg-type]
                await trio.sleep(rng.random() / 1000)
                result = register.apply(kind, key, value, expected)
                await trio.sleep(rng.random() / 1000)
                if number == 0 and rng.random() < 0.2:
                    continue  # the answer is lost: unknown
                op.ok(result)

    async with trio.open_nursery() as nursery:
        for number in range(6):
            nursery.start_soon(client, number)
    history = rec.history()
    assert len(history) == 300
    assert any(not op.completed for op in history)
    result = check(history)
    assert result.linearizable, result.explanation


# A brute-force oracle for small histories: every subset of the unknown operations, every order.


def brute_force(history: Sequence[Operation]) -> bool:
    for key in {op.key for op in history}:
        ops = [op for op in history if op.key == key]
        done = [op for op in ops if op.completed]
        maybe = [op for op in ops if not op.completed]
        if not any(
            legal_order_exists(done + list(chosen))
            for size in range(len(maybe) + 1)
            for chosen in itertools.combinations(maybe, size)
        ):
            return False
    return True


def legal_order_exists(ops: list[Operation]) -> bool:
    for order in itertools.permutations(ops):
        # Real time: an operation that returned before another's call comes first.
        if any(
            later.return_time is not None and later.return_time < earlier.call_time
            for position, earlier in enumerate(order)
            for later in order[position + 1 :]
        ):
            continue
        state: Value | None = None
        for op in order:
            answer, state = step(op, state)
            if op.completed and answer != op.result:
                break
        else:
            return True
    return False


def step(op: Operation, state: Value | None) -> tuple[Value | bool | None, Value | None]:
    """What ``op`` answers at ``state``, and the state after it: the model, written out plainly."""
    if op.kind == "get":
        return state, state
    if op.kind == "put":
        return None, op.value
    if op.kind == "delete":
        return None, None
    if state == op.expected:
        return True, op.value
    return False, state


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    """Random (mostly not linearizable) histories: small times, so ties and overlaps are common."""
    ops: list[Operation] = []
    for client in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["put", "get", "delete", "cas"]))
        key = draw(st.sampled_from(["x", "y"])) if draw(st.integers(0, 4)) == 0 else "k"
        call = float(draw(st.integers(0, 6)))
        ret = None if draw(st.integers(0, 3)) == 0 else call + draw(st.integers(0, 4))
        value = draw(st.sampled_from([A, B])) if kind == "put" else None
        expected = None
        result: Value | bool | None = None
        if kind == "cas":
            value = draw(st.sampled_from([A, B, None]))
            expected = draw(st.sampled_from([A, B, None]))
            result = draw(st.booleans())
        elif kind == "get":
            result = draw(st.sampled_from([A, B, None]))
        ops.append(Operation(client, kind, key, call, ret, value=value, expected=expected, result=result))  # type: ignore[arg-type]
    return ops


@settings(max_examples=600, deadline=None)
@given(small_histories())
def test_agrees_with_brute_force(history: list[Operation]) -> None:
    result = check(history)
    assert result.status != "unknown"
    assert result.linearizable == brute_force(history), result.explanation
    if not result.linearizable:
        assert not brute_force(result.counterexample)


# Generated linearizable histories: a sequential run, then intervals around each linearization point.


@st.composite
def sequential_runs(draw: st.DrawFn) -> list[Operation]:
    """A sequential run of the register, each operation then given an interval around its instant.

    Some operations lose their answer (unknown) after taking effect, and some unknown ones that never
    took effect are mixed in; either way the history stays linearizable.
    """
    keys = draw(st.sampled_from([["k"], ["k", "x"], ["k", "x", "y"]]))
    values = [A, B, C]
    state: dict[str, Value | None] = dict.fromkeys(keys)
    ops: list[Operation] = []
    steps = draw(st.integers(1, 40))
    for position in range(steps):
        instant = 10.0 * position
        kind = draw(st.sampled_from(["put", "get", "delete", "cas"]))
        key = draw(st.sampled_from(keys))
        call = instant - draw(st.floats(0, 25))
        ret: float | None = instant + draw(st.floats(0, 25))
        value = draw(st.sampled_from(values)) if kind == "put" else None
        expected = None
        result: Value | bool | None = None
        current = state[key]
        if kind == "get":
            result = current
        elif kind == "put":
            state[key] = value
        elif kind == "delete":
            state[key] = None
        else:
            value = draw(st.sampled_from([*values, None]))
            expected = draw(st.sampled_from([current, *values, None]))
            result = current == expected
            if result:
                state[key] = value
        if kind != "get" and draw(st.integers(0, 9)) == 0:
            ret = None  # it happened, but its answer was lost
        if ret is None:
            result = None
        ops.append(Operation(draw(st.integers(0, 15)), kind, key, call, ret, value, expected, result))  # type: ignore[arg-type]
        if draw(st.integers(0, 14)) == 0:
            # An operation that never took effect and never answered.
            other = draw(st.sampled_from(keys))
            ops.append(Operation(99, "put", other, call, None, value=draw(st.sampled_from(values))))
    ops.sort(key=lambda op: op.call_time)
    return ops


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequential_runs())
def test_generated_linearizable_histories_pass(history: list[Operation]) -> None:
    result = check(history)
    assert result.linearizable, result.explanation


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequential_runs(), st.data())
def test_a_read_of_a_value_never_written_is_caught(history: list[Operation], data: st.DataObject) -> None:
    gets = [i for i, op in enumerate(history) if op.kind == "get" and op.completed]
    assume(gets)
    i = data.draw(st.sampled_from(gets))
    bad = history[i]
    history[i] = Operation(bad.client, "get", bad.key, bad.call_time, bad.return_time, result=NEVER_WRITTEN)
    result = check(history)
    assert result.status == "not_linearizable", result.explanation
    assert result.failing_keys == (bad.key,)
    assert history[i] in result.counterexample


# A large history, shaped like a KV test's: many clients, many keys, a few lost answers.


def concurrent_history(
    seed: int, *, ops: int, keys: int, clients: int, unknown_rate: float = 0.01
) -> list[Operation]:
    """Clients that each run one operation at a time against a linearizable store.

    Each operation takes effect at a random instant inside its interval, so the history is linearizable.
    An unknown operation took effect or not, at random, and its client moves on.
    """
    rng = random.Random(seed)
    values = [bytes([v]) for v in range(6)]
    # (instant, the operation as if unanswered, its return time, whether it takes effect)
    planned: list[tuple[float, Operation, float | None, bool]] = []
    clock = [rng.random() for _ in range(clients)]
    for number in range(ops):
        client = number % clients
        key = f"key{rng.randrange(keys)}"
        kind = rng.choice(["put", "get", "get", "delete", "cas", "cas"])
        # A put writes a value of its own, so a test can tell exactly which write a read saw.
        value = f"put {number}".encode() if kind == "put" else rng.choice(values) if kind == "cas" else None
        expected = rng.choice([*values[:3], None]) if kind == "cas" else None
        call = clock[client]
        instant = call + rng.random()
        ret: float | None = instant + rng.random()
        happens = True
        if rng.random() < unknown_rate:
            happens = rng.random() < 0.5
            ret = None
        op = Operation(client, kind, key, call, None, value=value, expected=expected)  # type: ignore[arg-type]
        planned.append((instant, op, ret, happens))
        clock[client] = (ret if ret is not None else instant + 5.0) + rng.random() * 0.1
    state: dict[str, Value | None] = {}
    history: list[Operation] = []
    for _, op, ret, happens in sorted(planned, key=lambda item: item[0]):
        current = state.get(str(op.key))
        answer, after = step(op, current)
        if happens:
            state[str(op.key)] = after
        if ret is not None:
            op = Operation(op.client, op.kind, op.key, op.call_time, ret, op.value, op.expected, answer)
        history.append(op)
    history.sort(key=lambda op: op.call_time)
    return history


def test_a_large_generated_history_is_linearizable() -> None:
    history = concurrent_history(1, ops=10_000, keys=100, clients=16)
    started = time.perf_counter()
    result = check(history)
    elapsed = time.perf_counter() - started
    assert result.linearizable, result.explanation
    assert result.keys == 100 and result.operations == 10_000
    print(f"10,000 operations, 100 keys, 16 clients: {elapsed:.2f} s, {result.steps} steps")


def test_a_hot_key_history_is_linearizable() -> None:
    # 16 clients on one key is the hard case: about a million search steps.
    result = check(concurrent_history(2, ops=2_000, keys=1, clients=16))
    assert result.linearizable, result.explanation


def test_a_stale_read_in_a_hot_key_history_is_caught() -> None:
    # Proving a violation means trying every order up to it, so keep this history short.
    history = concurrent_history(2, ops=150, keys=1, clients=16)
    assert check(history).linearizable
    # Make a late read see a value that two later writes, done before it, overwrote.
    puts = [op for op in history if op.kind == "put" and op.return_time is not None]
    first = puts[0]
    assert first.return_time is not None
    second = next(op for op in puts if op.call_time > first.return_time)
    assert second.return_time is not None
    late = max(
        (i for i, op in enumerate(history) if op.kind == "get" and op.completed),
        key=lambda i: history[i].call_time,
    )
    assert history[late].call_time > second.return_time
    bad = history[late]
    history[late] = Operation(bad.client, "get", bad.key, bad.call_time, bad.return_time, result=first.value)
    result = check(history)
    assert result.status == "not_linearizable", result.explanation
    assert history[late] in result.counterexample
