"""The gateway's keys: reports signed with the meter key, offers and bids with the order key the
member delegated on chain; the member's wallet key is never on the gateway. A stolen gateway can
report and trade energy, not transfer a token. Delivered through the outbox to the real
community contract."""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import GatewayConfigError
from gateway.config_parse import load_config
from gateway.outbox import DELIVERED, NO_KEY, REJECTED, Backoff, deliver_due
from gateway.signers import SignerError, Signers, load_order_key
from gateway.store import Store
from ledger.contract import default_genesis, make_contract, sign_report
from ledger.contract.api import BlockContext, Receipt
from ledger.keys import public_hex, write_key
from ledger.tx import SignedTx, sign_tx

HOUR = "2026-11-24T13"
NOW_MS = calendar.timegm((2026, 11, 24, 14, 1, 0)) * 1000  # block time: the hour's reports are due
OPERATOR = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
WALLET = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)  # the member's, never on the Pi
METER = Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
ORDER = Ed25519PrivateKey.from_private_bytes(bytes([4]) * 32)


class ContractLedger:
    """A deliverer that applies each transaction to the real contract (one per block)."""

    def __init__(self) -> None:
        genesis = default_genesis(public_hex(OPERATOR), treasury=10**12, sealed_bids=False)
        self.contract = make_contract(genesis)
        self.height = 0
        self.nonce = 0
        for signer, kind, body in [
            (OPERATOR, "registry.admit", {"id_grid": "H1", "commitment": "ab" * 32,
                                          "public_key": public_hex(WALLET), "role": "prosumer"}),
            (OPERATOR, "registry.admit", {"id_grid": "H2", "commitment": "cd" * 32,
                                          "public_key": public_hex(Ed25519PrivateKey.generate()),
                                          "role": "consumer"}),
            (OPERATOR, "registry.add_meter", {"meter_id": "m1", "owner": "H1",
                                              "gateway_key": public_hex(METER),
                                              "import_limit_w": 6_900, "export_limit_w": 3_680}),
            (WALLET, "meter.confirm", {"meter_id": "m1"}),
            (WALLET, "member.set_order_key", {"id_grid": "H1", "public_key": public_hex(ORDER)}),
            (OPERATOR, "token.transfer", {"to": "H1", "amount": 10**9}),
            (OPERATOR, "auction.open", {"listing_id": HOUR}),
        ]:  # fmt: skip
            self.nonce += 1
            assert self.submit_now(sign_tx(signer, kind, body, self.nonce)).ok

    def submit_now(self, tx: SignedTx) -> Receipt:
        assert tx.verify()
        self.height += 1
        return self.contract.apply(tx.to_contract(), BlockContext(self.height, 0, NOW_MS))

    async def submit(self, tx: SignedTx) -> Receipt:
        return self.submit_now(tx)


def _queue(store: Store) -> dict[str, int]:
    report = sign_report(METER, "m1", f"{HOUR}:00", 10, 500)
    bid = {"listing_id": HOUR, "wh": 100, "bid_price": 50_000}
    return {
        "report": store.enqueue("meter.report", report, 1, 0),
        "bid": store.enqueue("auction.bid", bid, 2, 0),
        "transfer": store.enqueue("token.transfer", {"to": "H2", "amount": 5}, 3, 0),
    }


def _rows(store: Store, ids: dict[str, int]) -> dict[str, tuple[str, str]]:
    rows = {name: store.outbox_get(i) for name, i in ids.items()}
    return {name: (r.state, r.code) for name, r in rows.items() if r is not None}


async def test_meter_key_reports_order_key_bids_and_nothing_transfers(tmp_path: Path) -> None:
    ledger = ContractLedger()
    store = Store(tmp_path / "gw.db")
    ids = _queue(store)
    await deliver_due(store, Signers(METER, ORDER).key_for, ledger, 0, Backoff())
    assert _rows(store, ids) == {
        "report": (DELIVERED, "OK"),
        "bid": (DELIVERED, "OK"),
        "transfer": (REJECTED, NO_KEY),  # no key on the gateway may move a token
    }
    book = ledger.contract.query("order_book", {"listing_id": HOUR})
    assert [b["buyer"] for b in book["bids"]] == ["H1"]
    assert ledger.contract.query("balance", {"id_grid": "H2"})["balance"] == 0
    store.close()


async def test_a_stolen_gateway_signing_a_transfer_itself_is_refused(tmp_path: Path) -> None:
    ledger = ContractLedger()
    for n, signer in enumerate((METER, ORDER)):  # both keys a thief finds on the Pi
        for kind, body in [
            ("token.transfer", {"to": "H2", "amount": 5}),
            ("member.rotate_key", {"public_key": public_hex(Ed25519PrivateKey.generate())}),
            ("quorum.propose", {"proposal_id": f"p{n}",
                                "action": {"kind": "mint", "to": "H2", "amount": 5}}),
        ]:  # fmt: skip
            assert ledger.submit_now(sign_tx(signer, kind, body, 100 + n)).code == "NOT_MEMBER"
    bid = {"listing_id": HOUR, "wh": 100, "bid_price": 50_000}
    assert ledger.submit_now(sign_tx(METER, "auction.bid", bid, 200)).code == "NOT_MEMBER"
    assert ledger.contract.query("balance", {"id_grid": "H2"})["balance"] == 0


async def test_a_gateway_without_an_order_key_reports_only(tmp_path: Path) -> None:
    ledger = ContractLedger()
    store = Store(tmp_path / "gw.db")
    ids = _queue(store)
    await deliver_due(store, Signers(METER).key_for, ledger, 0, Backoff())
    rows = _rows(store, ids)
    assert rows["report"] == (DELIVERED, "OK")
    assert rows["bid"] == rows["transfer"] == (REJECTED, NO_KEY)
    store.close()


def test_the_order_key_must_not_be_the_meter_key(tmp_path: Path) -> None:
    with pytest.raises(SignerError, match="must not be the meter key"):
        Signers(METER, METER)
    assert load_order_key(None) is None
    bad = tmp_path / "order.key"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    with pytest.raises(GatewayConfigError, match="order_key_file"):
        load_order_key(bad)
    loose = tmp_path / "loose.key"
    write_key(loose, ORDER)
    loose.chmod(0o644)
    with pytest.raises(GatewayConfigError, match="chmod 600"):
        load_order_key(loose)


def test_config_names_the_order_key_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\nid = "h1"\ndata_dir = "d"\norder_key_file = "order.key"\n', encoding="utf-8"
    )
    cfg = load_config(path)
    assert cfg.order_key_file == tmp_path / "d" / "order.key"
    assert cfg.key_file == tmp_path / "d" / "gateway.key"
    path.write_text('[gateway]\nid = "h1"\norder_key_file = 5\n', encoding="utf-8")
    with pytest.raises(GatewayConfigError, match="order_key_file"):
        load_config(path)


async def test_the_daemon_signs_with_the_keys_its_config_names(tmp_path: Path) -> None:
    """The gateway as built from its config file (``gateway.build``): its delivery loop signs a
    report with the meter key (``key_file``), a bid with the order key (``order_key_file``),
    and sends nothing it holds no key for."""
    import asyncio

    from gateway.clock import ManualClock
    from gateway.daemon import Gateway

    (tmp_path / "d").mkdir()
    write_key(tmp_path / "d" / "gateway.key", METER)
    write_key(tmp_path / "d" / "order.key", ORDER)
    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\nid = "h1"\ndata_dir = "d"\norder_key_file = "order.key"\n', encoding="utf-8"
    )
    ledger = ContractLedger()
    gw = Gateway(load_config(path), clock=ManualClock(0), deliverer=ledger)
    assert gw.signers.key_for("meter.report") is gw.key
    gw.open()
    ids = {
        "report": gw.enqueue_tx("meter.report", sign_report(METER, "m1", f"{HOUR}:00", 10, 500)),
        "bid": gw.enqueue_tx("auction.bid", {"listing_id": HOUR, "wh": 100, "bid_price": 50_000}),
        "transfer": gw.enqueue_tx("token.transfer", {"to": "H2", "amount": 5}),
    }
    await gw.start()
    try:
        for _ in range(100):  # the loop's first round runs at once; real work, no clock moves
            rows = {name: gw.outbox_status(i) for name, i in ids.items()}
            if all(r is not None and r.state != "pending" for r in rows.values()):
                break
            await asyncio.sleep(0)
    finally:
        await gw.shutdown()
    assert {name: (r.state, r.code) for name, r in rows.items() if r is not None} == {
        "report": (DELIVERED, "OK"),
        "bid": (DELIVERED, "OK"),
        "transfer": (REJECTED, NO_KEY),
    }
    book = ledger.contract.query("order_book", {"listing_id": HOUR})
    assert [b["buyer"] for b in book["bids"]] == ["H1"]
