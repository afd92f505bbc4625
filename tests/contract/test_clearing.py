"""The paper's, uniform and pay-as-bid clearing rules as pure functions (McAfee's in
test_mcafee): hand-checked books, properties over random ones."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.contract.clearing import Clearing, Order, clear, payment
from tests.contract.harness import BIDS, OFFERS, order_books


def _flows(c: Clearing) -> list[tuple[str, str, int, int]]:
    return [(t.buyer, t.seller, t.wh, t.price) for t in c.trades]


def test_paper_rule_worked_example() -> None:
    c = clear("paper", OFFERS, BIDS)
    # MCP = (60 + 90 + 45 + 90) / 4 thousand = 71_250; B1 and B3 bid below it and are out;
    # B2 and B4 tie at 90_000, B2 came first; sellers are served in arrival order S1, S2, S3.
    assert c.mcp == 71_250
    assert _flows(c) == [("B2", "S1", 3000, 71_250), ("B4", "S2", 2000, 71_250)]
    assert [t.amount for t in c.trades] == [213_750, 142_500]
    assert (c.kwh_available, c.kwh_wanted) == (9000, 8500)
    assert (c.traded_wh, c.unmatched_supply_wh, c.unmatched_demand_wh) == (5000, 4000, 3500)


def test_uniform_rule_worked_example() -> None:
    c = clear("uniform", OFFERS, BIDS)
    # merit order: asks S3 40k, S1 50k, S2 70k; bids B2 90k, B4 90k, B1 60k, B3 45k.
    # B1 is partly served by S1 (50k) and its last 500 Wh meet S2 at 70k > 60k: stop.
    # Supply meets demand at [max(50k, 60k), min(60k, 70k)] = 60k.
    assert c.mcp == 60_000
    assert _flows(c) == [
        ("B2", "S3", 3000, 60_000),
        ("B4", "S3", 1000, 60_000),
        ("B4", "S1", 1000, 60_000),
        ("B1", "S1", 2000, 60_000),
    ]
    assert c.traded_wh == 7000


def test_pay_as_bid_worked_example() -> None:
    c = clear("pay_as_bid", OFFERS, BIDS)
    assert [t.price for t in c.trades] == [90_000, 90_000, 90_000, 60_000]
    # volume-weighted mean: (5000 x 90k + 2000 x 60k) / 7000 = 81_428.57.. -> 81_428
    assert c.mcp == 81_428


def test_uniform_price_in_excess_demand_is_the_marginal_bid() -> None:
    c = clear(
        "uniform",
        [Order(1, "S", 500, 50_000)],
        [Order(2, "A", 1000, 100_000), Order(3, "B", 1000, 90_000)],
    )
    # only A is (partly) served; B (90k) is unserved, so the price lies in [max(50k, 100k), 100k]
    assert c.mcp == 100_000 and _flows(c) == [("A", "S", 500, 100_000)]


def test_no_bids_or_no_crossing_gives_no_price() -> None:
    for rule in ("paper", "uniform", "pay_as_bid"):
        c = clear(rule, OFFERS, [])
        assert c.mcp is None and c.trades == () and c.kwh_available == 9000
    cheap = [Order(9, "B", 100, 39_000)]
    for rule in ("uniform", "pay_as_bid"):
        assert clear(rule, OFFERS, cheap).mcp is None
    # the paper's rule prices a lone bid at its own price, but no seller accepts 39k
    paper = clear("paper", OFFERS, cheap)
    assert paper.mcp == 39_000 and paper.trades == ()


def test_unknown_rule_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="unknown clearing rule"):
        clear("vickrey", OFFERS, BIDS)


def test_payment_rounds_down() -> None:
    assert payment(1, 95_000) == 95 and payment(3, 333) == 0 and payment(1000, 39_000) == 39_000


# --- properties over random books -------------------------------------------------------------

_side = st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 200_000)), max_size=25)


def books() -> st.SearchStrategy[tuple[list[Order], list[Order]]]:
    """Books of four sellers and four buyers, arrival interleaved at random."""
    return order_books(_side, bidders=4)


def _filled(c: Clearing) -> tuple[dict[int, int], dict[int, int]]:
    sold: dict[int, int] = {}
    bought: dict[int, int] = {}
    for t in c.trades:
        assert t.wh > 0
        sold[t.offer_seq] = sold.get(t.offer_seq, 0) + t.wh
        bought[t.bid_seq] = bought.get(t.bid_seq, 0) + t.wh
    return sold, bought


def _common(
    c: Clearing, offers: list[Order], bids: list[Order]
) -> tuple[dict[int, int], dict[int, int]]:
    sold, bought = _filled(c)
    by_seq = {o.seq: o for o in [*offers, *bids]}
    assert all(wh <= by_seq[s].wh for s, wh in sold.items())  # no Wh sold twice
    assert all(wh <= by_seq[s].wh for s, wh in bought.items())
    for t in c.trades:
        assert by_seq[t.offer_seq].owner == t.seller and by_seq[t.offer_seq].ref == t.res_id
        assert by_seq[t.bid_seq].owner == t.buyer
        assert by_seq[t.offer_seq].price <= t.price <= by_seq[t.bid_seq].price
    assert c.kwh_available == sum(o.wh for o in offers)
    assert c.kwh_wanted == sum(b.wh for b in bids)
    return sold, bought


@settings(max_examples=150, deadline=None)
@given(books())
def test_paper_rule_properties(book: tuple[list[Order], list[Order]]) -> None:
    offers, bids = book
    c = clear("paper", offers, bids)
    sold, bought = _common(c, offers, bids)
    if not bids:
        assert c.mcp is None and not c.trades
        return
    assert c.mcp is not None
    assert min(b.price for b in bids) <= c.mcp <= max(b.price for b in bids)
    assert all(t.price == c.mcp for t in c.trades)
    eligible_s = sorted((o for o in offers if o.price <= c.mcp), key=lambda o: o.seq)
    eligible_b = sorted((b for b in bids if b.price >= c.mcp), key=lambda b: (-b.price, b.seq))
    assert c.traded_wh == min(sum(o.wh for o in eligible_s), sum(b.wh for b in eligible_b))
    # first in, first out: a later seller sells only once every earlier one is sold out;
    # a buyer is served only once every buyer ahead of it (higher bid, or tie and earlier) is
    for queue, filled in ((eligible_s, sold), (eligible_b, bought)):
        for ahead, behind in itertools.pairwise(queue):
            if filled.get(behind.seq):
                assert filled.get(ahead.seq) == ahead.wh


@settings(max_examples=150, deadline=None)
@given(books())
def test_uniform_and_pay_as_bid_properties(book: tuple[list[Order], list[Order]]) -> None:
    offers, bids = book
    uniform = clear("uniform", offers, bids)
    pab = clear("pay_as_bid", offers, bids)
    sold, bought = _common(uniform, offers, bids)
    _common(pab, offers, bids)
    assert [(t.bid_seq, t.offer_seq, t.wh) for t in uniform.trades] == [
        (t.bid_seq, t.offer_seq, t.wh) for t in pab.trades
    ]
    by_seq = {b.seq: b for b in bids}
    assert all(t.price == by_seq[t.bid_seq].price for t in pab.trades)
    assert all(t.price == uniform.mcp for t in uniform.trades)
    # efficiency: no unserved bid could still trade with an unserved offer
    open_bids = [b for b in bids if bought.get(b.seq, 0) < b.wh]
    open_offers = [o for o in offers if sold.get(o.seq, 0) < o.wh]
    if open_bids and open_offers:
        assert max(b.price for b in open_bids) < min(o.price for o in open_offers)
    if uniform.trades:
        # supply meets demand at the price: no unserved bid strictly above it with supply at or
        # below it left, and no unserved offer strictly below it with demand left
        assert uniform.mcp is not None
        assert not (
            any(b.price > uniform.mcp for b in open_bids)
            and any(o.price <= uniform.mcp for o in open_offers)
        )


@settings(max_examples=100, deadline=None)
@given(books(), st.randoms(use_true_random=False))
def test_clearing_ignores_the_order_of_the_input_lists(
    book: tuple[list[Order], list[Order]], rnd: object
) -> None:
    offers, bids = book
    shuffled_o, shuffled_b = list(offers), list(bids)
    rnd.shuffle(shuffled_o)  # type: ignore[attr-defined]
    rnd.shuffle(shuffled_b)  # type: ignore[attr-defined]
    for rule in ("paper", "uniform", "pay_as_bid", "mcafee"):
        assert clear(rule, offers, bids) == clear(rule, shuffled_o, shuffled_b)
