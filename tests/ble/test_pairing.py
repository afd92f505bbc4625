"""BLE link security on bumble's virtual controller: LE Secure Connections pairing with bonding
between the gateway (the real bleak API on the bumble backend) and a plug (the node's policy,
``firmware/ble_guard.py``), and what a stranger on the radio can and cannot do.

The strangers are what an attacker would use: another bumble host with its own address, some
through bleak, some driving bumble's SMP and GATT directly (a phone is not bound to our backend).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
from bleak import BleakClient
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import hci
from bumble.att import ATT_Error, ErrorCode
from bumble.core import UUID, BaseBumbleError
from bumble.device import Connection, Device, Peer
from bumble.link import LocalLink
from bumble.pairing import PairingConfig
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import ble_guard, frame
from hardware.ble.bleak_bumble import BumbleCentral, backend_from_spec, bumble_backend
from hardware.ble.bonds import BondStoreError, parse_bond_store, passkey_pairing, read_bond_store
from hardware.ble.controller import VirtualController, local_device
from hardware.ble.profile import GATEWAY_ADDRESS, PROFILE
from tests.ble.conftest import KEYS, World, eventually, received, running, serving, stop

STRANGER = "C0:57:A7:FF:FF:66"
OTHER_STRANGER = "C0:57:A7:FF:FF:67"


def _command(nid: int, seq: int, action: int) -> bytes:
    return frame.encode(KEYS[nid], frame.T_COMMAND, nid, seq, frame.pack_command(0, action))


def _passkey(nid: int) -> int:
    return int(ble_guard.passkey(KEYS[nid]))


def _unplug(link: LocalLink, address: str) -> None:
    """Take a host's controller off the link, as a gateway process killed would leave it."""
    for c in list(link.controllers):
        if c.random_address == hci.Address(address) and isinstance(c, VirtualController):
            c.detach(link)


async def _stranger(link: LocalLink, address: str = STRANGER) -> Device:
    device = local_device(link, "phone", address)
    await device.power_on()
    return device


async def _raw_write(connection: Connection, value: bytes) -> None:
    """A write of the command characteristic with bumble's GATT client: no bleak, no backend."""
    peer = Peer(connection)
    await peer.discover_all()  # type: ignore[no-untyped-call]
    (char,) = peer.get_characteristics_by_uuid(UUID(PROFILE.command_uuid))
    await peer.write_value(char, value, with_response=True)


async def test_the_gateway_pairs_bonds_and_commands_over_an_encrypted_link(
    world: World, tmp_path: Path
) -> None:
    bonds = tmp_path / "ble-bonds.json"
    central = BumbleCentral.on_link(world.link, "C0:57:A7:FF:FF:02", bond_store=bonds)
    plug = world.plugs[1]
    try:
        async with BleakClient(
            plug.address, pair=True, passkey=_passkey(1), backend=bumble_backend(central),
            timeout=2,
        ) as client:  # fmt: skip
            (theirs,) = plug.device.connections.values()
            assert theirs.encryption and theirs.sc and plug.trusted(theirs)
            assert plug.guard.gateway == "C0:57:A7:FF:FF:02"
            await world.clock.advance(5000)
            await client.write_gatt_char(PROFILE.command_uuid, _command(1, 7, frame.A_ON), True)
            await eventually(lambda: plug.core.relay_on)
            # bonded: the stored key is an authenticated LE Secure Connections key, owner-only
            keys = await central.bond(plug.address)
            assert keys is not None and keys.ltk is not None and keys.ltk.authenticated
            assert stat.S_IMODE(bonds.stat().st_mode) == 0o600
            stored = json.loads(bonds.read_text())
            assert list(stored) == ["C0:57:A7:FF:FF:02"]
            await client.pair()  # already bonded and encrypted: nothing to do
            await client.unpair()  # forgets the bond and disconnects, as BlueZ's RemoveDevice
            assert not client.is_connected and await central.bond(plug.address) is None
            assert json.loads(bonds.read_text()) == {"C0:57:A7:FF:FF:02": {}}
        # the node takes a new pairing from its gateway's address
        async with BleakClient(plug.address, pair=True, passkey=_passkey(1),
                               backend=bumble_backend(central), timeout=2):  # fmt: skip
            assert await central.bond(plug.address) is not None
        # a wrong passkey fails the pairing: no bond, no command
        async with BleakClient(
            world.plugs[2].address, passkey=(_passkey(2) + 1) % 1_000_000,
            backend=bumble_backend(central), timeout=2,
        ) as wrong:  # fmt: skip
            with pytest.raises(BleakError, match=r"pairing with .* failed"):
                await wrong.pair()
        assert await central.bond(world.plugs[2].address) is None
        assert world.plugs[2].guard.gateway is None and world.plugs[2].guard.failures == 1
    finally:
        await central.close()


async def test_a_restarted_gateway_encrypts_with_its_stored_bond_and_does_not_pair_again(
    world: World, tmp_path: Path
) -> None:
    bonds = tmp_path / "ble-bonds.json"
    plug = world.plugs[1]
    pairings: list[object] = []
    plug.device.on(
        Device.EVENT_CONNECTION, lambda c: c.on(Connection.EVENT_PAIRING, pairings.append)
    )
    first = BumbleCentral.on_link(world.link, bond_store=bonds)
    async with BleakClient(plug.address, pair=True, passkey=_passkey(1),
                           backend=bumble_backend(first), timeout=2):  # fmt: skip
        assert len(pairings) == 1
    await first.close()
    _unplug(world.link, GATEWAY_ADDRESS)  # the gateway process is gone
    # a new gateway process, same adapter address, the same bond store; no passkey at hand, so
    # a pairing would fail: the link comes up only if the stored bond encrypts it
    second = BumbleCentral.on_link(world.link, bond_store=bonds)
    try:
        async with BleakClient(plug.address, pair=True, backend=bumble_backend(second),
                               timeout=2) as client:  # fmt: skip
            (theirs,) = plug.device.connections.values()
            assert theirs.encryption and plug.trusted(theirs)
            await world.clock.advance(5000)
            await client.write_gatt_char(PROFILE.command_uuid, _command(1, 9, frame.A_ON), True)
            await eventually(lambda: plug.core.relay_on)
        assert len(pairings) == 1  # no new pairing
    finally:
        await second.close()


async def test_a_gateway_that_lost_its_bond_store_pairs_again_and_a_node_reset_is_repaired(
    world: World,
) -> None:
    """Same adapter address, no bond (memory store): the node takes a new Passkey Entry pairing
    from its gateway's address. And a node that lost the bond (reset) refuses our stored key:
    with pair=True the backend pairs again (Passkey Entry authenticates the node as well)."""
    plug = world.plugs[1]
    central = BumbleCentral.on_link(world.link)
    async with BleakClient(plug.address, pair=True, passkey=_passkey(1),
                           backend=bumble_backend(central), timeout=2):  # fmt: skip
        pass
    await central.close()
    _unplug(world.link, GATEWAY_ADDRESS)
    central = BumbleCentral.on_link(world.link)  # the bond store is gone
    try:
        async with BleakClient(plug.address, pair=True, passkey=_passkey(1),
                               backend=bumble_backend(central), timeout=2):  # fmt: skip
            assert plug.guard.gateway == GATEWAY_ADDRESS
        assert plug.device.keystore is not None
        await plug.device.keystore.delete_all()  # the node forgot every bond
        async with BleakClient(plug.address, pair=True, passkey=_passkey(1),
                               backend=bumble_backend(central), timeout=2):  # fmt: skip
            (theirs,) = plug.device.connections.values()
            assert plug.trusted(theirs)
        # without pair=True a refused bond is an error, not a silent re-pairing
        await plug.device.keystore.delete_all()
        with pytest.raises(BleakError, match="encrypting with our bond failed"):
            await BleakClient(plug.address, backend=bumble_backend(central), timeout=2).connect()
    finally:
        await central.close()


async def test_the_gateway_source_pairs_before_it_commands(world: World) -> None:
    plug = world.plugs[1]
    async with serving(world, [1]) as (source, sink):
        await eventually(lambda: source.stats()["connected"] == 1)
        (theirs,) = plug.device.connections.values()
        assert theirs.encryption and plug.trusted(theirs)
        await world.clock.advance(5000)
        await source.send_command(1, _command(1, 100, frame.A_ON))
        await sink.until(lambda: len(sink.of(1, frame.T_ACK)) == 1)
        assert plug.core.relay_on and plug.refused_writes == 0


# -- attacks: each fails on the code before pairing (an open command characteristic, one slot) --


async def test_an_unpaired_clients_command_write_is_refused(world: World) -> None:
    """A genuine COMMAND frame (sniffed off the air while the gateway's write was jammed: its
    sequence number is still fresh) written by a client that did not pair is refused at the ATT
    layer; the relay stays off."""
    plug = world.plugs[1]
    await world.clock.advance(5000)
    stranger = BumbleCentral.on_link(world.link, STRANGER)
    try:
        async with BleakClient(plug.address, backend=bumble_backend(stranger), timeout=2) as c:
            with pytest.raises(BleakGATTProtocolError) as refused:
                await c.write_gatt_char(PROFILE.command_uuid, _command(1, 50, frame.A_ON), True)
            assert refused.value.code in (
                ErrorCode.INSUFFICIENT_ENCRYPTION, ErrorCode.INSUFFICIENT_AUTHENTICATION)
            with pytest.raises(BleakGATTProtocolError):  # nor can it read the readings
                await c.read_gatt_char(PROFILE.readings_uuid)
        assert not plug.core.relay_on and plug.core.last_command_seq == 0
    finally:
        await stranger.close()


async def test_a_stranger_that_connects_first_does_not_lock_the_gateway_out(
    world: World,
) -> None:
    """A phone connects to the node first and just stays. The node keeps advertising (second
    slot), the gateway connects, pairs and commands; a second stranger is turned away while the
    gateway's slot is kept; the first stranger is dropped UNAUTH_TIMEOUT_MS later (injected
    clock)."""
    plug = world.plugs[1]
    phone = await _stranger(world.link)
    sink = received()
    source = world.source([1])
    task: asyncio.Task[None] | None = None
    try:
        phone_link = await phone.connect(hci.Address(plug.address), timeout=2)
        await eventually(lambda: len(plug.device.connections) == 1)
        task = await running(source, sink)
        await eventually(lambda: source.stats()["connected"] == 1)
        await world.clock.advance(5000)
        await source.send_command(1, _command(1, 100, frame.A_ON))
        await sink.until(lambda: len(sink.of(1, frame.T_ACK)) == 1)
        assert plug.core.relay_on
        assert not plug.device.is_advertising  # both slots taken: nobody else can connect
        # the gateway goes away (restarting): the node is bonded now, so the freed slot is kept
        # for the gateway: a second stranger gets in and out at once
        await stop(task)
        task = None
        await eventually(lambda: plug.device.is_advertising)
        other = await _stranger(world.link, OTHER_STRANGER)
        other_link = await other.connect(hci.Address(plug.address), timeout=2)
        await eventually(lambda: other_link.handle not in other.connections)
        assert plug.guard.dropped["stranger_slot"] == 1
        source = world.source([1])
        task = await running(source, sink)  # the gateway is back, on its bond
        await eventually(lambda: source.stats()["connected"] == 1)
        # the phone never paired: gone after the timeout, on the plug's clock
        assert phone_link.handle in phone.connections
        await world.clock.advance(ble_guard.UNAUTH_TIMEOUT_MS)
        await eventually(lambda: phone_link.handle not in phone.connections)
        assert plug.guard.dropped["timeout"] == 1 and source.is_connected(1)
        # and the gateway's link was never in danger: a reading gets through
        await plug.tick()
        await sink.until(lambda: len(sink.of(1)) == 1)
    finally:
        if task is not None:
            await stop(task)
        await phone.power_off()


async def test_a_stranger_that_pairs_itself_cannot_command(world: World) -> None:
    """Before the gateway: a phone pairs with Just Works (no passkey) and writes a genuine
    command; the node refuses the unauthenticated bond and the write. After the gateway bonded:
    even a stranger that knows the passkey is refused the pairing, and cannot command."""
    plug = world.plugs[1]
    await world.clock.advance(5000)
    phone = await _stranger(world.link)
    phone.pairing_config_factory = lambda _c: PairingConfig(sc=True, mitm=False, bonding=True)
    try:
        link = await phone.connect(hci.Address(plug.address), timeout=2)
        await link.pair()  # Just Works completes...
        await eventually(lambda: not phone.connections, timeout=2)  # ...the node drops it
        assert plug.guard.dropped["pair_unauthenticated"] == 1 and plug.guard.gateway is None
        link = await phone.connect(hci.Address(plug.address), timeout=2)
        with pytest.raises(BaseBumbleError):
            await link.encrypt()  # the node kept no key for it
        if link.handle not in phone.connections:
            link = await phone.connect(hci.Address(plug.address), timeout=2)
        with pytest.raises(ATT_Error):
            await _raw_write(link, _command(1, 60, frame.A_ON))
        assert not plug.core.relay_on and plug.core.last_command_seq == 0
    finally:
        await phone.power_off()
        _unplug(world.link, STRANGER)
    await eventually(lambda: not plug.device.connections)
    # the gateway bonds
    central = BumbleCentral.on_link(world.link)
    thief = await _stranger(world.link, OTHER_STRANGER)
    thief.pairing_config_factory = lambda _c: passkey_pairing(_passkey(1))
    try:
        async with BleakClient(plug.address, pair=True, passkey=_passkey(1),
                               backend=bumble_backend(central), timeout=2):  # fmt: skip
            assert plug.guard.gateway == GATEWAY_ADDRESS
            link = await thief.connect(hci.Address(plug.address), timeout=2)
            with pytest.raises((ATT_Error, BaseBumbleError)):
                await link.pair()  # refused: the node has its gateway
            with pytest.raises(ATT_Error):
                await _raw_write(link, _command(1, 61, frame.A_ON))
            assert not plug.core.relay_on and plug.core.last_command_seq == 0
            assert plug.guard.dropped["pair_not_gateway"] == 1
    finally:
        await thief.power_off()
        await central.close()


async def test_pairing_stops_after_three_wrong_passkeys_until_the_node_restarts(
    world: World,
) -> None:
    """Each failed Passkey Entry may show an attacker a few bits of the static passkey: after
    MAX_PAIR_FAILURES the node takes no pairing at all, not even the right passkey."""
    plug = world.plugs[2]
    attacker = BumbleCentral.on_link(world.link, STRANGER)
    try:
        for guess in range(ble_guard.MAX_PAIR_FAILURES):
            async with BleakClient(plug.address, passkey=(_passkey(2) + 1 + guess) % 1_000_000,
                                   backend=bumble_backend(attacker), timeout=2) as c:  # fmt: skip
                with pytest.raises(BleakError):
                    await c.pair()
        assert plug.guard.failures == ble_guard.MAX_PAIR_FAILURES
        async with BleakClient(plug.address, passkey=_passkey(2),
                               backend=bumble_backend(attacker), timeout=2) as c:  # fmt: skip
            with pytest.raises(BleakError, match="failed"):
                await c.pair()
        assert plug.guard.gateway is None and plug.guard.dropped["pair_locked"] >= 1
    finally:
        await attacker.close()


# -- the bond store ------------------------------------------------------------------------


def _store(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "ble-bonds.json"
    path.write_text(text)
    path.chmod(mode)
    return path


GOOD_ENTRY = {"address_type": 1, "ltk": {"value": "00" * 16, "authenticated": True}}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{", "not JSON"),
        ("[]", "expected an object of namespaces"),
        ('{"ns": []}', "expected an object of peers"),
        ('{"ns": {"nonsense": {}}}', "not a BLE address"),
        ('{"ns": {"D0:57:A7:00:00:01": 5}}', "must be an object"),
        ('{"ns": {"D0:57:A7:00:00:01": {"ltk": {"value": "zz"}}}}', "not hex"),
        ('{"ns": {"D0:57:A7:00:00:01": {"ltk": {"value": "00"}}}}', "must be 16 bytes"),
        ('{"ns": {"D0:57:A7:00:00:01": {"ltk": "00"}}}', "hex 'value'"),
        ('{"ns": {"D0:57:A7:00:00:01": {"pin": {"value": "00"}}}}', "unknown key"),
        ('{"ns": {"D0:57:A7:00:00:01": {"address_type": "x"}}}', "must be an integer"),
        ('{"ns": {"D0:57:A7:00:00:01": {"ltk": {"value": "' + "00" * 16
         + '", "authenticated": "yes"}}}}', "true or false"),
    ],
)
async def test_a_malformed_bond_store_is_a_clear_error(
    tmp_path: Path, text: str, why: str
) -> None:
    path = _store(tmp_path, text)
    with pytest.raises(BondStoreError, match=why) as err:
        read_bond_store(path)
    assert str(path) in str(err.value)
    with pytest.raises(BondStoreError, match=why):
        BumbleCentral.on_link(LocalLink(), bond_store=path)
    # the daemon's backend: the store is read before any HCI transport is opened
    backend = backend_from_spec("bumble:tcp-client:127.0.0.1:9", bond_store=path)
    with pytest.raises(BondStoreError, match=why):
        await BleakClient("D0:57:A7:00:00:01", backend=backend, timeout=1).connect()


def test_a_bond_store_others_may_read_is_refused_and_a_missing_one_is_empty(
    tmp_path: Path,
) -> None:
    good = json.dumps({"ns": {"D0:57:A7:00:00:01": GOOD_ENTRY}})
    path = _store(tmp_path, good, 0o644)
    with pytest.raises(BondStoreError, match="chmod 600"):
        read_bond_store(path)
    path.chmod(0o600)
    assert read_bond_store(path)["ns"]["D0:57:A7:00:00:01"] == GOOD_ENTRY
    assert read_bond_store(tmp_path / "none.json") == {}
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(BondStoreError, match="not a file"):
        read_bond_store(tmp_path / "dir.json")
    big = _store(tmp_path, " " * (2 << 20))
    with pytest.raises(BondStoreError, match="larger than"):
        read_bond_store(big)
    _store(tmp_path, "")
    (tmp_path / "ble-bonds.json").write_bytes(b"\xff\xfe")
    with pytest.raises(BondStoreError, match="UTF-8"):
        read_bond_store(tmp_path / "ble-bonds.json")
    assert os.stat(tmp_path / "ble-bonds.json").st_mode & 0o077 == 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70_000) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner,
                                                                max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(doc=JSON, raw=st.text(max_size=60))
def test_any_bond_store_content_loads_or_is_a_bond_store_error(doc: object, raw: str) -> None:
    for text in (json.dumps(doc), raw, json.dumps({"ns": {"D0:57:A7:00:00:01": doc}})):
        try:
            parse_bond_store(text, Path("bonds.json"))
        except BondStoreError as exc:
            assert "bonds.json" in str(exc)


def test_gateway_ble_passkey_prints_what_the_node_pairs_with(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """For BlueZ, which pairs through its own agent: the installer types these six digits."""
    from tests.gateway.conftest import write_keystore
    from tools.cli import main

    write_keystore(tmp_path, {"1": {"key": KEYS[1].hex(), "name": "p1", "transport": "ble"}})
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('[gateway]\nid = "home-1"\ndata_dir = "data"\nkeystore = "nodes.json"\n[ble]\n'
                   f'[[ble.nodes]]\nnode_id = 1\naddress = "{world.plugs[1].address}"\n')
    assert main(["gateway", "ble-passkey", "--config", str(cfg), "--node", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"node_id": 1, "address": world.plugs[1].address,
                   "passkey": f"{world.plugs[1].passkey:06d}"}
    assert main(["gateway", "ble-passkey", "--config", str(cfg), "--node", "2"]) == 2
    assert "no BLE node 2" in capsys.readouterr().err
