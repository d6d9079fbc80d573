"""gRPC target addresses as users type them: `host:port`, `[v6]:port`, or a gRPC URI.

One check for every place an agent's address comes in (the `--address` flag, team files): gRPC
itself resolves a bare `localhost` to port 443 (its https default), so a forgotten port would
quietly dial the wrong service instead of failing.
"""

from __future__ import annotations

# Name-resolver schemes gRPC accepts in a target (grpc/doc/naming.md); these carry their own form.
URI_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


def check_address(address: str, what: str = "address") -> str:
    """`address` unchanged if it names a host and a port; ValueError naming the expected form."""
    text = address.strip()
    if text.startswith(URI_SCHEMES):
        return text
    host, _, port = text.rpartition(":")
    bare_v6 = text.count(":") > 1 and not text.startswith("[")  # "::1": its colons are the host's
    if not host or bare_v6 or host.startswith("[") != host.endswith("]"):
        example = "[::1]:50061" if text.count(":") > 1 else f"{text.split(':')[0] or 'localhost'}:50061"
        raise ValueError(f"{what} {address!r} has no port (gRPC would dial 443); "
                         f"write host:port, e.g. {example} (IPv6 hosts in brackets)")
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{what} {address!r}: port {port!r} is not a number in 1..65535; write host:port")
    return text
