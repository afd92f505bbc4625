"""Register maps as data: the shipped maps, hostile maps, codecs and request planning."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.meters import MODELS, MapError, RegisterBlock, load_map, parse_map

MAP_DIR = Path(load_map.__code__.co_filename).parent


@pytest.mark.parametrize("model", MODELS)
def test_shipped_maps_load_and_have_the_gateway_roles(model: str) -> None:
    m = load_map(model)
    assert m.by_role("power_w") is not None and m.by_role("import_energy") is not None
    assert all(b.count <= m.max_per_request for b in m.plan())


def test_known_addresses_from_the_datasheets() -> None:
    sdm = load_map("sdm630").quantities
    assert (sdm["total_power"].address, sdm["import_energy"].address) == (0x34, 0x48)
    assert sdm["export_energy"].address == 0x4A
    pz = load_map("pzem004t").quantities
    assert (pz["energy"].address, pz["energy"].type, pz["energy"].unit) == (5, "u32", "Wh")


def test_planner_beats_one_request_per_quantity() -> None:
    m = load_map("sdm630")
    assert m.plan() == [RegisterBlock(0, 76), RegisterBlock(342, 2)]
    assert len(m.plan()) < len(m.quantities)
    assert load_map("pzem004t").plan() == [RegisterBlock(0, 10)]


@settings(max_examples=60, deadline=None)
@given(st.sets(st.sampled_from(sorted(load_map("sdm630").quantities)), min_size=1))
def test_plan_covers_exactly_what_was_asked_within_limits(names: set[str]) -> None:
    m = load_map("sdm630")
    blocks = m.plan(names)
    for n in names:
        q = m.quantities[n]
        assert any(
            b.address <= q.address and q.address + q.count <= b.address + b.count for b in blocks
        )
    assert all(m.is_readable(b.address, b.count) and b.count <= 80 for b in blocks)
    # optimal by dynamic programming: best[i] = fewest requests covering the first i quantities
    qs = sorted((m.quantities[n] for n in names), key=lambda q: q.address)
    best = [0] + [len(qs)] * len(qs)
    for i in range(1, len(qs) + 1):
        for j in range(i):
            start, end = qs[j].address, max(q.address + q.count for q in qs[j:i])
            if end - start <= m.max_per_request and m.is_readable(start, end - start):
                best[i] = min(best[i], best[j] + 1)
    assert len(blocks) == best[-1]


@settings(max_examples=200)
@given(st.sampled_from(MODELS), st.floats(0, 9_000, allow_nan=False))
def test_encode_decode_round_trip(model: str, value: float) -> None:
    m = load_map(model)
    for q in m.quantities.values():
        got = m.decode(q, m.encode(q, value))
        assert (
            math.isclose(got, value, rel_tol=1e-6, abs_tol=q.scale)
            or got == ((1 << (16 * q.count)) - 1) * q.scale
        )


def test_nan_and_wrong_sizes_are_map_errors() -> None:
    m = load_map("sdm120")
    q = m.quantities["active_power"]
    with pytest.raises(MapError, match="finite"):
        m.decode(q, [0x7FC0, 0])
    with pytest.raises(MapError):
        m.decode(q, [1])
    with pytest.raises(MapError):
        m.values(m.plan(), [[0] * 3, [0, 0]])


def _doc(model: str = "sdm120") -> dict:  # type: ignore[type-arg]
    return json.loads((MAP_DIR / f"{model}.json").read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("function"), "missing 'function'"),
        (lambda d: d.update(function="coils"), "function must be"),
        (lambda d: d.update(max_registers_per_request=500), r"\[1, 125\]"),
        (lambda d: d["quantities"]["voltage"].update(type="float64"), "'voltage': type"),
        (lambda d: d["quantities"]["voltage"].update(address=9000), "'voltage'.*readable"),
        (lambda d: d["quantities"]["voltage"].update(role="import_energy"), "role"),
        (lambda d: d["quantities"]["import_energy"].update(unit="J"), "energy unit"),
        (lambda d: d.update(readable=[[10, 5]]), "out of order"),
        (lambda d: d.update(quantities=[]), "'quantities' has the wrong type"),
        (lambda d: d.update(power_signed="no"), "power_signed must be true or false"),
        (lambda d: d.update(max_power_w=0), "max_power_w must be positive"),
    ],
)
def test_bad_maps_name_the_problem(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = copy.deepcopy(_doc())
    mutate(doc)
    with pytest.raises(MapError, match=message):
        parse_map(doc)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=8), c),
        max_leaves=12,
    )
)
def test_hostile_map_documents_raise_map_error_only(doc: object) -> None:
    try:
        parse_map(doc)
    except MapError:
        pass


def test_limits_from_the_datasheets() -> None:
    # SDM120-Modbus: 5(45) A at up to 276 V; it was 23 kW, a 100 A meter's (issue 20)
    assert load_map("sdm120").max_power_w == 45 * 276
    assert load_map("pzem004t").max_power_w == 23_000  # PZEM-004T-100A: 0-23 kW
    # the PZEM's power and energy registers are unsigned: it cannot tell export from import
    assert not load_map("pzem004t").power_signed
    assert load_map("sdm120").power_signed and load_map("sdm630").power_signed


def test_unknown_model() -> None:
    with pytest.raises(MapError, match="unknown meter model 'sdm999'"):
        load_map("sdm999")
