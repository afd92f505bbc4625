import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ems.appliances import (
    REPAIRS,
    SpecError,
    load_appliances,
    parse_appliances,
    table8,
)


def test_table8_strict_names_both_rows_that_do_not_fit():
    with pytest.raises(SpecError) as err:
        table8("strict")
    rows = {(p.row, p.name) for p in err.value.problems}
    assert rows == {(3, "Air Conditioner"), (5, "Dish Washer")}
    assert "420 min does not fit its window 19:00 to 24:00" in str(err.value)
    assert "repair policy" in str(err.value)


def test_table8_repairs_are_explicit():
    widened, notes = table8("widen")
    by_name = {a.name: a for a in widened}
    assert len(widened) == 14
    assert by_name["Air Conditioner"].end_min == 2 * 60  # 19:00 + 7 h wraps to 02:00
    assert by_name["Air Conditioner"].working_min == 420
    assert by_name["Dish Washer"].end_min == 23 * 60 + 30
    assert len(notes) == 2 and "Air Conditioner" in notes[0]
    clipped, _ = table8("clip")
    assert {a.name: a.working_min for a in clipped}["Air Conditioner"] == 300
    excluded, notes = table8("exclude")
    assert len(excluded) == 12 and all("excluded" in n for n in notes)


def test_table8_values_read_from_the_paper():
    apps = {a.name: a for a in table8("widen")[0]}
    ev = apps["Electric Vehicle"]
    assert ev.flexible and ev.storage and ev.power_w == 3650 and ev.energy_wh == 21900
    assert ev.start_min == 19 * 60 and ev.end_min == 6 * 60 and ev.window_min == 11 * 60
    assert ev.run_slots == 24
    assert apps["Refrigerator"].window_min == 24 * 60 and not apps["Refrigerator"].flexible
    assert apps["Pool Pump"].run_slots == 32
    assert sum(a.flexible for a in apps.values()) == 4


def row(**kw):
    base = {"name": "X", "flexible": True, "start": "08:00", "end": "10:00",
            "working_min": 60, "power_w": 1000}
    base.update(kw)
    return base


@pytest.mark.parametrize(
    ("kw", "field", "text"),
    [
        ({"start": "8:00"}, "start", "HH:MM"),
        ({"start": "08:10"}, "start", "grid"),
        ({"end": "25:00"}, "end", "time of day"),
        ({"start": "24:00"}, "start", "time of day"),
        ({"working_min": 50}, "working_min", "multiple"),
        ({"working_min": "60"}, "working_min", "integer"),
        ({"power_w": 0}, "power_w", "outside"),
        ({"power_w": True}, "power_w", "integer"),
        ({"flexible": "yes"}, "flexible", "true or false"),
        ({"storage": True}, "energy_wh", "energy"),
        ({"colour": "red"}, "colour", "unknown"),
        ({"name": ""}, "name", "non-empty"),
        ({"relay": 300}, "relay", "relay index"),
        ({"working_min": 180}, "working_min", "does not fit"),
    ],
)
def test_bad_rows_are_named(kw, field, text):
    with pytest.raises(SpecError) as err:
        parse_appliances({"appliances": [row(name="ok"), row(**kw)]})
    problem = err.value.problems[0]
    assert problem.row == 2 and problem.field == field and text in problem.reason


def test_duplicate_names_and_empty_documents():
    with pytest.raises(SpecError, match="duplicate of row 1"):
        parse_appliances({"appliances": [row(), row()]})
    for doc in ({}, {"appliances": []}, [], {"appliances": "x"}, None):
        with pytest.raises(SpecError):
            parse_appliances(doc)
    with pytest.raises(ValueError, match="repair policy"):
        parse_appliances({"appliances": [row()]}, repair="truncate")  # type: ignore[arg-type]


def test_load_file_errors(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(SpecError, match="cannot read"):
        load_appliances(missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"appliances": [', encoding="utf-8")
    with pytest.raises(SpecError, match="not JSON"):
        load_appliances(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"appliances": [row()]}), encoding="utf-8")
    apps, notes = load_appliances(good)
    assert apps[0].run_slots == 4 and notes == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=6)
    | st.sampled_from(["00:00", "24:00", "19:00", "06:15", "12:07"]),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "flexible", "start", "end", "working_min", "power_w",
                         "storage", "energy_wh", "min_on_min", "relay", "x"]), kids, max_size=8),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["appliances", "other"]), json_values, max_size=2),
       repair=st.sampled_from(REPAIRS))
def test_hostile_documents_only_raise_spec_errors(doc, repair):
    try:
        apps, _ = parse_appliances(doc, repair)
    except SpecError:
        return
    for a in apps:
        assert a.run_slots <= a.window_slots
