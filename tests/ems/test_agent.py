import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ems.agent import TradingAgent
from gateway.ems.tariff import Tariff

T = Tariff(feed_in=39_000, retail_peak=95_000, retail_offpeak=65_000)


def agent(**kw):
    return TradingAgent(id_grid="home-1", tariff=T, res_id="pv-1", res_rated_w=3000, **kw)


def test_surplus_becomes_an_offer_inside_the_band():
    order = agent().decide("2026-06-15T14", -2000)
    assert order is not None and order.kind == "auction.offer"
    assert order.body == {"listing_id": "2026-06-15T14", "res_id": "pv-1", "wh": 1800,
                          "reserve_price": 67_000 - int(0.15 * 56_000)}
    capped = agent().decide("2026-06-15T14", -10_000)
    assert capped is not None and capped.body["wh"] == 3000  # the RES's rated power for 1 h


def test_deficit_becomes_a_bid_capped_by_the_balance():
    order = agent().decide("2026-06-15T03", 1000)
    assert order is not None and order.kind == "auction.bid"
    assert order.body["wh"] == 900 and 39_000 <= order.body["bid_price"] <= 65_000
    poor = agent().decide("2026-06-15T03", 1000, balance_utok=10_000)
    assert poor is not None and poor.body["wh"] * poor.body["bid_price"] // 1000 <= 10_000
    assert agent().decide("2026-06-15T03", 1000, balance_utok=100) is None


def test_small_or_unsellable_quantities_place_no_order():
    assert agent().decide("2026-06-15T14", -30) is None
    assert agent().decide("2026-06-15T14", 0) is None
    consumer = TradingAgent(id_grid="c", tariff=T)
    assert consumer.decide("2026-06-15T14", -5000) is None


def test_clearing_feeds_commitments_and_learns_the_price():
    a = agent()
    before = a.expected_price(14)
    c = a.read_clearing({
        "listing_id": "2026-06-15T14", "mcp": 80_000, "trades": [
            {"buyer": "x", "seller": "home-1", "wh": 700, "price": 80_000},
            {"buyer": "y", "seller": "home-1", "wh": 300, "price": 80_000},
            {"buyer": "home-1", "seller": "z", "wh": 5, "price": 80_000},
        ]})
    assert (c.listing_id, c.sold_wh, c.bought_wh, c.mcp) == ("2026-06-15T14", 1000, 5, 80_000)
    assert before < a.expected_price(14) < 80_000
    empty = a.read_clearing({"listing_id": "2026-06-15T15", "mcp": None, "trades": []})
    assert (empty.sold_wh, empty.bought_wh) == (0, 0)


@pytest.mark.parametrize("bad", [
    {}, {"listing_id": "tomorrow"}, {"listing_id": "2026-06-15T14", "trades": [{"wh": 1}]},
    {"listing_id": "2026-06-15T14", "mcp": "high", "trades": []},
    {"listing_id": "2026-06-15T14", "trades": 5},
])
def test_malformed_clearings_are_refused(bad):
    with pytest.raises(ValueError):
        agent().read_clearing(bad)


def test_bad_parameters():
    with pytest.raises(ValueError, match="sell_share"):
        agent(sell_share=1.5)
    with pytest.raises(ValueError, match="rated power"):
        TradingAgent(id_grid="p", tariff=T, res_id="pv")


@settings(max_examples=200, deadline=None)
@given(net=st.integers(-10**7, 10**7), hour=st.integers(0, 23),
       mcps=st.lists(st.integers(0, 200_000), max_size=5))
def test_prices_always_lie_in_the_band(net, hour, mcps):
    a = agent()
    lid = f"2026-06-15T{hour:02d}"
    for m in mcps:
        a.read_clearing({"listing_id": lid, "mcp": m, "trades": []})
    order = a.decide(lid, net)
    if order is None:
        return
    price = order.body.get("reserve_price", order.body.get("bid_price"))
    assert T.feed_in <= price <= T.retail(hour)
    assert 0 < order.body["wh"] <= abs(net)


def test_tariff_from_community_params_and_contradictions():
    from gateway.ems.tariff import TariffError

    t = Tariff.from_params({"feed_in": 40_000, "retail_peak": 90_000, "retail_offpeak": 60_000,
                            "peak_hours": [18, 22]})
    assert (t.retail(18), t.retail(22), t.band(3)) == (90_000, 60_000, (40_000, 60_000))
    night = Tariff(peak_start_h=22, peak_end_h=6)
    assert night.is_peak(23) and night.is_peak(2) and not night.is_peak(12)
    for bad in ({"peak_hours": 5}, {"feed_in": "cheap"}, {"feed_in": 99_000}):
        with pytest.raises(TariffError):
            Tariff.from_params(bad)
    with pytest.raises(TariffError, match="peak hours"):
        Tariff(peak_start_h=25)


def test_a_sealed_order_is_a_commitment_then_its_reveal() -> None:
    from ledger.contract.sealed import order_commitment

    salts = iter([bytes(range(32)), b"short"])
    agent = TradingAgent(id_grid="home-2", tariff=Tariff(), sealed=True, commit_deposit=50_000,
                         salt_source=lambda: next(salts))
    order = agent.decide("2026-06-15T14", 1000, balance_utok=50_000 + 60_000)
    assert order is not None and order.kind == "auction.commit"
    assert set(order.body) == {"listing_id", "side", "commitment"}  # no price, no quantity
    reveal = agent.reveal("2026-06-15T14")
    assert reveal is not None and reveal.kind == "auction.reveal" and reveal.body["res_id"] == ""
    b = reveal.body
    assert order.body["commitment"] == order_commitment(
        b["listing_id"], "home-2", "bid", b["wh"], b["price"], "", bytes(range(32)))
    # the deposit is set aside before the escrow caps the bid
    assert b["wh"] * b["price"] // 1000 <= 60_000
    assert agent.reveal("2026-06-15T14") is None
    with pytest.raises(ValueError, match="32 bytes"):
        agent.decide("2026-06-15T15", 1000)
