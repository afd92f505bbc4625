"""The gateway's keys: reports signed with the meter key, orders with the member's wallet key
(only if the member put one on the gateway); a gateway holding its meter key alone can report
but not spend. Delivered through the outbox to the real community contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import ConfigError, load_config
from gateway.outbox import DELIVERED, NO_WALLET_KEY, REJECTED, Backoff, deliver_due
from gateway.signers import SignerError, Signers, load_wallet_key
from gateway.store import Store
from ledger.contract import default_genesis, make_contract, sign_report
from ledger.contract.api import BlockContext, Receipt
from ledger.keys import public_hex, write_key
from ledger.tx import SignedTx, sign_tx

HOUR = "2026-11-24T13"
OPERATOR = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
WALLET = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
METER = Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)


class ContractLedger:
    """A deliverer that applies each transaction to the real contract (one per block)."""

    def __init__(self) -> None:
        self.contract = make_contract(default_genesis(public_hex(OPERATOR), treasury=10**12))
        self.height = 0
        self.nonce = 0
        for kind, body in [
            ("registry.admit", {"id_grid": "H1", "commitment": "ab" * 32,
                                "public_key": public_hex(WALLET), "role": "prosumer"}),
            ("registry.admit", {"id_grid": "H2", "commitment": "cd" * 32,
                                "public_key": public_hex(Ed25519PrivateKey.generate()),
                                "role": "consumer"}),
            ("registry.add_meter", {"meter_id": "m1", "owner": "H1",
                                    "gateway_key": public_hex(METER)}),
            ("meter.confirm", {"meter_id": "m1"}),
            ("token.transfer", {"to": "H1", "amount": 10**9}),
            ("auction.open", {"listing_id": HOUR}),
        ]:  # fmt: skip
            self.nonce += 1
            signer = WALLET if kind == "meter.confirm" else OPERATOR
            assert self.submit_now(sign_tx(signer, kind, body, self.nonce)).ok

    def submit_now(self, tx: SignedTx) -> Receipt:
        assert tx.verify()
        self.height += 1
        return self.contract.apply(tx.to_contract(), BlockContext(self.height, 0, 0))

    async def submit(self, tx: SignedTx) -> Receipt:
        return self.submit_now(tx)


def _orders(store: Store) -> dict[str, int]:
    report = sign_report(METER, "m1", f"{HOUR}:00", 10, 500)
    bid = {"listing_id": HOUR, "wh": 100, "bid_price": 50_000}
    return {
        "report": store.enqueue("meter.report", report, 1, 0),
        "bid": store.enqueue("auction.bid", bid, 2, 0),
        "transfer": store.enqueue("token.transfer", {"to": "H2", "amount": 5}, 3, 0),
    }


async def test_meter_key_reports_and_the_wallet_key_trades(tmp_path: Path) -> None:
    ledger = ContractLedger()
    store = Store(tmp_path / "gw.db")
    ids = _orders(store)
    await deliver_due(store, Signers(METER, WALLET).key_for, ledger, 0, Backoff())
    assert all(store.outbox_get(i).state == DELIVERED for i in ids.values())  # type: ignore[union-attr]
    assert ledger.contract.query("balance", {"id_grid": "H2"})["balance"] == 5
    store.close()


async def test_a_gateway_with_its_meter_key_alone_reports_but_cannot_spend(tmp_path: Path) -> None:
    ledger = ContractLedger()
    store = Store(tmp_path / "gw.db")
    ids = _orders(store)
    await deliver_due(store, Signers(METER).key_for, ledger, 0, Backoff())
    rows = {name: store.outbox_get(i) for name, i in ids.items()}
    assert rows["report"].state == DELIVERED  # type: ignore[union-attr]
    for name in ("bid", "transfer"):
        assert (rows[name].state, rows[name].code) == (REJECTED, NO_WALLET_KEY)  # type: ignore[union-attr]
    # and a thief who signs with the meter key anyway is refused by the ledger
    for n, (kind, body) in enumerate([
        ("token.transfer", {"to": "H2", "amount": 5}),
        ("auction.bid", {"listing_id": HOUR, "wh": 100, "bid_price": 50_000}),
    ]):  # fmt: skip
        assert ledger.submit_now(sign_tx(METER, kind, body, 100 + n)).code == "NOT_MEMBER"
    assert ledger.contract.query("balance", {"id_grid": "H2"})["balance"] == 0
    store.close()


def test_the_wallet_key_must_not_be_the_meter_key(tmp_path: Path) -> None:
    with pytest.raises(SignerError, match="must not be the meter key"):
        Signers(METER, METER)
    assert load_wallet_key(None) is None
    bad = tmp_path / "wallet.key"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="wallet_key_file"):
        load_wallet_key(bad)
    loose = tmp_path / "loose.key"
    write_key(loose, WALLET)
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_wallet_key(loose)


def test_config_names_the_wallet_key_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\nid = "h1"\ndata_dir = "d"\nwallet_key_file = "wallet.key"\n', encoding="utf-8"
    )
    cfg = load_config(path)
    assert cfg.wallet_key_file == tmp_path / "d" / "wallet.key"
    assert cfg.key_file == tmp_path / "d" / "gateway.key"
    path.write_text('[gateway]\nid = "h1"\nwallet_key_file = 5\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="wallet_key_file"):
        load_config(path)
