# BLE link security of a node: who may pair, who may command, who may hold a connection slot.
#
# The one definition of that policy for the firmware (link_ble.py, over aioble) and the node
# emulator (hardware/ble/plug.py, over bumble). Common subset of MicroPython and CPython, no IO,
# no clock: callers pass peer addresses (compared as given: bytes on the device, strings in the
# emulator), the link's security state and ages in ms (the device computes them with ticks_diff).
#
# Pairing is LE Secure Connections, Passkey Entry, with bonding. Neither the node nor the gateway
# has a display or a keypad, so both ends "type" the same six digits, derived from the node's
# provisioned key (passkey()): a peer without that key cannot complete the pairing, and Passkey
# Entry proves the passkey in both directions (the gateway also knows it paired the real node).
# The passkey is static, and each failed Passkey Entry attempt can show an active attacker about
# two of its twenty bits, so a node takes MAX_PAIR_FAILURES failed attempts per boot and then no
# pairing until it is power-cycled, and once bonded it pairs again only with its gateway's address
# (a gateway that lost its bond store). The first authenticated bond is the node's gateway.
#
# Slots: a node holds MAX_LINKS links. Once bonded, one of them is kept for the gateway: a second
# link from any other address is dropped at once; and any link that is not the gateway's
# encrypted, authenticated link UNAUTH_TIMEOUT_MS after it came up is dropped. So a stranger
# holds at most one slot, for at most that long, and the node keeps advertising for the gateway.
try:
    from firmware import frame  # type: ignore[import-not-found]  # CPython: gateway, emulators
except ImportError:
    import frame  # the device: modules sit side by side

MAX_LINKS = 2
UNAUTH_TIMEOUT_MS = 20000  # time for a fresh pairing (about a second) or re-encryption, with room
MAX_PAIR_FAILURES = 3
PASSKEY_LABEL = b"wattmesh-ble-passkey-v1"


def passkey(key):
    # Six decimal digits (0..999999): HMAC-SHA256(node key, label), first 32 bits, mod 10^6.
    d = frame.tag(key, PASSKEY_LABEL)
    return ((d[0] << 24) | (d[1] << 16) | (d[2] << 8) | d[3]) % 1000000


class Guard:
    def __init__(self, gateway=None):
        self.gateway = gateway  # the bonded gateway's address, or None before the first bond
        self.failures = 0  # failed pairings since boot
        self.dropped = {}  # reason -> count

    def _count(self, reason):
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def admit(self, peer, others):
        # A link from `peer` came up while links from `others` (addresses) are up: keep it?
        if len(others) >= MAX_LINKS:
            self._count("slots")
            return False
        if self.gateway is not None and peer == self.gateway:
            return True
        strangers = 0
        for p in others:
            if self.gateway is None or p != self.gateway:
                strangers += 1
        limit = MAX_LINKS if self.gateway is None else MAX_LINKS - 1
        if strangers >= limit:
            self._count("stranger_slot")
            return False
        return True

    def advertise(self, links):
        # Advertise (again) while a slot is free.
        return links < MAX_LINKS

    def may_pair(self, peer):
        if self.failures >= MAX_PAIR_FAILURES:
            self._count("pair_locked")
            return False
        if self.gateway is not None and peer != self.gateway:
            self._count("pair_not_gateway")
            return False
        return True

    def paired(self, peer, authenticated, secure):
        # A pairing completed. True: keep the bond, `peer` is the gateway from now on. False:
        # forget the bond and drop the link (Just Works or legacy pairing, or not allowed).
        if not (authenticated and secure):
            self._count("pair_unauthenticated")
            return False
        if not self.may_pair(peer):
            return False
        self.gateway = peer
        return True

    def pair_failed(self):
        self.failures += 1

    def trusted(self, peer, encrypted, authenticated):
        # May this link command the node (and receive its readings)?
        return (self.gateway is not None and peer == self.gateway and bool(encrypted)
                and bool(authenticated))

    def overdue(self, peer, encrypted, authenticated, age_ms):
        # Drop this link now? (not the gateway's secure link, UNAUTH_TIMEOUT_MS after it came up)
        if self.trusted(peer, encrypted, authenticated) or age_ms < UNAUTH_TIMEOUT_MS:
            return False
        self._count("timeout")
        return True
