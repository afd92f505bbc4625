"""A loopback TCP proxy in front of each replica that a test can cut and heal.

Replica ``i`` listens on a private port; the cluster file advertises the proxy's port, so every
connection to ``i`` (from replicas and clients) passes here. The proxy reads the link's ``auth``
frame to learn which replica is calling, so ``cut({3})`` severs every link to or from replica 3
(existing connections closed, new ones dropped right after their handshake) while clients still
get through; ``heal()`` lets links form again. The replicas are not told: they see a partition.
"""

from __future__ import annotations

import asyncio

from ledger.framing import HEADER, FrameError, decode_payload, read_frame
from tools.netem import pump


class ReplicaProxy:
    def __init__(self, replica: int, listen_port: int, target_port: int) -> None:
        self.replica, self.listen_port, self.target_port = replica, listen_port, target_port
        self.cut_off: set[int] = set()
        self.links: list[tuple[int, asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for _, a, b in self.links:
            a.close()
            b.close()

    def severed(self, source: int) -> bool:
        return bool({source, self.replica} & self.cut_off)

    def cut(self, replicas: set[int]) -> None:
        self.cut_off = set(replicas)
        for source, a, b in list(self.links):
            if self.severed(source):
                a.close()
                b.close()

    def heal(self) -> None:
        self.cut_off = set()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cwriter.close()
            return
        try:
            challenge = await read_frame(ureader)
            cwriter.write(HEADER.pack(len(challenge)) + challenge)
            first = await read_frame(creader)
            message = decode_payload(first)
            source = message.get("from") if message["t"] == "auth" else None
            if isinstance(source, int):
                if self.severed(source):
                    return
                self.links.append((source, cwriter, uwriter))
            uwriter.write(HEADER.pack(len(first)) + first)
            await asyncio.gather(pump(creader, uwriter), pump(ureader, cwriter))
        except (OSError, asyncio.IncompleteReadError, FrameError):
            pass
        finally:
            cwriter.close()
            uwriter.close()
            self.links = [link for link in self.links if link[1] is not cwriter]

