"""Fault 7: 10,000 malformed messages, drawn by hypothesis, mixed with 100 valid ones.

Every bad one ends in the DLQ exactly once with a reason header, every valid one succeeds, and no worker
process crashes. The messages are drawn up front, reproducibly: hypothesis runs one @given with a fixed
@seed (SEED below) and collects each example it generates; with the same hypothesis version (pinned in
requirements.txt) the same 10,000 messages come out every run.
"""

import json
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import sample_request

SEED = 20261130
POISON_COUNT = 10_000
VALID_COUNT = 100
MAX_BYTES = 64 * 1024   # the worker's MAX_MESSAGE_BYTES in this test: "huge" means more than this

TEMPLATE = sample_request(request_id="template", user_id="poison-user")
ids = st.uuids().map(lambda u: f"poison-{u}")


def request_with(request_id: str, **fields) -> dict:
    return {**TEMPLATE, "request_id": request_id, **fields}


def encode(document) -> bytes:
    return json.dumps(document).encode()


# null in an optional field means "absent" and ids may be non-negative integers (the contract): not poison
json_scalars = st.one_of(st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
not_object = st.one_of(json_scalars, st.lists(st.integers(), max_size=3))
not_list = st.one_of(json_scalars, st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
not_string = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                       st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
not_an_id = st.one_of(st.none(), st.booleans(), st.integers(max_value=-1), st.floats(allow_nan=False, allow_infinity=False),
                      st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
bad_id_string = st.one_of(st.just(""), st.text(alphabet=" /#$%?&*\u00e9\u2713", min_size=1, max_size=12),
                          st.integers(129, 20_000).map(lambda n: "a" * n))  # pattern: 1-128 of [A-Za-z0-9._:@-]

# Each strategy draws (kind, body, AMQP properties).
wrong_types = st.one_of(
    *[st.builds(lambda rid, value, field=field: encode(request_with(rid, **{field: value})), ids, values)
      for field, values in [
          ("patient", not_object), ("cvd_summary", not_object), ("assessment", not_object),
          ("labs", st.one_of(not_list, st.lists(not_object, min_size=1, max_size=3))),
          ("plan", st.one_of(not_list, st.lists(st.one_of(st.integers(), st.none(), st.booleans()), min_size=1))),
          ("red_flags", not_list), ("resources_table", not_list), ("disclaimer", not_string)]],
    st.builds(lambda value: encode({**TEMPLATE, "request_id": value}), st.one_of(not_an_id, bad_id_string)),
    st.builds(lambda rid, value: encode(request_with(rid, user_id=value)), ids, st.one_of(not_an_id, bad_id_string)),
).map(lambda body: ("wrong_types", body, {}))

missing_ids = st.builds(
    lambda rid, dropped: encode({k: v for k, v in request_with(rid).items() if k not in dropped}),
    ids, st.sampled_from([("request_id",), ("user_id",), ("request_id", "user_id")]),  # patient is optional
).map(lambda body: ("missing_ids", body, {}))

not_json_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters=" \t\n\r"), min_size=1, max_size=40)
bad_json = st.one_of(
    st.builds(lambda rid, share: encode(request_with(rid))[: int(len(encode(request_with(rid))) * share)],
              ids, st.floats(0, 0.999)),                                               # cut short
    st.builds(lambda rid, tail: encode(request_with(rid)) + tail.encode(), ids, not_json_text),  # trailing junk
    st.builds(lambda rid: repr(request_with(rid)).encode(), ids),                        # single quotes
    st.text(max_size=200).map(str.encode),                                                # anything at all
).map(lambda body: ("bad_json", body, {}))

invalid_utf8 = st.sampled_from([b"\xff", b"\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xed\xa0\x80", b"\xf0\x28\x8c\xbc", b"\x80"])
non_utf8 = st.one_of(
    st.builds(lambda rid, share, junk: _splice(encode(request_with(rid)), share, junk), ids, st.floats(0, 1), invalid_utf8),
    st.builds(lambda junk, rest: junk + rest, invalid_utf8, st.binary(max_size=50)),
).map(lambda body: ("non_utf8", body, {}))

huge = st.one_of(
    st.builds(lambda rid, n, ch: encode(request_with(rid, disclaimer=ch * n)), ids,
              st.integers(MAX_BYTES // 6, MAX_BYTES // 6 + 2048), st.sampled_from("\u00e9\u2713")),  # 6 bytes each
    st.builds(lambda rid, n: encode(request_with(rid, patient={"notes": "n" * n})), ids,
              st.integers(MAX_BYTES, MAX_BYTES + 8192)),
).map(lambda body: ("huge", body, {}))

deep_nesting = st.one_of(
    st.builds(lambda rid, depth: _nest(request_with(rid, extra="@"), b"[" * depth + b"]" * depth),
              ids, st.integers(1_000, 4_000)),
    st.builds(lambda rid, depth: _nest(request_with(rid, patient="@"), b'{"a": ' * depth + b"{}" + b"}" * depth),
              ids, st.integers(1_000, 2_000)),
    st.integers(1_000, 4_000).map(lambda depth: b"[" * depth + b"]" * depth),
).map(lambda body: ("deep_nesting", body, {}))

content_types = st.sampled_from(["text/plain", "application/xml", "text/html; charset=utf-8", "image/png",
                                 "application/octet-stream", "application/x-www-form-urlencoded", "multipart/form-data"])
wrong_content_type = st.builds(lambda rid, kind: ("wrong_content_type", encode(request_with(rid)), {"content_type": kind}),
                               ids, content_types)

# How often each kind is drawn (in 100ths): huge bodies are rarer, to keep the run short.
KINDS = {"bad_json": 22, "wrong_types": 27, "missing_ids": 13, "non_utf8": 15, "wrong_content_type": 12,
         "deep_nesting": 9, "huge": 2}
STRATEGIES = {"bad_json": bad_json, "wrong_types": wrong_types, "missing_ids": missing_ids, "non_utf8": non_utf8,
              "wrong_content_type": wrong_content_type, "deep_nesting": deep_nesting, "huge": huge}
poison = st.sampled_from([kind for kind, share in KINDS.items() for _ in range(share)]).flatmap(STRATEGIES.get)


def _nest(document: dict, nested: bytes) -> bytes:
    """The document as JSON with its "@" value replaced by `nested`."""
    return encode(document).replace(b'"@"', nested, 1)


def _splice(body: bytes, share: float, junk: bytes) -> bytes:
    at = int(len(body) * share)
    return body[:at] + junk + body[at:]


def draw_poison(count: int) -> list[tuple[str, bytes, dict]]:
    """`count` malformed messages, the same ones on every run (hypothesis with a fixed seed)."""
    drawn: list[tuple[str, bytes, dict]] = []

    @seed(SEED)
    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(poison)
    def collect(message):
        drawn.append(message)

    collect()
    assert len(drawn) >= count, f"hypothesis drew only {len(drawn)} messages"
    return drawn[:count]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_10000_malformed_messages_are_each_dead_lettered_once_and_100_valid_ones_succeed(parent, ledger, llm):
    poison_messages = draw_poison(POISON_COUNT)
    valid = [sample_request(request_id=f"valid-{i:03d}", user_id=f"user-{i % 7}") for i in range(VALID_COUNT)]
    mixed: list = [("poison", f"poison-{i:05d}", message) for i, message in enumerate(poison_messages)]
    mixed += [("valid", request["request_id"], request) for request in valid]
    random.Random(SEED).shuffle(mixed)

    run = parent("--processes", "2", "--threads", "4", MAX_MESSAGE_BYTES=str(MAX_BYTES))
    children = sorted(run.children())
    for what, message_id, message in mixed:
        if what == "valid":
            ledger.publish(message)
        else:
            _, body, properties = message
            ledger.publish_poison(message_id, body, **properties)

    seconds = ledger.settle(timeout=600)
    figures = ledger.verify("poison_input")
    assert figures.dlq == POISON_COUNT and figures.stored == figures.succeeded == VALID_COUNT
    reasons = Counter((properties.headers or {}).get("x-death-reason") for properties, _ in ledger.dead)
    assert reasons == {"invalid": POISON_COUNT}
    # no worker process crashed or was replaced, and none raised anything unexpected
    assert sorted(run.children()) == children
    assert not run.events("child_exited") and not run.events("child_restarted") and not run.events("child_crashed")
    assert not run.events("unexpected_error")
    assert run.metric("report_worker_child_restarts_total") == 0
    assert llm.stats()["calls"] == VALID_COUNT
    kinds = Counter(kind for kind, _, _ in poison_messages)
    figures.notes.update(seconds=round(seconds, 1), failed_responses=sum(
        1 for r in ledger.responses if r["status"] == "failed"), **{f"kind_{k}": n for k, n in sorted(kinds.items())})
    print("\n" + figures.line())
