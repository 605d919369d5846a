"""A loopback authoritative DNS server (dnspython, asyncio, UDP and TCP on one port) publishing
the sandbox registrars' zones, so that `dns.verify` makes real DNS queries in test mode.

It answers for every domain a fake holds a zone of: the zone's records at their names, an SOA
and NS at the apex, NXDOMAIN for names without records, REFUSED outside its zones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from toolcallstore.domains.records import Record, txt_strings

log = logging.getLogger("toolcallstore.sandbox.dns")

NAMESERVERS = ("ns1.sandbox-dns.test", "ns2.sandbox-dns.test")

# domain -> its records (relative names); None when no fake holds a zone for it.
ZoneLookup = Callable[[str], tuple[str, list[Record]] | None]


def rdata_text(record: Record) -> str:
    if record.type in ("CNAME",):
        return record.value + "."
    if record.type == "MX":
        return f"{record.priority} {record.value}."
    if record.type == "SRV":
        weight, port, target = record.value.split()
        return f"{record.priority} {weight} {port} {target}."
    if record.type == "TXT":
        return " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
                        for s in txt_strings(record.value))  # fmt: skip
    return record.value


class DnsServer:
    def __init__(self, lookup: ZoneLookup) -> None:
        self.lookup = lookup
        self.host = "127.0.0.1"
        self.port = 0
        self.queries = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._udp is not None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp_sock.bind((host, port))
            chosen = udp_sock.getsockname()[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, chosen)
            except OSError:
                udp_sock.close()
                if port:
                    raise
                continue
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp_sock)
            self._udp = transport
            self.host, self.port = host, chosen
            return
        raise OSError("no free port for the sandbox DNS server")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
            self._tcp = None

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                wire = self.answer(await reader.readexactly(size), tcp=True)
                if wire is None:
                    break
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def answer(self, wire: bytes, *, tcp: bool = False) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        self.queries += 1
        response = dns.message.make_response(query)
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        qname = question.name.to_text(omit_final_dot=True).lower()
        zone = self._zone_of(qname)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        domain, records = zone
        response.flags |= dns.flags.AA
        relative = "@" if qname == domain else qname[: -len(domain) - 1]
        at_name = [r for r in records if r.name == relative]
        qtype = dns.rdatatype.to_text(question.rdtype)
        texts: dict[tuple[str, int], list[str]] = {}
        if relative == "@" and qtype in ("SOA", "NS", "ANY"):
            if qtype in ("SOA", "ANY"):
                soa = f"{NAMESERVERS[0]}. hostmaster.{domain}. 1 3600 600 604800 600"
                texts[("SOA", 3600)] = [soa]
            if qtype in ("NS", "ANY"):
                texts[("NS", 3600)] = [ns + "." for ns in NAMESERVERS]
        cname = [r for r in at_name if r.type == "CNAME"]
        chosen = cname if cname and qtype != "CNAME" else [
            r for r in at_name if qtype in ("ANY", r.type)
        ]  # fmt: skip
        for record in chosen:
            texts.setdefault((record.type, record.ttl), []).append(rdata_text(record))
        for (rtype, ttl), items in texts.items():
            rrset = dns.rrset.from_text_list(question.name, ttl, dns.rdataclass.IN, rtype, items)
            response.answer.append(rrset)
        if (
            not at_name
            and relative != "@"
            and not any(r.name.endswith("." + relative) for r in records)
        ):
            response.set_rcode(dns.rcode.NXDOMAIN)
        limit = 65535 if tcp else max(512, query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer = []
            response.flags |= dns.flags.TC
            return response.to_wire()

    def _zone_of(self, qname: str) -> tuple[str, list[Record]] | None:
        labels = qname.split(".")
        for i in range(len(labels) - 1):
            found = self.lookup(".".join(labels[i:]))
            if found is not None:
                return found
        return None


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        wire = self.server.answer(data)
        if wire is not None and self.transport is not None:
            self.transport.sendto(wire, addr)
