"""The replica set as members decide it (quorum action ``replicas``): only a quorum of members
changes it, the form and the id/key rules are checked, hostile lists are refused whole."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.contract.community import CommunityContract
from tests.contract.harness import Community, hexkey, key, rejected


def replica(i: int, port: int | None = None) -> dict[str, Any]:
    return {
        "id": i,
        "host": "127.0.0.1",
        "port": port or 7100 + i,
        "public_key": hexkey(key(50 + i)),
    }


def action(ids: list[int]) -> dict[str, Any]:
    return {"kind": "replicas", "replicas": [replica(i) for i in ids]}


def _community() -> Community:
    c = Community()
    for n in range(3):
        c.admit(f"M{n}", "prosumer", 10 + n)
    return c


def changes(c: Community) -> list[tuple[int, list[dict[str, Any]]]]:
    contract = c.contract
    assert isinstance(contract, CommunityContract)
    return contract.reconfigurations()


def test_a_quorum_of_members_changes_the_replica_set_and_the_operator_alone_cannot() -> None:
    c = _community()
    opened = c.ok("OPERATOR", "quorum.propose", {"proposal_id": "add-4", "action": action(
        [0, 1, 2, 3, 4])})  # fmt: skip
    assert opened["state"] == "OPEN" and changes(c) == []
    assert c.ok("M0", "quorum.approve", {"proposal_id": "add-4"})["state"] == "OPEN"
    done = c.ok("M1", "quorum.approve", {"proposal_id": "add-4"})
    assert done["state"] == "EXECUTED" and done["replica_sets"] == 1
    assert changes(c) == [(c.height, action([0, 1, 2, 3, 4])["replicas"])]
    # a snapshot carries them (a restarted replica takes its epochs from its own state)
    again = CommunityContract.__new__(CommunityContract)
    again._replica_sets = []
    again.restore(c.contract.snapshot())
    assert again.reconfigurations() == changes(c)


def test_replica_sets_that_break_the_rules_are_refused() -> None:
    c = _community()
    c.ok("M0", "quorum.propose", {"proposal_id": "a", "action": action([0, 1, 2, 3, 4])})
    c.ok("M1", "quorum.approve", {"proposal_id": "a"})
    assert len(changes(c)) == 1
    other_key = [replica(i) for i in range(4)] + [{**replica(4), "public_key": hexkey(key(90))}]
    stolen = [replica(i) for i in range(4)] + [
        {**replica(5), "public_key": replica(4)["public_key"]}
    ]
    bad = {
        "BAD_REPLICA_SET": [
            other_key,  # replica 4 with another key
            stolen,  # replica 4's key under another id
            [
                replica(0),
                replica(1),
                replica(2),
                {**replica(3), "public_key": replica(0)["public_key"]},
            ],
            [replica(0), replica(1), replica(2), replica(3, port=7100)],  # address twice
        ],
        "BAD_BODY": [
            [replica(0), replica(1), replica(2)],  # three
            [replica(i) for i in (0, 2, 1, 3)],  # ids not increasing
            [replica(0), replica(1), replica(2), {**replica(3), "host": "replica-3.lan"}],
            [replica(0), replica(1), replica(2), {**replica(3), "port": 0}],
            [replica(0), replica(1), replica(2), {**replica(3), "extra": 1}],
            [replica(0), replica(1), replica(2), {**replica(3), "id": 256}],
            "0,1,2,3",
        ],
    }
    for code, lists in bad.items():
        for n, replicas in enumerate(lists):
            body = {
                "proposal_id": f"{code}{n}",
                "action": {"kind": "replicas", "replicas": replicas},
            }
            rejected(c, "M0", "quorum.propose", body, code)
    assert len(changes(c)) == 1


ITEM = st.one_of(
    st.dictionaries(
        st.sampled_from(["id", "host", "port", "public_key", "x"]),
        st.one_of(st.integers(-5, 70_000), st.text(max_size=70), st.none()),
        max_size=5,
    ),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=5),
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.lists(ITEM, max_size=8), st.text(max_size=10), st.integers(0, 9), st.none()))
def test_any_hostile_replica_list_is_refused_and_changes_nothing(replicas: Any) -> None:
    c = _community()
    body = {"proposal_id": "h", "action": {"kind": "replicas", "replicas": replicas}}
    receipt = c.tx("M0", "quorum.propose", body)
    assert receipt.code in ("BAD_BODY", "BAD_REPLICA_SET"), receipt
    assert changes(c) == []
