"""The trading agent's orders executed by the real community contract, and the contract's
clearing read back by the agent: the body schemas and the price band agree end to end."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.ems.agent import TradingAgent
from gateway.ems.tariff import Tariff
from ledger.contract import default_genesis, make_contract
from ledger.contract.api import BlockContext, Transaction

OPERATOR, SELLER, BUYER = (
    Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32).public_key().public_bytes_raw()
    for n in (1, 2, 3)
)
LISTING = "2026-06-15T14"


class Ledger:
    def __init__(self, sealed: bool = False) -> None:
        genesis = default_genesis(OPERATOR.hex(), treasury=10**12, sealed_bids=sealed)
        self.contract = make_contract(genesis)
        self.nonce = itertools.count(1)
        self.height = itertools.count(1)

    def apply(self, sender: bytes, kind: str, body: dict) -> dict:
        nonce = next(self.nonce)
        tx_id = hashlib.sha256(f"{sender.hex()}/{nonce}".encode()).hexdigest()
        receipt = self.contract.apply(Transaction(tx_id, sender, kind, body, nonce),
                                      BlockContext(next(self.height), 0, 1_781_000_000_000))
        assert receipt.ok, (kind, receipt.code, receipt.message)
        return dict(receipt.result)


def _setup(led: Ledger) -> Ledger:
    led.apply(OPERATOR, "registry.admit", {"id_grid": "home-1", "commitment": "ab" * 32,
              "public_key": SELLER.hex(), "role": "prosumer"})
    led.apply(OPERATOR, "registry.admit", {"id_grid": "home-2", "commitment": "cd" * 32,
              "public_key": BUYER.hex(), "role": "consumer"})
    led.apply(OPERATOR, "registry.add_res", {"res_id": "pv-1", "owner": "home-1", "kind": "PV",
                                             "rated_power_w": 3000})
    led.apply(OPERATOR, "token.transfer", {"to": "home-2", "amount": 5_000_000})
    led.apply(OPERATOR, "auction.open", {"listing_id": LISTING})
    return led


@pytest.fixture
def ledger() -> Ledger:
    return _setup(Ledger())  # an open book


def test_offer_and_bid_clear_and_feed_back(ledger: Ledger):
    tariff = Tariff.from_params(ledger.contract.query("params", {}))
    seller = TradingAgent(id_grid="home-1", tariff=tariff, res_id="pv-1", res_rated_w=3000)
    buyer = TradingAgent(id_grid="home-2", tariff=tariff)
    offer = seller.decide(LISTING, -2500)
    balance = ledger.contract.query("balance", {"id_grid": "home-2"})["balance"]
    bid = buyer.decide(LISTING, 1200, balance_utok=balance)
    assert offer is not None and bid is not None
    ledger.apply(SELLER, offer.kind, offer.body)
    ledger.apply(BUYER, bid.kind, bid.body)
    result = ledger.apply(OPERATOR, "auction.close", {"listing_id": LISTING})
    sold = seller.read_clearing(result)
    bought = buyer.read_clearing(result)
    assert result["traded_wh"] == sold.sold_wh == bought.bought_wh == bid.body["wh"] > 0
    assert sold.mcp == bought.mcp == result["mcp"]
    assert offer.body["reserve_price"] <= result["mcp"] <= bid.body["bid_price"]
    assert seller.expected_price(14) != tariff.community_midpoint(14)  # learnt


def test_an_offer_above_the_rated_power_is_never_sent(ledger: Ledger):
    tariff = Tariff.from_params(ledger.contract.query("params", {}))
    seller = TradingAgent(id_grid="home-1", tariff=tariff, res_id="pv-1", res_rated_w=3000)
    offer = seller.decide(LISTING, -50_000)
    assert offer is not None and offer.body["wh"] == 3000
    ledger.apply(SELLER, offer.kind, offer.body)  # RES_CAPACITY_EXCEEDED would fail here


def test_sealed_orders_commit_reveal_and_clear() -> None:
    """A community with sealed orders (the default for new ones): the agents' commitments,
    then after Bid_Closed their reveals, then the clearing, which they read back."""
    ledger = _setup(Ledger(sealed=True))
    params = ledger.contract.query("params", {})
    assert params["sealed_bids"] is True
    tariff = Tariff.from_params(params)
    deposit = params["commit_deposit"]
    seller = TradingAgent(id_grid="home-1", tariff=tariff, res_id="pv-1", res_rated_w=3000,
                          sealed=True, commit_deposit=deposit)
    buyer = TradingAgent(id_grid="home-2", tariff=tariff, sealed=True, commit_deposit=deposit)
    # the seller has no tokens: give it its deposit
    ledger.apply(OPERATOR, "token.transfer", {"to": "home-1", "amount": deposit})
    balance = ledger.contract.query("balance", {"id_grid": "home-2"})["balance"]
    offer = seller.decide(LISTING, -2500)
    bid = buyer.decide(LISTING, 1200, balance_utok=balance)
    assert offer is not None and bid is not None
    assert offer.kind == bid.kind == "auction.commit"
    ledger.apply(SELLER, offer.kind, offer.body)
    ledger.apply(BUYER, bid.kind, bid.body)
    assert ledger.apply(OPERATOR, "auction.close", {"listing_id": LISTING})["state"] == "REVEAL"
    for agent, who in ((seller, SELLER), (buyer, BUYER)):
        reveal = agent.reveal(LISTING)
        assert reveal is not None and agent.reveal(LISTING) is None  # once
        ledger.apply(who, reveal.kind, reveal.body)
    result = ledger.apply(OPERATOR, "auction.clear", {"listing_id": LISTING})
    assert result["forfeited"] == 0 and result["traded_wh"] > 0
    assert seller.read_clearing(result).sold_wh == buyer.read_clearing(result).bought_wh > 0
