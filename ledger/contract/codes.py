"""Stable receipt codes of the community contract: the one place each is defined.

A client (gateway, trading agent, demo) matches on these strings, so they never change meaning.
"""

from __future__ import annotations

from typing import Final

OK: Final = "OK"

# any transaction
UNKNOWN_KIND: Final = "UNKNOWN_KIND"  # no such transaction kind
BAD_BODY: Final = "BAD_BODY"  # missing, extra or ill-typed field, bad identifier format
BAD_AMOUNT: Final = "BAD_AMOUNT"  # zero, negative or too large amount / Wh
NOT_MEMBER: Final = "NOT_MEMBER"  # the sender's key belongs to no member
NOT_OPERATOR: Final = "NOT_OPERATOR"  # operator-only transaction from someone else
ROLE_FORBIDDEN: Final = "ROLE_FORBIDDEN"  # the member's role may not do this

# admission (answered in a ``reject`` before ordering; NOT_ADMITTED also as a receipt, when a
# faulty primary ordered such a transaction anyway)
NOT_ADMITTED: Final = "NOT_ADMITTED"  # the signer is no member, meter or operator
TX_TOO_LARGE: Final = "TX_TOO_LARGE"  # larger than its kind's bound
OVER_LIMIT: Final = "OVER_LIMIT"  # the signer is over its pending or bytes-per-hour limit
APPLICATION_EXISTS: Final = "APPLICATION_EXISTS"  # this key has an open application
APPLICATIONS_FULL: Final = "APPLICATIONS_FULL"  # max_applications are open
UNKNOWN_APPLICATION: Final = "UNKNOWN_APPLICATION"

# reads
NOT_PERMITTED: Final = "NOT_PERMITTED"  # the read policy does not grant this query to the reader

# registry and tokens
MEMBER_EXISTS: Final = "MEMBER_EXISTS"
KEY_IN_USE: Final = "KEY_IN_USE"  # a key held by a member or meter, or retired: never reused
KEY_REVOKED: Final = "KEY_REVOKED"  # the member's or meter's key is already revoked
NOT_OWNER: Final = "NOT_OWNER"  # a meter's key changed by someone other than its owner/operator
QUORUM_REQUIRED: Final = "QUORUM_REQUIRED"  # minting (or re-keying) needs a quorum of members
PROPOSAL_EXISTS: Final = "PROPOSAL_EXISTS"
UNKNOWN_PROPOSAL: Final = "UNKNOWN_PROPOSAL"
PROPOSAL_CLOSED: Final = "PROPOSAL_CLOSED"  # approval of an executed proposal
ALREADY_APPROVED: Final = "ALREADY_APPROVED"
TOO_MANY_PROPOSALS: Final = "TOO_MANY_PROPOSALS"  # the proposer has 16 open proposals already
NOT_REVOKED: Final = "NOT_REVOKED"  # a rekey proposal for a member whose key is still live
UNKNOWN_MEMBER: Final = "UNKNOWN_MEMBER"
RES_EXISTS: Final = "RES_EXISTS"
UNKNOWN_RES: Final = "UNKNOWN_RES"
METER_EXISTS: Final = "METER_EXISTS"
UNKNOWN_METER: Final = "UNKNOWN_METER"
INSUFFICIENT_FUNDS: Final = "INSUFFICIENT_FUNDS"
SELF_TRANSFER: Final = "SELF_TRANSFER"

# market
LISTING_EXISTS: Final = "LISTING_EXISTS"
UNKNOWN_LISTING: Final = "UNKNOWN_LISTING"
LISTING_CLOSED: Final = "LISTING_CLOSED"  # offer/bid/close on a listing that no longer takes them
LISTING_OPEN: Final = "LISTING_OPEN"  # settle of a listing that has not been closed
LISTING_SETTLED: Final = "LISTING_SETTLED"  # settle twice
NOT_RES_OWNER: Final = "NOT_RES_OWNER"
RES_CAPACITY_EXCEEDED: Final = "RES_CAPACITY_EXCEEDED"  # offers exceed rated power x 1 h
PRICE_OUT_OF_BAND: Final = "PRICE_OUT_OF_BAND"
BOTH_SIDES: Final = "BOTH_SIDES"  # offer and bid by one member in one listing
TOO_EARLY: Final = "TOO_EARLY"  # settle before the delivery hour has ended
SEALED_LISTING: Final = "SEALED_LISTING"  # an open offer/bid on a listing that takes commitments
NOT_SEALED: Final = "NOT_SEALED"  # commit/reveal/clear on a listing with an open book
NOT_REVEALING: Final = "NOT_REVEALING"  # reveal/clear on a listing not in its reveal phase
UNKNOWN_COMMITMENT: Final = "UNKNOWN_COMMITMENT"  # a reveal that matches none of the sender's
ALREADY_REVEALED: Final = "ALREADY_REVEALED"
REVEAL_OPEN: Final = "REVEAL_OPEN"  # clear before every order is revealed or the window is over

# metering
NOT_GATEWAY: Final = "NOT_GATEWAY"  # report not sent by the meter's registered gateway key
METER_REVOKED: Final = "METER_REVOKED"  # the meter's reporting key was revoked
METER_UNCONFIRMED: Final = "METER_UNCONFIRMED"  # its owner has not confirmed the meter yet
METER_CONFIRMED: Final = "METER_CONFIRMED"  # meter.confirm of a meter already confirmed
BAD_SIGNATURE: Final = "BAD_SIGNATURE"
DUPLICATE_REPORT: Final = "DUPLICATE_REPORT"
REPORT_TOO_LATE: Final = "REPORT_TOO_LATE"  # the report's hour is already settled
IMPLAUSIBLE_ENERGY: Final = "IMPLAUSIBLE_ENERGY"  # more Wh than the meter's limit x 15 minutes
INTERVAL_IN_FUTURE: Final = "INTERVAL_IN_FUTURE"  # ends after the block, beyond the tolerance
INTERVAL_TOO_OLD: Final = "INTERVAL_TOO_OLD"  # starts before the block's report window

# the replica set (quorum action ``replicas``)
BAD_REPLICA_SET: Final = "BAD_REPLICA_SET"  # a key or address twice; an id or key used otherwise

INTERNAL_ERROR: Final = "INTERNAL_ERROR"  # a bug: never expected, reported instead of raised


class Rejected(Exception):
    """Raised by a handler *before* it changes any state; becomes an error receipt."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
