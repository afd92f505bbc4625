"""``wattmesh operator ...``: the community operator's first day, as a thin layer over the
ledger client's transactions and queries (the contract is the one place that decides).

* ``member admit|list``: ``registry.admit`` (name, e-mail and address go to the operator's
  register, ``ledger.personal``; the chain gets their salted commitment, the member the
  opening) / the ``members`` query.
* ``meter add|list``: ``registry.add_meter`` with the meter named ``<member>:<meter>``
  (``gateway.report.ledger_meter_id``: meter ids are per home, every home may have a "grid"
  meter), the gateway's public key (``wattmesh gateway pubkey``) and the connection's physical
  limits (``import_limit_w``, ``export_limit_w``); ``--limit NAME=INT`` puts any further field
  the contract asks of a meter into the body as it is. / the ``meters`` query.
* ``meter confirm``: ``meter.confirm``, the member's consent, signed with its wallet key
  (``--key``): reports bill the member, so the ledger takes none before it. ``meter revoke``:
  ``meter.revoke`` (the owner, or the operator for a stolen gateway).
* ``res add``: ``registry.add_res``.
* ``pubkey --key FILE``: the public key of a key file (for ``[ems.dr_signers]``).
* ``dr sign``: a signed demand-response request for one gateway, printed for the broker
  (``gateway.dr_inbox``), e.g. ``... | mosquitto_pub -t wattmesh/home-1/ems/dr -s``.

Keys are always files (mode 0600, ``ledger.keys``); nothing secret goes on the command line.
Every command prints JSON; a refusal by the ledger is exit code 1 with its code and message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import DR_ROLES, ID_RE, MEMBER_RE, PUBKEY_RE
from gateway.report import ledger_meter_id
from ledger.contract.registry import ROLES
from ledger.keys import KeyFileError, load_key, public_hex
from ledger.personal import PersonalDataError, PersonalStore
from tools.cli_error import CliError, reporting
from tools.ledger_answer import print_answer


def _ident(pattern: Any, what: str) -> Any:
    def parse(text: str) -> str:
        if not pattern.match(text):
            raise argparse.ArgumentTypeError(f"{what}: {text!r} must be letters, digits, . _ -")
        return text

    return parse


def _pubkey(text: str) -> str:
    if not PUBKEY_RE.match(text):
        raise argparse.ArgumentTypeError("expected an Ed25519 public key, 64 hex digits")
    return text.lower()


def _limit(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not ID_RE.match(name) or not value.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"--limit: expected NAME=INTEGER, got {text!r}")
    return name, int(value)


def meter_body(member: str, meter: str, gateway_key: str, import_limit_w: int,
               export_limit_w: int, limits: list[tuple[str, int]]) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"meter_id": ledger_meter_id(member, meter), "owner": member,
                            "gateway_key": gateway_key, "import_limit_w": import_limit_w,
                            "export_limit_w": export_limit_w}  # fmt: skip
    for name, value in limits:
        if name in body:
            raise CliError(f"--limit {name}: that field is set by the command")
        body[name] = value
    return body


def _key(path: str) -> Any:
    try:
        return load_key(Path(path))
    except (KeyFileError, OSError) as exc:
        raise CliError(f"--key: {exc}") from None


async def _submit(args: argparse.Namespace, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    from ledger_client.client import LedgerClient

    async with LedgerClient.from_cluster_file(args.cluster, _key(args.key),
                                              timeout_s=args.timeout) as client:  # fmt: skip
        r = await client.submit_new(kind, body)
    return {"kind": kind, "code": r.code, "message": r.message, "result": dict(r.result)}


async def _query(args: argparse.Namespace, path: str) -> Any:
    from ledger_client.client import LedgerClient

    # the connection proves the operator's key: the read policy answers as it may read
    async with LedgerClient.from_cluster_file(args.cluster, _key(args.key),
                                              timeout_s=args.timeout) as client:  # fmt: skip
        return await client.query(path)


def _run(args: argparse.Namespace) -> dict[str, Any] | list[Any]:
    cmd = args.operator_command
    if cmd == "pubkey":
        return {"public_key": public_hex(_key(args.key))}
    if cmd == "dr":
        return _dr(args)
    what = f"{cmd} {args.action}"
    if what == "member admit":
        # personal data stays in the operator's register (0600); the chain gets its commitment
        try:
            with PersonalStore(Path(args.register)) as register:
                digest, opening = register.add(args.id_grid, args.name, args.email, args.address)
        except (PersonalDataError, OSError) as exc:
            raise CliError(f"--register: {exc}") from None
        body = {"id_grid": args.id_grid, "commitment": digest, "public_key": args.public_key,
                "role": args.role}  # fmt: skip
        out = asyncio.run(_submit(args, "registry.admit", body))
        return out | {"opening": opening.as_dict()}  # for the member to keep
    if what == "meter add":
        body = meter_body(args.member, args.meter, args.gateway_key, args.import_limit_w,
                          args.export_limit_w, args.limit or [])
        return asyncio.run(_submit(args, "registry.add_meter", body))
    if what in ("meter confirm", "meter revoke"):  # confirm: the member's consent (wallet
        # key); revoke: the owner, or the operator for a stolen gateway
        body = {"meter_id": ledger_meter_id(args.member, args.meter)}
        return asyncio.run(_submit(args, f"meter.{args.action}", body))
    if what == "res add":
        body = {"res_id": args.res_id, "owner": args.member, "kind": args.kind,
                "rated_power_w": args.rated_w}  # fmt: skip
        return asyncio.run(_submit(args, "registry.add_res", body))
    if what == "member list":
        return list(asyncio.run(_query(args, "members")))
    if what == "meter list":
        rows = list(asyncio.run(_query(args, "meters")))
        return [r for r in rows if args.member is None or r.get("owner") == args.member]
    raise CliError(f"unknown command {what}")  # argparse allows no other


def _dr(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.dr_inbox import DrDecodeError, decode_body, sign_request

    body = {"id": args.id, "to": args.gateway, "role": args.role, "start": args.start,
            "end": args.end, "max_w": args.max_w}  # fmt: skip
    try:
        decode_body(body)  # the same checks the gateway makes, before anything is signed
    except DrDecodeError as exc:
        raise CliError(f"dr: {exc}") from None
    return dict(json.loads(sign_request(_key(args.key), body)))


def cmd(args: argparse.Namespace) -> int:
    return print_answer(lambda: _run(args))


def _ledger_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", required=True, help="the ledger's cluster.json")
    p.add_argument("--key", required=True, help="the operator's key file (mode 0600): signs "
                   "transactions and proves who reads")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for the ledger")


def register(subparsers: Any) -> None:
    op = subparsers.add_parser("operator", help="the community operator's commands")
    sub = op.add_subparsers(dest="operator_command", metavar="WHAT", required=True)
    member = sub.add_parser("member", help="admit or list members")
    m_sub = member.add_subparsers(dest="action", metavar="ACTION", required=True)
    admit = m_sub.add_parser("admit", help="registry.admit")
    _ledger_args(admit)
    admit.add_argument("--id-grid", required=True, type=_ident(MEMBER_RE, "--id-grid"))
    admit.add_argument("--name", required=True)
    admit.add_argument("--email", required=True)
    admit.add_argument("--address", required=True, help="the member's postal address")
    admit.add_argument("--register", required=True,
                       help="the operator's register of personal data (SQLite, mode 0600)")
    admit.add_argument("--public-key", required=True, type=_pubkey,
                       help="the member's key (the gateway's, `wattmesh gateway pubkey`)")
    admit.add_argument("--role", required=True, choices=ROLES)
    _ledger_args(m_sub.add_parser("list", help="the members query"))
    meter = sub.add_parser("meter", help="register or list meters")
    mt_sub = meter.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = mt_sub.add_parser("add", help="registry.add_meter, the id scoped by the member")
    _ledger_args(add)
    add.add_argument("--member", required=True, type=_ident(MEMBER_RE, "--member"))
    add.add_argument("--meter", required=True, type=_ident(ID_RE, "--meter"),
                     help="the meter_id in the home's gateway config")
    add.add_argument("--gateway-key", required=True, type=_pubkey,
                     help="`wattmesh gateway pubkey` of the home's gateway")
    add.add_argument("--import-limit-w", required=True, type=int,
                     help="the most the connection can import (W): the contract caps reports")
    add.add_argument("--export-limit-w", required=True, type=int,
                     help="the most it can export (W); 0 for a home without generation")
    add.add_argument("--limit", type=_limit, action="append", metavar="NAME=INT",
                     help="any further field the contract asks of a meter (repeat)")
    for action, what in (("confirm", "meter.confirm, by the member (wallet key)"),
                         ("revoke", "meter.revoke: the meter's reports end (a stolen gateway)")):
        one = mt_sub.add_parser(action, help=what)
        _ledger_args(one)
        one.add_argument("--member", required=True, type=_ident(MEMBER_RE, "--member"))
        one.add_argument("--meter", required=True, type=_ident(ID_RE, "--meter"))
    mlist = mt_sub.add_parser("list", help="the meters query")
    _ledger_args(mlist)
    mlist.add_argument("--member", type=_ident(MEMBER_RE, "--member"))
    res = sub.add_parser("res", help="register a member's RES")
    r_sub = res.add_subparsers(dest="action", metavar="ACTION", required=True)
    radd = r_sub.add_parser("add", help="registry.add_res")
    _ledger_args(radd)
    radd.add_argument("--member", required=True, type=_ident(MEMBER_RE, "--member"))
    radd.add_argument("--res-id", required=True, type=_ident(ID_RE, "--res-id"))
    radd.add_argument("--kind", default="PV", type=_ident(ID_RE, "--kind"))
    radd.add_argument("--rated-w", required=True, type=int)
    pub = sub.add_parser("pubkey", help="the public key of a key file")
    pub.add_argument("--key", required=True, help="an Ed25519 key file")
    dr = sub.add_parser("dr", help="a signed demand-response request, printed as JSON")
    dr.add_argument("--key", required=True, help="the signer's key file (operator or DSO)")
    dr.add_argument("--role", required=True, choices=DR_ROLES)
    dr.add_argument("--gateway", required=True, type=_ident(ID_RE, "--gateway"))
    dr.add_argument("--id", required=True, type=_ident(ID_RE, "--id"), help="unique request id")
    dr.add_argument("--start", required=True, help="ISO 8601, e.g. 2026-06-15T19:00Z")
    dr.add_argument("--end", required=True, help="ISO 8601")
    dr.add_argument("--max-w", required=True, type=int)
    op.set_defaults(func=reporting(cmd))
